-- One row per preemption notice, with when and where the job resumed: the recovery the trainer
-- recorded (recovered_at / recovery_s) when it did, else the start of the job's next compute
-- interval after the notice (seed 000's preemption_recovery_time: notice to resumed training).
with preemptions as (
    select * from {{ ref('stg_spotshift__preemptions') }}
),

usage as (
    select job, started_at, location from {{ ref('stg_spotshift__compute_usage') }}
),

next_interval as (
    select
        p.notice_id,
        u.started_at as next_started_at,
        u.location as resumed_location
    from preemptions as p
    asof left join usage as u
        on p.job = u.job and p.noticed_at <= u.started_at
)

select
    p.notice_id,
    p.job,
    p.location,
    p.notice_kind,
    p.noticed_at,
    p.deadline_at,
    p.checkpoint_committed_at,
    p.step,
    coalesce(p.recovered_at, n.next_started_at) as resumed_at,
    n.resumed_location,
    coalesce(p.recovery_s, epoch(n.next_started_at - p.noticed_at)) as recovery_s,
    case
        when p.recovery_s is not null then 'recorded'
        when n.next_started_at is not null then 'next_interval'
    end as recovery_source,
    p.checkpoint_committed_at is not null
    and (p.deadline_at is null or p.checkpoint_committed_at <= p.deadline_at) as checkpoint_before_deadline
from preemptions as p
left join next_interval as n on p.notice_id = n.notice_id
