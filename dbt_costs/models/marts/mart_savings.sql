-- One row per training job: what it actually cost (compute + attributed egress) next to the two
-- baselines for the same work (productive GPU time, see fct_gpu_usage): always on demand, and
-- staying on the job's first spot location. A baseline is NULL when any interval of the job could
-- not be priced under it (never a partial sum). Baselines carry no egress: they never move.
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
        case when count(first_spot_usd) = count(*) then sum(first_spot_usd) end as first_spot_usd,
        count(*) filter (where first_spot_priced_from = 'quotes') as intervals_priced_from_quotes
    from usage
    group by job
),

totals as (
    select
        p.*,
        coalesce(e.egress_usd, 0) as egress_usd,
        coalesce(e.bytes_sent, 0) as bytes_sent,
        coalesce(m.migrations, 0) as migrations,
        coalesce(m.migrations_not_cut_over, 0) as migrations_not_cut_over,
        p.compute_usd + coalesce(e.egress_usd, 0) as actual_usd
    from per_job as p
    left join egress as e on p.job = e.job
    left join migrations as m on p.job = m.job
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
    first_spot_usd,
    on_demand_usd - actual_usd as saving_vs_on_demand_usd,
    (on_demand_usd - actual_usd) / nullif(on_demand_usd, 0) as saving_vs_on_demand,
    first_spot_usd - actual_usd as saving_vs_first_spot_usd,
    (first_spot_usd - actual_usd) / nullif(first_spot_usd, 0) as saving_vs_first_spot,
    intervals_priced_from_quotes
from totals
