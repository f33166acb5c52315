-- Per training job, the earliest instant from which the usage chain's rows may differ from the last
-- build, given the raw rows that build has not seen (int_raw_delta_bounds): the incremental models
-- recompute the job's intervals with greatest(started_at, ended_at) >= since. '-infinity' means the
-- whole job. Jobs absent here are unchanged.
--   * a new interval: from its start; the whole job when it rewrites an interval already built
--     (same usage_id) or moves the job's first spot placement (the first-spot baseline of every
--     interval of the job depends on it)
--   * a new checkpoint: from its commit (the last checkpoint at or before an interval's end)
--   * a new migration row: from the earliest end of any version of that migration
--   * a new price quote: from the earliest poll of any version of that quote, for every job; the
--     whole history when it precedes (or equals) the start of its curve, which prices earlier
--     intervals (int_usage_lookups)
-- Reads the previous build's int_job_first_spot and int_usage_lookups by name: both are built after
-- this model in the same build.
-- depends_on: {{ ref('int_raw_delta_bounds') }}
{%- set first_spot = adapter.get_relation(database=target.database, schema=target.schema, identifier='int_job_first_spot') %}
{%- set lookups = adapter.get_relation(database=target.database, schema=target.schema, identifier='int_usage_lookups') %}
{%- set built = first_spot is not none and lookups is not none and not flags.FULL_REFRESH %}
{%- if not usage_chain_watermarked() %}
-- no incremental model reads it in this build (each runs its full query): nothing to compute
select cast(null as varchar) as job, cast(null as timestamp) as since
where false
{%- else %}

with usage_delta as (
    select usage_id, job, lower(market) as market, started_at, ended_at
    from {{ source('spotshift', 'compute_usage') }}
    where rowid >= {{ raw_delta_from('compute_usage') }}
        and usage_id is not null and job is not null and started_at is not null and ended_at is not null
),

old_first_spot as (
    {%- if built %}
    select job, first_spot_started_at, first_spot_usage_id from {{ first_spot }}
    {%- else %}
    select cast(null as varchar) as job, cast(null as timestamp) as first_spot_started_at,
        cast(null as varchar) as first_spot_usage_id
    where false
    {%- endif %}
),

rewritten as (
    {%- if built %}
    -- an inner join (not semi): DuckDB builds the hash table on the small delta side
    select distinct d.job from usage_delta as d inner join {{ lookups }} as l on d.usage_id = l.usage_id
    {%- else %}
    select distinct job from usage_delta
    {%- endif %}
),

first_spot_moved as (
    select d.job
    from usage_delta as d
    left join old_first_spot as f on d.job = f.job
    where d.market = 'spot'
        and (
            f.first_spot_started_at is null
            or (d.started_at, d.usage_id) < (f.first_spot_started_at, f.first_spot_usage_id)
        )
),

migration_delta as (
    select distinct migration_id
    from {{ source('spotshift', 'migrations') }}
    where rowid >= {{ raw_delta_from('migrations') }} and migration_id is not null
),

quote_curves as (
    -- every version of a re-delivered quote counts: the version that wins may change the curve
    -- at an earlier poll
    select
        lower(q.provider) || '/' || q.region as location,
        q.instance_type,
        lower(q.market) as market,
        min(q.polled_at) as changed_from
    from {{ source('spotshift', 'price_quotes') }} as q
    semi join (
        select snapshot_id, provider, region, coalesce(zone, '') as zone, instance_type, market
        from {{ source('spotshift', 'price_quotes') }}
        where rowid >= {{ raw_delta_from('price_quotes') }}
    ) as d
        on q.snapshot_id is not distinct from d.snapshot_id
        and q.provider is not distinct from d.provider
        and q.region is not distinct from d.region
        and coalesce(q.zone, '') = d.zone
        and q.instance_type is not distinct from d.instance_type
        and q.market is not distinct from d.market
    group by all
),

curve_starts as (
    select
        lower(provider) || '/' || region as location,
        instance_type,
        lower(market) as market,
        min(polled_at) as curve_start
    from {{ source('spotshift', 'price_quotes') }}
    where rowid < {{ raw_delta_from('price_quotes') }} and price_usd_hour is not null
    group by all
),

quotes_since as (
    select min(
        case
            when s.curve_start is null or q.changed_from <= s.curve_start then '-infinity'::timestamp
            else q.changed_from
        end
    ) as since
    from quote_curves as q
    left join curve_starts as s
        on q.location = s.location and q.instance_type = s.instance_type and q.market = s.market
),

changes as (
    select job, least(started_at, ended_at) as since from usage_delta

    union all
    select job, '-infinity'::timestamp from rewritten

    union all
    select job, '-infinity'::timestamp from first_spot_moved

    union all
    select job, created_at
    from {{ source('spotshift', 'checkpoints') }}
    where rowid >= {{ raw_delta_from('checkpoints') }} and job is not null and created_at is not null

    union all
    select m.job, coalesce(m.ended_at, m.started_at)
    from {{ source('spotshift', 'migrations') }} as m
    semi join migration_delta as d on m.migration_id = d.migration_id
    where m.job is not null and m.started_at is not null

    union all
    select j.job, s.since
    from (select job from old_first_spot union select job from usage_delta) as j
    cross join quotes_since as s
    where s.since is not null
)

select job, min(since) as since
from changes
group by job
{%- endif %}
