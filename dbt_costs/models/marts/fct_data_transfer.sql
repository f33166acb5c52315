-- One row per transfer of a dataset or checkpoint, attributed to a training job: a checkpoint
-- transfer belongs to its job; a dataset transfer to the job whose migration run made it (same
-- run_id); otherwise job is NULL (replication not tied to one job).
-- transfer_amplification = bytes sent / bytes that changed (seed 000's "killer metric"; alert
-- above var amplification_alert_threshold, 3.0).
--
-- Incremental (macros/incremental_usage.sql): the transfers with unseen raw rows, plus every
-- transfer of a migration run whose migrations have unseen raw rows (the run's job may change; the
-- run ids of every version of such a migration, so a run that lost it is recomputed too).
{{ config(**usage_chain_config('transfer_id')) }}
-- depends_on: {{ ref('int_raw_delta_bounds') }}
with transfers as (
    select * from {{ ref('stg_spotshift__transfers') }}
    {%- if usage_chain_incremental() %}
    where transfer_id in (
        select transfer_id from {{ source('spotshift', 'transfers') }}
        where rowid >= {{ raw_delta_from('transfers') }}
    )
    or run_id in (
        select m.run_id
        from {{ source('spotshift', 'migrations') }} as m
        semi join (
            select migration_id from {{ source('spotshift', 'migrations') }}
            where rowid >= {{ raw_delta_from('migrations') }}
        ) as d on m.migration_id = d.migration_id
        where m.run_id is not null
    )
    {%- endif %}
),

migration_runs as (
    select
        run_id,
        min(job) as job,
        min(migration_id) as migration_id
    from {{ ref('stg_spotshift__migrations') }}
    where run_id is not null
    group by run_id
)

select
    t.transfer_id,
    t.kind,
    t.entity,
    case when t.kind = 'checkpoint' then t.entity else m.job end as job,
    m.migration_id,
    t.method,
    t.src_location,
    t.dst_location,
    split_part(t.src_location, '/', 1) as src_provider,
    split_part(t.src_location, '/', 2) as src_region,
    t.src_location <> t.dst_location as is_cross_location,
    t.started_at,
    t.ended_at,
    t.seconds,
    t.bytes_scanned,
    t.bytes_changed,
    t.bytes_full,
    t.chunks_total,
    t.chunks_sent,
    t.bytes_sent,
    t.bytes_sent / 1e9 as gb_sent,
    t.egress_usd_per_gb,
    t.egress_usd,
    t.transfer_amplification,
    coalesce(t.transfer_amplification > {{ var('amplification_alert_threshold') }}, false)
        as amplification_alert,
    1.0 - t.bytes_sent / nullif(t.bytes_full, 0) as saved_fraction_vs_full_copy,
    t.root,
    t.run_id
from transfers as t
left join migration_runs as m on t.run_id = m.run_id
