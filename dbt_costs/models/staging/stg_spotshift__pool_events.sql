-- The private pools' ledgers (spotshift pools): one row per event, re-recorded rows dropped.
with source as (
    select * from {{ source('spotshift', 'pool_events') }}
),

renamed as (
    select
        event_id,
        pool,
        location,
        event_at,
        job,
        event,
        gpus,
        hours,
        cost_usd,
        wait_hours,
        cost_pool_usd,
        cost_cloud_usd,
        egress_usd,
        reason,
        run_key
    from source
    where event_id is not null
)

select * from {{ deduplicate('renamed', 'event_id', 'event_at desc') }} as deduplicated
