-- One row per transfer (a transfer written twice: the latest start, then the latest write).
-- Amplification is recomputed from the byte counts when the writer left it empty.
-- An incremental table like stg_spotshift__compute_usage: a build reads only the raw rows it has
-- not seen (macros/incremental_usage.sql) and replaces the keys they carry.
{{ config(**usage_chain_config('transfer_id')) }}
-- depends_on: {{ ref('int_raw_delta_bounds') }}
with source as (
    select {{ raw_rowid() }} as _raw_rowid, * from {{ source('spotshift', 'transfers') }}
    {%- if usage_chain_incremental() %}
    where rowid >= {{ raw_delta_from('transfers') }}
    {%- endif %}
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
        run_id,
        _raw_rowid
    from source
    where transfer_id is not null and started_at is not null
)

{%- if usage_chain_incremental() %},

candidates as (
    select * from renamed
    union all by name
    select t.* from {{ this }} as t semi join renamed as r on t.transfer_id = r.transfer_id
)

select * from candidates
qualify row_number() over (partition by transfer_id order by started_at desc, _raw_rowid desc) = 1
{%- else %}

select * from {{ deduplicate('renamed', 'transfer_id', 'started_at desc, _raw_rowid desc') }} as deduplicated
{%- endif %}
