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
-- Incremental (macros/incremental_usage.sql): see `usage` below.
{{ config(**usage_chain_config('usage_id', post_hook=['delete from {{ this }} where usd is null'])) }}
-- depends_on: {{ ref('int_raw_delta_bounds') }}
-- depends_on: {{ ref('int_usage_changes') }}
with usage as (
    -- unpriced intervals (usd NULL) are listed by fct_unpriced_usage instead. An incremental build
    -- recomputes the intervals of changed jobs from their `since` (int_usage_changes), unpriced ones
    -- included: delete+insert then replaces a rewritten interval that lost its price, and the
    -- post-hook drops it.
    select u.* from {{ ref('stg_spotshift__compute_usage') }} as u
    {%- if usage_chain_incremental() %}
    inner join {{ ref('int_usage_changes') }} as c
        on u.job = c.job and greatest(u.started_at, u.ended_at) >= c.since
    {%- else %}
    where u.usd is not null
    {%- endif %}
),

lookups as (
    select * from {{ ref('int_usage_lookups') }}
),

joined as (
    select
        u.*,
        l.first_spot_location,
        l.first_spot_instance_type,
        l.first_interval_usd_gpu_hour,
        l.last_checkpoint_at,
        l.migration_id,
        l.first_spot_price_at_start,
        l.first_spot_integral_start,
        l.first_spot_integral_end,
        l.on_demand_quote_usd_gpu_hour * u.gpu_count as on_demand_quote_usd_hour
    from usage as u
    inner join lookups as l on u.usage_id = l.usage_id
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
            on_demand_quote_usd_hour,
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
