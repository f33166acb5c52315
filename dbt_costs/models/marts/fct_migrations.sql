-- One row per migration of a training job, with its shadow-validation outcome and, for moves
-- spotshift chose on price (trigger = 'price'), whether the move paid for itself:
-- realized_net_savings_usd = what the GPU-hours the job then ran at the target (until its next
-- migration) would have cost at the source's price in effect at the time, minus what they cost,
-- minus the migration's egress. The source price comes from raw.price_quotes (same instance type
-- and market), else from the job's last interval at the source. Preemption recoveries and
-- rollbacks were not a choice between staying and moving: their realized savings are NULL.
with migrations as (
    select
        *,
        lead(started_at) over (partition by job order by started_at, migration_id) as next_started_at
    from {{ ref('stg_spotshift__migrations') }}
),

usage as (
    select * from {{ ref('fct_gpu_usage') }}
),

curves as (
    select * from {{ ref('int_price_curves') }}
),

transfers as (
    select migration_id, sum(bytes_sent) as bytes_sent, sum(egress_usd) as egress_usd, count(*) as transfers
    from {{ ref('fct_data_transfer') }}
    where migration_id is not null
    group by migration_id
),

validations as (
    select
        m.migration_id,
        count(v.validation_id) as shadow_validations,
        bool_and(v.passed) as shadow_passed
    from migrations as m
    inner join {{ ref('stg_spotshift__shadow_validations') }} as v
        on m.job = v.job
        and m.to_location = v.target_location
        and v.validated_at between m.started_at and m.ended_at
    group by m.migration_id
),

source_fallback as (
    -- price per GPU-hour of the job's last interval at the source before the migration
    select
        m.migration_id,
        u.price_usd_hour / nullif(u.gpu_count, 0) as usd_gpu_hour
    from migrations as m
    asof left join (select * from usage) as u
        on m.job = u.job and m.from_location = u.location and m.started_at >= u.ended_at
),

at_target as (
    select
        m.migration_id,
        m.from_location,
        u.usage_id,
        u.instance_type,
        u.market,
        u.started_at,
        u.gpu_hours,
        u.usd
    from migrations as m
    inner join usage as u
        on m.job = u.job
        and m.to_location = u.location
        and u.started_at >= m.started_at
        and (m.next_started_at is null or u.started_at < m.next_started_at)
),

at_target_priced as (
    select
        a.*,
        c.price_usd_gpu_hour as source_usd_gpu_hour
    from at_target as a
    asof left join curves as c
        on a.from_location = c.location
        and a.instance_type = c.instance_type
        and a.market = c.market
        and a.started_at >= c.valid_from
),

realized as (
    select
        a.migration_id,
        sum(a.gpu_hours) as gpu_hours_at_target,
        sum(a.usd) as usd_at_target,
        sum(a.gpu_hours * coalesce(a.source_usd_gpu_hour, f.usd_gpu_hour)) as usd_at_source_price
    from at_target_priced as a
    left join source_fallback as f on a.migration_id = f.migration_id
    group by a.migration_id
),

final as (
    select
        m.migration_id,
        m.job,
        m.trigger,
        m.status,
        m.from_location,
        m.to_location,
        m.started_at,
        m.ended_at,
        epoch(m.ended_at - m.started_at) as duration_s,
        m.downtime_s,
        greatest(m.bytes_moved, coalesce(t.bytes_sent, 0)) as bytes_moved,
        coalesce(t.transfers, 0) as transfers,
        case when m.egress_usd > 0 then m.egress_usd else coalesce(t.egress_usd, 0) end as egress_usd,
        m.expected_savings_usd,
        coalesce(v.shadow_validations, 0) as shadow_validations,
        v.shadow_passed,
        coalesce(r.gpu_hours_at_target, 0) as gpu_hours_at_target,
        coalesce(r.usd_at_target, 0) as usd_at_target,
        case when m.trigger = 'price' then coalesce(r.usd_at_source_price - r.usd_at_target, 0) end
            as realized_gross_savings_usd,
        case when m.trigger = 'price' then
            coalesce(r.usd_at_source_price - r.usd_at_target, 0)
            - (case when m.egress_usd > 0 then m.egress_usd else coalesce(t.egress_usd, 0) end)
        end as realized_net_savings_usd,
        m.run_id
    from migrations as m
    left join transfers as t on m.migration_id = t.migration_id
    left join validations as v on m.migration_id = v.migration_id
    left join realized as r on m.migration_id = r.migration_id
)

select
    *,
    realized_net_savings_usd > 0 as paid_off
from final
