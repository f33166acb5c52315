-- Compute intervals nobody could price: their writer found no validated quote for the job's GPUs at
-- the interval's location when it started (a location the configured feed does not quote, or a
-- trainer started before the first poll), and ingestion found none in force either. They are
-- kept out of fct_gpu_usage (and so out of every cost, baseline and FOCUS row); `spotshift report`
-- lists them, so a report is never silently short of an interval.
with usage as (
    select * from {{ ref('stg_spotshift__compute_usage') }} where usd is null
),

quoted as (
    select location, min(polled_at) as first_polled_at
    from {{ ref('stg_spotshift__price_quotes') }}
    group by location
)

select
    u.usage_id,
    u.job,
    u.location,
    u.started_at,
    u.ended_at,
    u.wall_hours,
    u.steps,
    u.run_id,
    case
        when q.location is null then 'no quote was ever polled for ' || u.location
        when q.first_polled_at > u.started_at
            then 'no quote for ' || u.location || ' was in force yet (first poll ' || strftime(q.first_polled_at, '%Y-%m-%d %H:%M') || ')'
        else 'no quote in ' || u.location || ' fits the job''s GPUs'
    end as reason
from usage as u
left join quoted as q on u.location = q.location
