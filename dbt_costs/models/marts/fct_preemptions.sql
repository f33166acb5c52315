-- One row per preemption notice, with when and where the job resumed: the recovery the trainer
-- recorded (recovered_at / recovery_s) when it did, else the start of the job's next compute
-- interval after the notice (seed 000's preemption_recovery_time: notice to resumed training).
--
-- Incremental (macros/incremental_usage.sql): the notices with unseen raw rows, plus the notices of
-- changed jobs (int_usage_changes) whose next interval may have changed: noticed from `since` on,
-- or whose stored next interval is missing or starts from `since` on (a new interval can only
-- become the next one of a notice whose next one started later).
{{ config(**usage_chain_config('notice_id')) }}
-- depends_on: {{ ref('int_raw_delta_bounds') }}
-- depends_on: {{ ref('int_usage_changes') }}
with preemptions as (
    {%- if usage_chain_incremental() %}
    select p.*
    from {{ ref('stg_spotshift__preemptions') }} as p
    where p.notice_id in (
        select notice_id from {{ source('spotshift', 'preemptions') }}
        where rowid >= {{ raw_delta_from('preemptions') }}
        union
        select t.notice_id
        from {{ this }} as t
        inner join {{ ref('int_usage_changes') }} as c on t.job = c.job
        where t.noticed_at >= c.since
            or t.next_interval_started_at is null
            or t.next_interval_started_at >= c.since
    )
    {%- else %}
    select * from {{ ref('stg_spotshift__preemptions') }}
    {%- endif %}
),

usage as (
    select u.job, u.started_at, u.location
    from {{ ref('stg_spotshift__compute_usage') }} as u
    {%- if usage_chain_incremental() %}
    inner join (select job, min(noticed_at) as first_notice from preemptions group by job) as p
        on u.job = p.job and u.started_at >= p.first_notice
    {%- endif %}
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
    and (p.deadline_at is null or p.checkpoint_committed_at <= p.deadline_at) as checkpoint_before_deadline,
    n.next_started_at as next_interval_started_at
from preemptions as p
left join next_interval as n on p.notice_id = n.notice_id
