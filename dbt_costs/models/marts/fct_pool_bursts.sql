-- One row per burst or return decision of a private pool, both sides costed: the pool's cost of the
-- work (left) and the cloud's (egress out of the site and back included), what the chosen side
-- saved (negative: paid for the deadline), and how the move that carried it out ended.
with events as (
    select * from {{ ref('stg_spotshift__pool_events') }}
),

decisions as (
    select * from events where event in ('burst', 'repatriated')
),

moves as (
    select job, event_at, event, run_key, location from events where event like 'move_%'
)

select
    d.event_id,
    d.pool,
    d.job,
    d.event_at as decided_at,
    case when d.event = 'burst' then 'burst' else 'return' end as decision,
    d.location as cloud_location,
    d.wait_hours,
    d.cost_pool_usd,
    d.cost_cloud_usd,
    d.egress_usd,
    case
        when d.event = 'burst' then d.cost_pool_usd - d.cost_cloud_usd
        else d.cost_cloud_usd - d.cost_pool_usd
    end as saving_usd,
    d.hours as cloud_hours,
    d.cost_usd as cloud_cost_usd,
    d.reason,
    (
        select m.event from moves as m
        where m.job = d.job and m.event_at >= d.event_at
            and ((d.event = 'burst' and m.location = d.location) or (d.event = 'repatriated' and m.location != d.location))
        order by m.event_at
        limit 1
    ) as move_outcome
from decisions as d
