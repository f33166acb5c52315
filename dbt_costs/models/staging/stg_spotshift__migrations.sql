-- Latest state of each migration (a migration may be appended again when it ends).
with source as (
    select * from {{ source('spotshift', 'migrations') }}
),

renamed as (
    select
        migration_id,
        job,
        trigger,
        from_location,
        to_location,
        started_at,
        coalesce(ended_at, started_at) as ended_at,
        status,
        coalesce(downtime_s, 0) as downtime_s,
        coalesce(bytes_moved, 0) as bytes_moved,
        coalesce(egress_usd, 0) as egress_usd,
        expected_savings_usd,
        run_id
    from source
    where migration_id is not null and started_at is not null
)

select * from {{ deduplicate('renamed', 'migration_id', 'ended_at desc') }} as deduplicated
