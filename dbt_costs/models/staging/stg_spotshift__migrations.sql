with source as (
    select * from {{ source('spotshift', 'migrations') }}
)

select
    migration_id,
    job,
    trigger,
    from_location,
    to_location,
    started_at,
    coalesce(ended_at, started_at) as ended_at,
    status,
    coalesce(downtime_s, 0) as downtime_s,
    coalesce(bytes_moved, 0) as bytes_moved,
    coalesce(egress_usd, 0) as egress_usd,
    expected_savings_usd,
    run_id
from source
where migration_id is not null and started_at is not null
-- a migration's row may be rewritten when it ends: keep the latest state
qualify row_number() over (partition by migration_id order by coalesce(ended_at, started_at) desc) = 1
