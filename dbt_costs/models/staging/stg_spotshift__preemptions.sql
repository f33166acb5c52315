-- recovery_s falls back to recovered_at - noticed_at; NULL while the job has not resumed.
with source as (
    select * from {{ source('spotshift', 'preemptions') }}
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
        step
    from source
    where notice_id is not null
)

select * from {{ deduplicate('renamed', 'notice_id', 'recovered_at desc nulls last') }} as deduplicated
