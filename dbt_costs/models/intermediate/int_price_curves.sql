-- Price curves per location, instance type and market, built from every poll of raw.price_quotes:
-- the cheapest zone's price per GPU-hour holds from one poll until the next. cum_usd_per_gpu is
-- the integral of the curve from its first poll up to valid_from, so the cost of any interval
-- [a, b) is F(b) - F(a) with F(t) = cum_usd_per_gpu + price_usd_gpu_hour * hours(t - valid_from)
-- of the point in effect at t (two ASOF lookups instead of a range join; before the first poll
-- the first price extends backwards).
with quotes as (
    select
        location,
        provider,
        region,
        instance_type,
        market,
        polled_at as valid_from,
        min(price_usd_gpu_hour) as price_usd_gpu_hour
    from {{ ref('stg_spotshift__price_quotes') }}
    where price_usd_gpu_hour is not null and polled_at is not null
    group by all
),

ranged as (
    select
        *,
        lead(valid_from) over curve as valid_to,
        min(valid_from) over (partition by location, instance_type, market) as curve_start
    from quotes
    window curve as (partition by location, instance_type, market order by valid_from)
)

select
    location,
    provider,
    region,
    instance_type,
    market,
    valid_from,
    valid_to,
    curve_start,
    price_usd_gpu_hour,
    coalesce(
        sum(price_usd_gpu_hour * epoch(valid_to - valid_from) / 3600.0) over (
            partition by location, instance_type, market
            order by valid_from
            rows between unbounded preceding and 1 preceding
        ),
        0.0
    ) as cum_usd_per_gpu
from ranged
