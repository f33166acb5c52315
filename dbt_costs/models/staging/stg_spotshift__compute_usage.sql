-- An incremental table, not a view like most staging models: four models read it and
-- de-duplicating millions of intervals costs seconds each time (bench/bench_costs.py). A build
-- reads only the raw rows it has not seen (macros/incremental_usage.sql) and replaces the keys
-- they carry, choosing again between the stored row and the new ones.
{{ config(**usage_chain_config('usage_id')) }}
-- depends_on: {{ ref('int_raw_delta_bounds') }}
-- One row per compute interval (a retried write of the same usage_id is kept once: the latest end,
-- then the latest write). `hours` is the billed quantity: usd / price_usd_hour when the writer
-- gave both (trainers bill the work their steps stand for, which a sped-up virtual clock does not
-- show), else the length of the interval; `wall_hours` is always the length. usd falls back to
-- price x wall hours; it stays NULL when neither is known (a writer that found no quote: a location
-- the feed does not price, a trainer started before the first poll): fct_unpriced_usage lists such
-- intervals, fct_gpu_usage and everything built on it leave them out.
with source as (
    select {{ raw_rowid() }} as _raw_rowid, * from {{ source('spotshift', 'compute_usage') }}
    {%- if usage_chain_incremental() %}
    where rowid >= {{ raw_delta_from('compute_usage') }}
    {%- endif %}
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
        case
            when usd is not null and price_usd_hour > 0 then usd / price_usd_hour
            else greatest(epoch(ended_at - started_at), 0) / 3600.0
        end as hours,
        greatest(epoch(ended_at - started_at), 0) / 3600.0 as wall_hours,
        coalesce(gpu_count, 1) as gpu_count,
        price_usd_hour,
        list_price_usd_hour,
        coalesce(usd, price_usd_hour * greatest(epoch(ended_at - started_at), 0) / 3600.0) as usd,
        coalesce(ended_in_preemption, false) as ended_in_preemption,
        coalesce(steps, 0) as steps,
        coalesce(tokens, 0) as tokens,
        run_id,
        _raw_rowid
    from source
    where usage_id is not null and job is not null and started_at is not null and ended_at is not null
)

{%- if usage_chain_incremental() %},

candidates as (
    select * from renamed
    union all by name
    select * from {{ this }} where usage_id in (select usage_id from renamed)
)

select * from candidates
qualify row_number() over (partition by usage_id order by ended_at desc, _raw_rowid desc) = 1
{%- else %}

select * from {{ deduplicate('renamed', 'usage_id', 'ended_at desc, _raw_rowid desc') }} as deduplicated
{%- endif %}
