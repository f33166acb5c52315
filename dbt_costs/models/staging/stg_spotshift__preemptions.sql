-- One row per notice (written again when the job resumes: the latest recovery, then the first
-- write). recovery_s falls back to recovered_at - noticed_at; NULL while the job has not resumed.
-- An incremental table like stg_spotshift__compute_usage: a build reads only the raw rows it has
-- not seen (macros/incremental_usage.sql) and replaces the keys they carry.
{{ config(**usage_chain_config('notice_id')) }}
-- depends_on: {{ ref('int_raw_delta_bounds') }}
with source as (
    select {{ raw_rowid() }} as _raw_rowid, * from {{ source('spotshift', 'preemptions') }}
    {%- if usage_chain_incremental() %}
    where rowid >= {{ raw_delta_from('preemptions') }}
    {%- endif %}
),

renamed as (
    select
        notice_id,
        job,
        location,
        notice_kind,
        noticed_at,
        deadline_at,
        checkpoint_committed_at,
        recovered_at,
        coalesce(recovery_s, epoch(recovered_at - noticed_at)) as recovery_s,
        step,
        _raw_rowid
    from source
    where notice_id is not null
)

{%- if usage_chain_incremental() %},

candidates as (
    select * from renamed
    union all by name
    select t.* from {{ this }} as t semi join renamed as r on t.notice_id = r.notice_id
)

select * from candidates
qualify row_number() over (partition by notice_id order by recovered_at desc nulls last, _raw_rowid) = 1
{%- else %}

select * from {{ deduplicate('renamed', 'notice_id', 'recovered_at desc nulls last, _raw_rowid') }} as deduplicated
{%- endif %}
