-- One row per transfer. Amplification is recomputed from the byte counts when the writer left it empty.
with source as (
    select * from {{ source('spotshift', 'transfers') }}
),

renamed as (
    select
        transfer_id,
        kind,
        entity,
        method,
        src_location,
        dst_location,
        started_at,
        coalesce(seconds, 0) as seconds,
        started_at + to_microseconds(cast(coalesce(seconds, 0) * 1e6 as bigint)) as ended_at,
        coalesce(bytes_scanned, 0) as bytes_scanned,
        coalesce(bytes_changed, 0) as bytes_changed,
        coalesce(bytes_full, 0) as bytes_full,
        coalesce(chunks_total, 0) as chunks_total,
        coalesce(chunks_sent, 0) as chunks_sent,
        coalesce(bytes_sent, 0) as bytes_sent,
        egress_usd_per_gb,
        coalesce(egress_usd, 0) as egress_usd,
        coalesce(
            transfer_amplification,
            cast(bytes_sent as double) / nullif(bytes_changed, 0)
        ) as transfer_amplification,
        root,
        run_id
    from source
    where transfer_id is not null and started_at is not null
)

select * from {{ deduplicate('renamed', 'transfer_id', 'started_at desc') }} as deduplicated
