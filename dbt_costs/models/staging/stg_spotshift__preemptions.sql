-- recovery_s falls back to recovered_at - noticed_at; NULL while the job has not resumed.
with source as (
    select * from {{ source('spotshift', 'preemptions') }}
)

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
qualify row_number() over (partition by notice_id order by recovered_at desc nulls last) = 1
