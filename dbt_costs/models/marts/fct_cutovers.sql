-- One row per gradual cutover of an inference endpoint (raw.cutovers holds one row per stage):
-- where it went, how far it got, why it stopped, and the cost per million tokens before (the
-- source) and after (the target), each weighted by the requests its stages measured (the plan's
-- figure when no stage measured any). A cutover's outcome is its last event: decommissioned,
-- failed_back, promoted or rolled_back (else it is still in progress).
with stages as (
    select * from {{ source('spotshift', 'cutovers') }}
),

per_cutover as (
    select
        cutover_id,
        any_value(endpoint) as endpoint,
        any_value(from_locations) as from_locations,
        any_value(to_location) as to_location,
        min(started_at) as started_at,
        max(ended_at) as ended_at,
        count(*) filter (where status = 'passed') as stages_passed,
        count(*) filter (where status = 'passed' and phase = 'shadow') as shadow_stages_passed,
        max(stage) filter (where status = 'rolled_back') as rolled_back_at_stage,
        max(reason) filter (where status = 'rolled_back') as reason,
        max(case status
            when 'decommissioned' then 5 when 'failed_back' then 4 when 'promoted' then 3
            when 'rolled_back' then 2 else 1 end) as outcome_rank,
        sum(source_requests) as source_requests,
        sum(target_requests) as target_requests,
        sum(source_usd_per_mtok * source_requests) / nullif(sum(source_requests) filter (
            where source_usd_per_mtok is not null), 0) as measured_before,
        sum(target_usd_per_mtok * target_requests) / nullif(sum(target_requests) filter (
            where target_usd_per_mtok is not null), 0) as measured_after,
        max(source_usd_per_mtok) as any_before,
        max(plan_usd_per_mtok) as plan_usd_per_mtok,
        max(target_p99_ms) as worst_target_p99_ms,
        max(source_p99_ms) as worst_source_p99_ms,
        min(agreement) as min_agreement,
        max(replica_hours_saved) as replica_hours_saved
    from stages
    group by cutover_id
)

select
    cutover_id,
    endpoint,
    from_locations,
    to_location,
    started_at,
    ended_at,
    case outcome_rank
        when 5 then 'decommissioned' when 4 then 'failed_back' when 3 then 'promoted'
        when 2 then 'rolled_back' else 'in_progress' end as status,
    stages_passed,
    shadow_stages_passed,
    rolled_back_at_stage,
    reason,
    source_requests,
    target_requests,
    coalesce(measured_before, any_before) as usd_per_mtok_before,
    coalesce(measured_after, plan_usd_per_mtok) as usd_per_mtok_after,
    plan_usd_per_mtok,
    1 - coalesce(measured_after, plan_usd_per_mtok) / nullif(coalesce(measured_before, any_before), 0)
        as saving_per_mtok,
    worst_source_p99_ms,
    worst_target_p99_ms,
    min_agreement,
    replica_hours_saved
from per_cutover
