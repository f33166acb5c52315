-- An incremental table (millions of rows, read by three models): a build reads only the raw rows it
-- has not seen (macros/incremental_usage.sql) and replaces the keys they carry.
{{ config(**usage_chain_config(['job', 'checkpoint_id'])) }}
-- depends_on: {{ ref('int_raw_delta_bounds') }}
-- One row per committed checkpoint of a job (the same content committed twice is kept once: the
-- first commit, then the first write).
with source as (
    select {{ raw_rowid() }} as _raw_rowid, * from {{ source('spotshift', 'checkpoints') }}
    {%- if usage_chain_incremental() %}
    where rowid >= {{ raw_delta_from('checkpoints') }}
    {%- endif %}
),

renamed as (
    select
        checkpoint_id,
        job,
        step,
        tokens,
        kind,
        location,
        url,
        bytes,
        created_at,
        serialize_s,
        encrypt_s,
        upload_s,
        total_s,
        _raw_rowid
    from source
    where checkpoint_id is not null and job is not null and created_at is not null
)

{%- if usage_chain_incremental() %},

candidates as (
    select * from renamed
    union all by name
    select t.* from {{ this }} as t semi join renamed as r on t.job = r.job and t.checkpoint_id = r.checkpoint_id
)

select * from candidates
qualify row_number() over (partition by job, checkpoint_id order by created_at, _raw_rowid) = 1
{%- else %}

select * from {{ deduplicate('renamed', 'job, checkpoint_id', 'created_at, _raw_rowid') }} as deduplicated
{%- endif %}
