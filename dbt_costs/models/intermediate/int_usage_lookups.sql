-- Per compute interval, everything fct_gpu_usage needs from other tables, as a narrow table: the
-- job's first spot placement, the last checkpoint committed at or before the interval's end, the
-- cut-over migration that brought the job to the interval's location, and points of the price
-- curves (int_price_curves) at the interval's start and end. The lookups are a chain of ASOF joins
-- over a narrow projection of the intervals, each adding its columns: ASOF sorts its inputs, so
-- narrow rows and no join back per lookup keep time and memory down at millions of intervals
-- (bench/bench_costs.py).
with usage as (
    select usage_id, job, location, instance_type, market, started_at, ended_at, price_usd_hour, gpu_count
    from {{ ref('stg_spotshift__compute_usage') }}
),

checkpoints as (
    select job, created_at from {{ ref('stg_spotshift__checkpoints') }}
),

migrations as (
    select job, to_location, ended_at, migration_id
    from {{ ref('stg_spotshift__migrations') }}
    where status = 'cut_over'
),

spot_curves as (
    select location, instance_type, valid_from, price_usd_gpu_hour, cum_usd_per_gpu
    from {{ ref('int_price_curves') }}
    where market = 'spot'
),

on_demand_curves as (
    select location, instance_type, valid_from, price_usd_gpu_hour
    from {{ ref('int_price_curves') }}
    where market = 'on_demand'
),

spot_curve_starts as (
    select location, instance_type, min(valid_from) as curve_start
    from spot_curves
    group by all
),

first_spot as (
    -- the first spot interval of each job
    select
        job,
        location as first_spot_location,
        instance_type as first_spot_instance_type,
        price_usd_hour / nullif(gpu_count, 0) as first_interval_usd_gpu_hour
    from usage
    where market = 'spot'
    qualify row_number() over (partition by job order by started_at, usage_id) = 1
),

keys as (
    select
        u.usage_id,
        u.job,
        u.location,
        u.instance_type,
        u.started_at,
        u.ended_at,
        f.first_spot_location,
        f.first_spot_instance_type,
        f.first_interval_usd_gpu_hour,
        greatest(u.started_at, s.curve_start) as start_lookup,
        greatest(u.ended_at, s.curve_start) as end_lookup
    from usage as u
    left join first_spot as f on u.job = f.job
    left join spot_curve_starts as s
        on f.first_spot_location = s.location and f.first_spot_instance_type = s.instance_type
),

with_checkpoint as (
    select k.*, c.created_at as last_checkpoint_at
    from keys as k
    asof left join checkpoints as c
        on k.job = c.job and k.ended_at >= c.created_at
),

with_migration as (
    select k.*, case when m.to_location = k.location then m.migration_id end as migration_id
    from with_checkpoint as k
    asof left join migrations as m
        on k.job = m.job and k.started_at >= m.ended_at
),

with_spot_start as (
    select
        k.*,
        c.price_usd_gpu_hour as first_spot_price_at_start,
        c.cum_usd_per_gpu + c.price_usd_gpu_hour * epoch(k.started_at - c.valid_from) / 3600.0
            as first_spot_integral_start
    from with_migration as k
    asof left join spot_curves as c
        on k.first_spot_location = c.location
        and k.first_spot_instance_type = c.instance_type
        and k.start_lookup >= c.valid_from
),

with_spot_end as (
    select
        k.*,
        c.cum_usd_per_gpu + c.price_usd_gpu_hour * epoch(k.ended_at - c.valid_from) / 3600.0
            as first_spot_integral_end
    from with_spot_start as k
    asof left join spot_curves as c
        on k.first_spot_location = c.location
        and k.first_spot_instance_type = c.instance_type
        and k.end_lookup >= c.valid_from
),

with_on_demand as (
    select k.*, c.price_usd_gpu_hour as on_demand_quote_usd_gpu_hour
    from with_spot_end as k
    asof left join on_demand_curves as c
        on k.location = c.location
        and k.instance_type = c.instance_type
        and k.started_at >= c.valid_from
)

select
    usage_id,
    first_spot_location,
    first_spot_instance_type,
    first_interval_usd_gpu_hour,
    last_checkpoint_at,
    migration_id,
    first_spot_price_at_start,
    first_spot_integral_start,
    first_spot_integral_end,
    on_demand_quote_usd_gpu_hour
from with_on_demand
