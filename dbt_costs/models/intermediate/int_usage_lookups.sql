-- Per compute interval, everything fct_gpu_usage needs from other tables, as a narrow table: the
-- job's first spot placement (int_job_first_spot), the last checkpoint committed at or before the
-- interval's end, the cut-over migration that brought the job to the interval's location, and
-- points of the price curves (int_price_curves) at the interval's start and end.
--
-- Speed at millions of intervals (bench/bench_costs.py): the checkpoint and migration lookups are
-- ASOF joins over a narrow projection (ASOF sorts its inputs). The price curves are small, so their
-- points are found by a hash join on (curve, day) against the points in force during each day,
-- then the one point whose [valid_from, valid_to) holds the instant: no sort of the intervals.
--
-- Incremental: only the intervals of changed jobs from their `since` (int_usage_changes); the
-- checkpoints those lookups can find are the ones from the last commit before the earliest end.
{{ config(**usage_chain_config('usage_id')) }}
-- depends_on: {{ ref('int_raw_delta_bounds') }}
-- depends_on: {{ ref('int_usage_changes') }}
with usage as (
    select u.usage_id, u.job, u.location, u.instance_type, u.started_at, u.ended_at
    from {{ ref('stg_spotshift__compute_usage') }} as u
    {%- if usage_chain_incremental() %}
    inner join {{ ref('int_usage_changes') }} as c
        on u.job = c.job and greatest(u.started_at, u.ended_at) >= c.since
    {%- endif %}
),

checkpoints as (
    select c.job, c.created_at
    from {{ ref('stg_spotshift__checkpoints') }} as c
    {%- if usage_chain_incremental() %}
    inner join (
        -- per job, the last checkpoint at or before the earliest end to look up, and everything after
        select b.job, coalesce(max(k.created_at), '-infinity'::timestamp) as floor_at
        from (select job, min(ended_at) as min_end from usage group by job) as b
        left join {{ ref('stg_spotshift__checkpoints') }} as k on k.job = b.job and k.created_at <= b.min_end
        group by b.job
    ) as f on c.job = f.job and c.created_at >= f.floor_at
    {%- endif %}
),

migrations as (
    select job, to_location, ended_at, migration_id
    from {{ ref('stg_spotshift__migrations') }}
    where status = 'cut_over'
),

curves as (
    select location, instance_type, market, valid_from, valid_to, curve_start, price_usd_gpu_hour, cum_usd_per_gpu
    from {{ ref('int_price_curves') }}
),

horizon as (
    select max(greatest(started_at, ended_at)) as last_instant from usage
),

curve_days as (
    -- each point once for every day it is in force (the open last point up to the last instant)
    select
        c.*,
        unnest(range(
            date_trunc('day', c.valid_from),
            greatest(coalesce(c.valid_to, h.last_instant), c.valid_from) + interval 1 day,
            interval 1 day
        )) as day
    from curves as c
    cross join horizon as h
),

spot_days as (
    select * from curve_days where market = 'spot'
),

on_demand_days as (
    select * from curve_days where market = 'on_demand'
),

spot_curve_starts as (
    select distinct location, instance_type, curve_start from curves where market = 'spot'
),

with_checkpoint as (
    -- the ASOF joins sort their inputs: they run on the narrow `usage` rows, before the joins that
    -- widen them (the job's first spot placement, the curve starts)
    select u.*, c.created_at as last_checkpoint_at
    from usage as u
    asof left join checkpoints as c
        on u.job = c.job and u.ended_at >= c.created_at
),

with_migration as (
    select k.*, case when m.to_location = k.location then m.migration_id end as migration_id
    from with_checkpoint as k
    asof left join migrations as m
        on k.job = m.job and k.started_at >= m.ended_at
),

keys as (
    select
        k.*,
        f.first_spot_location,
        f.first_spot_instance_type,
        f.first_interval_usd_gpu_hour,
        greatest(k.started_at, s.curve_start) as start_lookup,
        greatest(k.ended_at, s.curve_start) as end_lookup
    from with_migration as k
    left join {{ ref('int_job_first_spot') }} as f on k.job = f.job
    left join spot_curve_starts as s
        on f.first_spot_location = s.location and f.first_spot_instance_type = s.instance_type
)

select
    k.usage_id,
    k.first_spot_location,
    k.first_spot_instance_type,
    k.first_interval_usd_gpu_hour,
    k.last_checkpoint_at,
    k.migration_id,
    s.price_usd_gpu_hour as first_spot_price_at_start,
    s.cum_usd_per_gpu + s.price_usd_gpu_hour * epoch(k.started_at - s.valid_from) / 3600.0
        as first_spot_integral_start,
    e.cum_usd_per_gpu + e.price_usd_gpu_hour * epoch(k.ended_at - e.valid_from) / 3600.0
        as first_spot_integral_end,
    o.price_usd_gpu_hour as on_demand_quote_usd_gpu_hour
from keys as k
left join spot_days as s
    on {{ curve_point_holds('s', 'k.first_spot_location', 'k.first_spot_instance_type', 'k.start_lookup') }}
left join spot_days as e
    on {{ curve_point_holds('e', 'k.first_spot_location', 'k.first_spot_instance_type', 'k.end_lookup') }}
left join on_demand_days as o
    on {{ curve_point_holds('o', 'k.location', 'k.instance_type', 'k.started_at') }}
