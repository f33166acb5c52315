-- One row per training job: what it actually cost (compute + attributed egress) next to its
-- baselines for the same work (productive GPU time, see fct_gpu_usage), each labelled:
--
-- * on_demand_usd — always on demand (no preemptions);
-- * stay_first_spot_usd — staying on the job's first spot placement AND paying for the preemptions
--   that location deals it: the never-preempted cost times the preemption_factor the simulator's
--   stay_first_spot policy measured on that location's availability trace over the job's time
--   (stg_spotshift__job_baselines, written by spotshift.costs.baselines). NULL, with the reason in
--   stay_first_spot_basis, when no trace of that location exists;
-- * first_spot_bound_usd — the same location never preempted: a lower bound of what staying
--   there costs (a job that stays is preempted when capacity goes), shown apart, never a baseline.
--
-- A baseline is NULL when any interval of the job could not be priced under it (never a partial
-- sum). Baselines carry no egress: they never move.
with usage as (
    select * from {{ ref('fct_gpu_usage') }}
),

egress as (
    select job, sum(egress_usd) as egress_usd, sum(bytes_sent) as bytes_sent
    from {{ ref('fct_data_transfer') }}
    where job is not null
    group by job
),

migrations as (
    select
        job,
        count(*) filter (where status = 'cut_over') as migrations,
        count(*) filter (where status <> 'cut_over') as migrations_not_cut_over
    from {{ ref('fct_migrations') }}
    group by job
),

per_job as (
    select
        job,
        min(started_at) as first_started_at,
        max(ended_at) as last_ended_at,
        min(first_spot_location) as first_spot_location,
        min(first_spot_instance_type) as first_spot_instance_type,
        count(*) as intervals,
        count(*) filter (where ended_in_preemption) as preemptions,
        sum(gpu_hours) as gpu_hours,
        sum(productive_gpu_hours) as productive_gpu_hours,
        sum(usd) as compute_usd,
        case when count(on_demand_usd) = count(*) then sum(on_demand_usd) end as on_demand_usd,
        case when count(first_spot_usd) = count(*) then sum(first_spot_usd) end as first_spot_bound_usd,
        count(*) filter (where first_spot_priced_from = 'quotes') as intervals_priced_from_quotes
    from usage
    group by job
),

simulated as (
    select * from {{ ref('stg_spotshift__job_baselines') }} where baseline = 'stay_first_spot'
),

totals as (
    select
        p.*,
        s.preemption_factor,
        s.preemptions as stay_first_spot_preemptions,
        case
            when p.first_spot_location is null then 'never ran on spot: stays on demand'
            when s.job is not null
                then 'simulated with ' || s.preemptions || ' preemption(s) of ' || s.location
                    || ' (' || s.availability || ')'
            else 'not computed: no availability trace of ' || p.first_spot_location
        end as stay_first_spot_basis,
        coalesce(e.egress_usd, 0) as egress_usd,
        coalesce(e.bytes_sent, 0) as bytes_sent,
        coalesce(m.migrations, 0) as migrations,
        coalesce(m.migrations_not_cut_over, 0) as migrations_not_cut_over,
        p.compute_usd + coalesce(e.egress_usd, 0) as actual_usd
    from per_job as p
    left join egress as e on p.job = e.job
    left join migrations as m on p.job = m.job
    left join simulated as s on p.job = s.job and p.first_spot_location = s.location
),

baselines as (
    select
        *,
        case
            when first_spot_location is null then first_spot_bound_usd
            else first_spot_bound_usd * preemption_factor
        end as stay_first_spot_usd
    from totals
)

select
    job,
    first_started_at,
    last_ended_at,
    first_spot_location,
    first_spot_instance_type,
    intervals,
    preemptions,
    migrations,
    migrations_not_cut_over,
    gpu_hours,
    productive_gpu_hours,
    bytes_sent,
    compute_usd,
    egress_usd,
    actual_usd,
    on_demand_usd,
    stay_first_spot_usd,
    stay_first_spot_basis,
    stay_first_spot_preemptions,
    first_spot_bound_usd,
    on_demand_usd - actual_usd as saving_vs_on_demand_usd,
    (on_demand_usd - actual_usd) / nullif(on_demand_usd, 0) as saving_vs_on_demand,
    stay_first_spot_usd - actual_usd as saving_vs_stay_first_spot_usd,
    (stay_first_spot_usd - actual_usd) / nullif(stay_first_spot_usd, 0) as saving_vs_stay_first_spot,
    first_spot_bound_usd - actual_usd as gap_to_first_spot_bound_usd,
    intervals_priced_from_quotes
from baselines
