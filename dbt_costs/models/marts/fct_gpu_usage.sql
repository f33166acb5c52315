-- One row per GPU compute interval, with what it cost, the work it kept or lost, and what the same
-- work would have cost under the two baselines of mart_savings.
--
-- * lost_hours: an interval that ended in a preemption lost everything after the job's last
--   checkpoint committed inside it (all of it when none was): the share of the interval's time
--   after that checkpoint, applied to its billed hours; productive = hours - lost.
-- * effective GPU-hours count every interval, failed spot attempts included (seed 000).
-- * on_demand_usd: productive hours at the on-demand list price of the same instance and region
--   (list_price_usd_hour, else the on-demand quote in effect at the start, else the price paid
--   when the interval ran on demand).
-- * first_spot_usd: productive GPU-hours at the time-weighted spot price of the job's first spot
--   placement (location + instance type) over the same interval, from raw.price_quotes; the first
--   spot interval's own price when that location was never quoted. A job that never ran on spot
--   (not allowed to) "stays" on demand: its first-spot baseline is its on-demand baseline.
--
-- What the baselines need from other tables, found per interval: the job's first spot placement
-- (int_job_first_spot), the last checkpoint committed at or before the interval's end, the cut-over
-- migration that brought the job to the interval's location, and points of the price curves
-- (int_price_curves) at the interval's start and end. They are computed here, on the intervals
-- being built, not in a table of their own: a separate lookup table cost a second write of every
-- interval and a hash join of millions of intervals on usage_id (bench/bench_costs.py).
--
-- Speed at millions of intervals: the checkpoint and migration lookups are ASOF joins over the
-- narrow key columns (ASOF sorts its inputs), joined back to the wide rows on their row id. The
-- price curves are small, so their points are found by a hash join on (curve, day) against the
-- points in force during each day, then the one point whose [valid_from, valid_to) holds the
-- instant: no sort of the intervals.
--
-- Incremental (macros/incremental_usage.sql): only the intervals of changed jobs from their `since`
-- (int_usage_changes); the checkpoints the lookups can find are the ones from the last commit before
-- the earliest end.
{{ config(**usage_chain_config('usage_id', post_hook=['delete from {{ this }} where usd is null'])) }}
-- depends_on: {{ ref('int_raw_delta_bounds') }}
-- depends_on: {{ ref('int_usage_changes') }}
{%- set usage_filter %}
    {%- if usage_chain_incremental() %}
    inner join {{ ref('int_usage_changes') }} as c
        on u.job = c.job and greatest(u.started_at, u.ended_at) >= c.since
    {%- else %}
    where u.usd is not null
    {%- endif %}
{%- endset %}
with usage as (
    -- unpriced intervals (usd NULL) are listed by fct_unpriced_usage instead. An incremental build
    -- recomputes the intervals of changed jobs from their `since` (int_usage_changes), unpriced ones
    -- included: delete+insert then replaces a rewritten interval that lost its price, and the
    -- post-hook drops it.
    select u.*, {{ usage_row_key('u') }} as _usage_row
    from {{ ref('stg_spotshift__compute_usage') }} as u
    {{ usage_filter }}
),

usage_keys as (
    -- the same rows, only the columns the lookups need (the ASOF joins sort their inputs), read
    -- separately: a second reference to `usage` would keep every column of it in memory
    select {{ usage_row_key('u') }} as _usage_row, u.job, u.location, u.instance_type, u.started_at, u.ended_at
    from {{ ref('stg_spotshift__compute_usage') }} as u
    {{ usage_filter }}
),

checkpoints as (
    select c.job, c.created_at
    from {{ ref('stg_spotshift__checkpoints') }} as c
    {%- if usage_chain_incremental() %}
    inner join (
        -- per job, the last checkpoint at or before the earliest end to look up, and everything after
        select b.job, coalesce(max(k.created_at), '-infinity'::timestamp) as floor_at
        from (select job, min(ended_at) as min_end from usage_keys group by job) as b
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
    select max(greatest(started_at, ended_at)) as last_instant from usage_keys
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
    -- the ASOF joins sort their inputs: they run on the narrow key rows, before the joins that
    -- widen them (the job's first spot placement, the curve starts, the interval's other columns)
    select u.*, c.created_at as last_checkpoint_at
    from usage_keys as u
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
),

lookups as (
    select
        k._usage_row,
        k.last_checkpoint_at,
        k.migration_id,
        k.first_spot_location,
        k.first_spot_instance_type,
        k.first_interval_usd_gpu_hour,
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
),

joined as (
    select u.*, l.* exclude (_usage_row)
    from usage as u
    inner join lookups as l on u._usage_row = l._usage_row
),

work as (
    select
        *,
        market = 'spot' and ended_in_preemption as is_failed_spot_attempt,
        case
            when not ended_in_preemption then 0.0
            when last_checkpoint_at >= started_at and ended_at > started_at
                then hours * epoch(ended_at - last_checkpoint_at) / epoch(ended_at - started_at)
            else hours
        end as lost_hours
    from joined
),

priced as (
    select
        *,
        hours - lost_hours as productive_hours,
        coalesce(
            list_price_usd_hour,
            on_demand_quote_usd_gpu_hour * gpu_count,
            case when market = 'on_demand' then price_usd_hour end
        ) as on_demand_price_usd_hour,
        case
            when first_spot_integral_start is null then first_interval_usd_gpu_hour
            -- the curve's integral runs over the interval's clock time: average over wall_hours
            -- (billed hours may differ: a trainer bills the work its steps stand for)
            when wall_hours > 0 then (first_spot_integral_end - first_spot_integral_start) / wall_hours
            else first_spot_price_at_start
        end as first_spot_usd_gpu_hour,
        case
            when first_spot_location is null then 'on_demand'
            when first_spot_integral_start is not null then 'quotes'
            when first_interval_usd_gpu_hour is not null then 'first_interval'
        end as first_spot_priced_from
    from work
)

select
    usage_id,
    job,
    provider,
    region,
    location,
    instance_type,
    gpu_model,
    market,
    started_at,
    ended_at,
    hours,
    wall_hours,
    gpu_count,
    hours * gpu_count as gpu_hours,
    price_usd_hour,
    usd,
    on_demand_price_usd_hour as list_price_usd_hour,
    coalesce(on_demand_price_usd_hour, price_usd_hour) * hours as list_usd,
    ended_in_preemption,
    is_failed_spot_attempt,
    last_checkpoint_at,
    lost_hours,
    lost_hours * gpu_count as lost_gpu_hours,
    productive_hours,
    productive_hours * gpu_count as productive_gpu_hours,
    steps,
    tokens,
    run_id,
    migration_id,
    on_demand_price_usd_hour * productive_hours as on_demand_usd,
    first_spot_location,
    first_spot_instance_type,
    first_spot_priced_from,
    case
        when first_spot_location is null then on_demand_price_usd_hour * productive_hours
        else first_spot_usd_gpu_hour * gpu_count * productive_hours
    end as first_spot_usd
from priced
