with source as (
    select * from {{ source('spotshift', 'inference_usage') }}
),

renamed as (
    select
        location,
        split_part(location, '/', 1) as provider,
        split_part(location, '/', 2) as region,
        lower(market) as market,
        window_start,
        window_end,
        -- a replica's window bills the hours it was up (a replica started mid-minute); feeds
        -- without replica_hours bill the whole window
        coalesce(replica_hours, greatest(epoch(window_end - window_start), 0) / 3600.0) as hours,
        coalesce(requests, 0) as requests,
        coalesce(tokens, 0) as tokens,
        slo_ms,
        p99_ms,
        coalesce(slo_violations, 0) as slo_violations,
        coalesce(usd, 0) as usd,
        coalesce(usd_per_violation, 0) as usd_per_violation,
        endpoint,
        -- one fact per (location, market, window, replica); '' for per-location feeds without replicas
        coalesce(replica_id, '') as replica_id,
        tokens_in,
        tokens_out,
        p50_ms,
        p95_ms,
        usd_per_hour
    from source
    where location is not null and window_start is not null and window_end is not null
)

select * from {{ deduplicate('renamed', 'location, market, window_start, replica_id', 'window_end desc') }} as deduplicated
