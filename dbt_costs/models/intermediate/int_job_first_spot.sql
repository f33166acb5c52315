-- One row per training job with compute intervals: its first spot interval (by start, then
-- usage_id), whose location and instance type are the job's first-spot baseline (fct_gpu_usage),
-- or NULLs when the job never ran on spot. Incremental: a changed job (int_usage_changes) takes the
-- earliest of its stored first spot interval and its recomputed intervals; the whole job is re-read
-- when since = '-infinity' (a rewritten interval may have stopped being spot).
{{ config(**usage_chain_config('job')) }}
-- depends_on: {{ ref('int_raw_delta_bounds') }}
-- depends_on: {{ ref('int_usage_changes') }}
with usage as (
    select u.job, u.usage_id, u.market, u.started_at, u.location, u.instance_type, u.price_usd_hour, u.gpu_count
    from {{ ref('stg_spotshift__compute_usage') }} as u
    {%- if usage_chain_incremental() %}
    inner join {{ ref('int_usage_changes') }} as c
        on u.job = c.job and greatest(u.started_at, u.ended_at) >= c.since
    {%- endif %}
),

candidates as (
    select
        job,
        case when market = 'spot' then usage_id end as usage_id,
        case when market = 'spot' then started_at end as started_at,
        location,
        instance_type,
        price_usd_hour / nullif(gpu_count, 0) as usd_gpu_hour
    from usage
    {%- if usage_chain_incremental() %}

    union all
    select
        t.job,
        t.first_spot_usage_id,
        t.first_spot_started_at,
        t.first_spot_location,
        t.first_spot_instance_type,
        t.first_interval_usd_gpu_hour
    from {{ this }} as t
    inner join {{ ref('int_usage_changes') }} as c on t.job = c.job
    where c.since > '-infinity'::timestamp and t.first_spot_usage_id is not null
    {%- endif %}
),

first as (
    -- one arg_min of a struct: arg_min skips NULL arguments, and a price may be NULL
    select
        job,
        arg_min(
            {'usage_id': usage_id, 'started_at': started_at, 'location': location,
             'instance_type': instance_type, 'usd_gpu_hour': usd_gpu_hour},
            (started_at, usage_id)
        ) filter (where usage_id is not null) as f
    from candidates
    group by job
)

select
    job,
    f.started_at as first_spot_started_at,
    f.usage_id as first_spot_usage_id,
    f.location as first_spot_location,
    f.instance_type as first_spot_instance_type,
    f.usd_gpu_hour as first_interval_usd_gpu_hour
from first
