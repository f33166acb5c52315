-- The six cost metrics of seed 000 (plus two that explain effective_gpu_hours), one row per
-- (scope_kind, scope, metric):
--   scope_kind = 'job'                 scope = training job name
--   scope_kind = 'inference_location'  scope = provider/region serving inference
--   scope_kind = 'fleet'               scope = 'training' | 'inference' (everything, unattributed
--                                      transfers included)
-- Ratios carry their numerator and denominator (the mean recovery time: total seconds and
-- notices); totals have numerator = value and no denominator. A metric appears only where its data
-- exists (no checkpoints: no cost per checkpoint; no inference windows: no inference rows).
-- alert is set for data_transfer_amplification above var amplification_alert_threshold (3.0).
with usage as (
    select * from {{ ref('fct_gpu_usage') }}
),

transfers as (
    select * from {{ ref('fct_data_transfer') }}
),

checkpoints as (
    select
        job,
        count(*) as checkpoints,
        max(created_at) as last_checkpoint_at,
        max(tokens) as tokens_at_last_checkpoint
    from {{ ref('stg_spotshift__checkpoints') }}
    group by job
),

preemptions as (
    select * from {{ ref('fct_preemptions') }} where recovery_s is not null and job is not null
),

inference as (
    select * from {{ ref('stg_spotshift__inference_usage') }}
),

-- one pass over the intervals: the job's totals and its spend from its start to its last
-- checkpoint (the interval running at that moment prorated; NULL without checkpoints)
usage_by_job as (
    select
        u.job,
        sum(u.gpu_hours) as gpu_hours,
        sum(u.gpu_hours) filter (where u.is_failed_spot_attempt) as failed_spot_gpu_hours,
        sum(u.lost_gpu_hours) as lost_gpu_hours,
        sum(u.usd) as compute_usd,
        sum(u.tokens) as tokens_processed,
        sum(
            case
                when u.ended_at <= c.last_checkpoint_at then u.usd
                when u.started_at >= c.last_checkpoint_at then 0.0
                else u.usd * epoch(c.last_checkpoint_at - u.started_at) / epoch(u.ended_at - u.started_at)
            end
        ) as compute_usd_to_last_checkpoint
    from usage as u
    left join checkpoints as c on u.job = c.job
    group by u.job
),

egress_by_job as (
    select job, sum(egress_usd) as egress_usd, sum(bytes_sent) as bytes_sent, sum(bytes_changed) as bytes_changed
    from transfers
    where job is not null
    group by job
),

egress_to_last_checkpoint as (
    select t.job, sum(t.egress_usd) as egress_usd
    from transfers as t
    inner join checkpoints as c on t.job = c.job
    where t.started_at <= c.last_checkpoint_at
    group by t.job
),

job_metrics as (
    select
        'job' as scope_kind,
        c.job as scope,
        'training_cost_per_checkpoint' as metric,
        s.compute_usd_to_last_checkpoint + coalesce(e.egress_usd, 0) as numerator,
        cast(c.checkpoints as double) as denominator
    from checkpoints as c
    inner join usage_by_job as s on c.job = s.job
    left join egress_to_last_checkpoint as e on c.job = e.job

    union all
    select 'job', job, 'effective_gpu_hours', gpu_hours, null from usage_by_job

    union all
    select 'job', job, 'failed_spot_gpu_hours', coalesce(failed_spot_gpu_hours, 0), null from usage_by_job

    union all
    select 'job', job, 'lost_gpu_hours', lost_gpu_hours, null from usage_by_job

    union all
    select 'job', job, 'data_transfer_amplification', bytes_sent, bytes_changed
    from egress_by_job
    where bytes_changed > 0

    union all
    select 'job', job, 'preemption_recovery_time', sum(recovery_s), count(*)
    from preemptions
    group by job

    union all
    select
        'job',
        u.job,
        'cost_per_million_tokens',
        u.compute_usd + coalesce(e.egress_usd, 0),
        coalesce(c.tokens_at_last_checkpoint, u.tokens_processed) / 1e6
    from usage_by_job as u
    left join egress_by_job as e on u.job = e.job
    left join checkpoints as c on u.job = c.job
    where coalesce(c.tokens_at_last_checkpoint, u.tokens_processed) > 0
),

fleet_training_metrics as (
    select
        'fleet' as scope_kind,
        'training' as scope,
        'training_cost_per_checkpoint' as metric,
        sum(numerator) as numerator,
        sum(denominator) as denominator
    from job_metrics
    where metric = 'training_cost_per_checkpoint'
    having count(*) > 0

    -- the fleet's interval totals from the jobs' (every interval has a job): no second pass
    union all
    select 'fleet', 'training', 'effective_gpu_hours', sum(gpu_hours), null from usage_by_job having count(*) > 0

    union all
    select 'fleet', 'training', 'failed_spot_gpu_hours', coalesce(sum(failed_spot_gpu_hours), 0), null
    from usage_by_job
    having count(*) > 0

    union all
    select 'fleet', 'training', 'lost_gpu_hours', sum(lost_gpu_hours), null from usage_by_job having count(*) > 0

    union all
    select 'fleet', 'training', 'data_transfer_amplification', sum(bytes_sent), sum(bytes_changed)
    from transfers
    having sum(bytes_changed) > 0

    union all
    select 'fleet', 'training', 'preemption_recovery_time', sum(recovery_s), count(*)
    from preemptions
    having count(*) > 0

    union all
    select 'fleet', 'training', 'cost_per_million_tokens', sum(numerator), sum(denominator)
    from job_metrics
    where metric = 'cost_per_million_tokens'
    having count(*) > 0
),

inference_metrics as (
    select
        'inference_location' as scope_kind,
        location as scope,
        'cost_per_million_tokens' as metric,
        sum(usd) as numerator,
        sum(tokens) / 1e6 as denominator
    from inference
    group by location
    having sum(tokens) > 0

    union all
    select 'inference_location', location, 'latency_slo_violation_cost', sum(slo_violations * usd_per_violation), null
    from inference
    group by location

    union all
    select 'fleet', 'inference', 'cost_per_million_tokens', sum(usd), sum(tokens) / 1e6
    from inference
    having sum(tokens) > 0

    union all
    select 'fleet', 'inference', 'latency_slo_violation_cost', sum(slo_violations * usd_per_violation), null
    from inference
    having count(*) > 0
),

all_metrics as (
    select * from job_metrics
    union all
    select * from fleet_training_metrics
    union all
    select * from inference_metrics
),

definitions as (
    select * from {{ ref('cost_metric_definitions') }}
)

select
    m.scope_kind,
    m.scope,
    m.metric,
    case when m.denominator is null then m.numerator else m.numerator / m.denominator end as value,
    d.unit,
    m.numerator,
    m.denominator,
    case when m.metric = 'data_transfer_amplification' then {{ var('amplification_alert_threshold') }} end
        as alert_threshold,
    coalesce(
        m.metric = 'data_transfer_amplification'
        and m.numerator / m.denominator > {{ var('amplification_alert_threshold') }},
        false
    ) as alert,
    d.description
from all_metrics as m
left join definitions as d on m.metric = d.metric
