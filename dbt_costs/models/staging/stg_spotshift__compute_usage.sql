-- One row per compute interval (a retried write of the same usage_id is kept once).
-- usd falls back to price x hours when the writer left it empty.
with source as (
    select * from {{ source('spotshift', 'compute_usage') }}
),

renamed as (
    select
        usage_id,
        job,
        lower(provider) as provider,
        region,
        lower(provider) || '/' || region as location,
        instance_type,
        gpu_model,
        lower(market) as market,
        started_at,
        ended_at,
        greatest(epoch(ended_at - started_at), 0) / 3600.0 as hours,
        coalesce(gpu_count, 1) as gpu_count,
        price_usd_hour,
        list_price_usd_hour,
        coalesce(usd, price_usd_hour * greatest(epoch(ended_at - started_at), 0) / 3600.0) as usd,
        coalesce(ended_in_preemption, false) as ended_in_preemption,
        coalesce(steps, 0) as steps,
        coalesce(tokens, 0) as tokens,
        run_id
    from source
    where usage_id is not null and job is not null and started_at is not null and ended_at is not null
)

select * from renamed
qualify row_number() over (partition by usage_id order by ended_at desc) = 1
