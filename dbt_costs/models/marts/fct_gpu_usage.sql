-- One row per GPU compute interval, with what it cost, the work it kept or lost, and what the same
-- work would have cost under the two baselines of mart_savings.
--
-- * lost_hours: an interval that ended in a preemption lost everything after the job's last
--   checkpoint committed inside it (all of it when none was); productive = hours - lost.
-- * effective GPU-hours count every interval, failed spot attempts included (seed 000).
-- * on_demand_usd: productive hours at the on-demand list price of the same instance and region
--   (list_price_usd_hour, else the on-demand quote in effect at the start, else the price paid
--   when the interval ran on demand).
-- * first_spot_usd: productive GPU-hours at the time-weighted spot price of the job's first spot
--   placement (location + instance type) over the same interval, from raw.price_quotes; the first
--   spot interval's own price when that location was never quoted. A job that never ran on spot
--   (not allowed to) "stays" on demand: its first-spot baseline is its on-demand baseline.
with usage as (
    select * from {{ ref('stg_spotshift__compute_usage') }}
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
    select * from {{ ref('int_price_curves') }} where market = 'spot'
),

on_demand_curves as (
    select * from {{ ref('int_price_curves') }} where market = 'on_demand'
),

spot_curve_starts as (
    select distinct location, instance_type, curve_start from spot_curves
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

with_checkpoint as (
    select
        u.*,
        c.created_at as last_checkpoint_at
    from usage as u
    asof left join checkpoints as c
        on u.job = c.job and u.ended_at >= c.created_at
),

with_migration as (
    select
        w.*,
        case when m.to_location = w.location then m.migration_id end as migration_id
    from with_checkpoint as w
    asof left join migrations as m
        on w.job = m.job and w.started_at >= m.ended_at
),

work as (
    select
        *,
        market = 'spot' and ended_in_preemption as is_failed_spot_attempt,
        case
            when not ended_in_preemption then 0.0
            when last_checkpoint_at >= started_at then epoch(ended_at - last_checkpoint_at) / 3600.0
            else hours
        end as lost_hours
    from with_migration
),

with_first_spot as (
    select
        w.*,
        f.first_spot_location,
        f.first_spot_instance_type,
        f.first_interval_usd_gpu_hour,
        greatest(w.started_at, s.curve_start) as start_lookup,
        greatest(w.ended_at, s.curve_start) as end_lookup
    from work as w
    left join first_spot as f on w.job = f.job
    left join spot_curve_starts as s
        on f.first_spot_location = s.location and f.first_spot_instance_type = s.instance_type
),

spot_at_start as (
    select
        w.*,
        c.price_usd_gpu_hour as first_spot_price_at_start,
        c.cum_usd_per_gpu + c.price_usd_gpu_hour * epoch(w.started_at - c.valid_from) / 3600.0
            as first_spot_integral_start
    from with_first_spot as w
    asof left join spot_curves as c
        on w.first_spot_location = c.location
        and w.first_spot_instance_type = c.instance_type
        and w.start_lookup >= c.valid_from
),

spot_at_end as (
    select
        w.*,
        c.cum_usd_per_gpu + c.price_usd_gpu_hour * epoch(w.ended_at - c.valid_from) / 3600.0
            as first_spot_integral_end
    from spot_at_start as w
    asof left join spot_curves as c
        on w.first_spot_location = c.location
        and w.first_spot_instance_type = c.instance_type
        and w.end_lookup >= c.valid_from
),

with_on_demand as (
    select
        w.*,
        c.price_usd_gpu_hour * w.gpu_count as on_demand_quote_usd_hour
    from spot_at_end as w
    asof left join on_demand_curves as c
        on w.location = c.location
        and w.instance_type = c.instance_type
        and w.started_at >= c.valid_from
),

priced as (
    select
        *,
        hours - lost_hours as productive_hours,
        coalesce(
            list_price_usd_hour,
            on_demand_quote_usd_hour,
            case when market = 'on_demand' then price_usd_hour end
        ) as on_demand_price_usd_hour,
        case
            when first_spot_integral_start is null then first_interval_usd_gpu_hour
            when hours > 0 then (first_spot_integral_end - first_spot_integral_start) / hours
            else first_spot_price_at_start
        end as first_spot_usd_gpu_hour,
        case
            when first_spot_location is null then 'on_demand'
            when first_spot_integral_start is not null then 'quotes'
            when first_interval_usd_gpu_hour is not null then 'first_interval'
        end as first_spot_priced_from
    from with_on_demand
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
