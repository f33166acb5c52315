with source as (
    select * from {{ source('spotshift', 'decisions') }}
),

renamed as (
    select
        decision_id,
        decided_at,
        job,
        snapshot_id,
        action,
        nullif(current_location, '') as current_location,
        nullif(best_location, '') as best_location,
        current_usd_hour,
        best_usd_hour,
        remaining_hours,
        expected_savings_usd,
        move_cost_usd,
        margin_usd,
        deadline_slack_hours,
        reasons
    from source
    where decision_id is not null
)

select * from {{ deduplicate('renamed', 'decision_id', 'decided_at desc') }} as deduplicated
