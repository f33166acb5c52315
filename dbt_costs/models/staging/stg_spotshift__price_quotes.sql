-- One row per quote; a quote polled twice in the same snapshot (a retried poll) is kept once.
with source as (
    select * from {{ source('spotshift', 'price_quotes') }}
),

renamed as (
    select
        snapshot_id,
        polled_at,
        observed_at,
        lower(provider) as provider,
        region,
        coalesce(zone, '') as zone,
        lower(provider) || '/' || region as location,
        instance_type,
        gpu_model,
        gpu_count,
        lower(market) as market,
        price_usd_hour,
        price_usd_hour / nullif(gpu_count, 0) as price_usd_gpu_hour,
        effective_gpu_hour_usd,
        net_gbps,
        storage_gbps,
        topology_score,
        source as feed
    from source
    where price_usd_hour is not null
)

select * from {{ deduplicate('renamed', 'snapshot_id, provider, region, zone, instance_type, market', 'polled_at desc') }} as deduplicated
