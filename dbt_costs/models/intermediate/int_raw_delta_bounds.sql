-- Per raw table the usage chain reads incrementally: the row positions [from_row, through_row) this
-- build has not seen yet (macros/incremental_usage.sql). from_row is the smallest row count any
-- incremental model of the chain recorded after its last build; 0 (everything) when one of them
-- never recorded one, on --full-refresh, or when the table now holds fewer rows than recorded.
-- watermarked is false until every model of the chain recorded one.
{{ config(post_hook="{{ create_watermark_table() }}") }}
{%- set tables = usage_delta_tables() %}
{%- set models = usage_incremental_models() %}
{%- set recorded = adapter.get_relation(database=target.database, schema=target.schema, identifier='cost_marts_watermarks') %}

with live as (
    {%- for t in tables %}
    select '{{ t }}' as raw_table, count(*) as through_row from {{ source('spotshift', t) }}
    {%- if not loop.last %} union all{% endif %}
    {%- endfor %}
),

recorded as (
    {%- if recorded is not none and not flags.FULL_REFRESH %}
    select raw_table, min(row_count) as row_count, count(distinct model) as models
    from {{ recorded }}
    where model in ({% for m in models %}'{{ m }}'{% if not loop.last %}, {% endif %}{% endfor %})
    group by raw_table
    {%- else %}
    select cast(null as varchar) as raw_table, cast(0 as bigint) as row_count, 0 as models
    where false
    {%- endif %}
)

select
    l.raw_table,
    case
        when r.models = {{ models | length }} and r.row_count <= l.through_row then r.row_count
        else 0
    end as from_row,
    l.through_row,
    -- every model of the chain recorded a build: they may read deltas (else each runs its full query)
    coalesce(r.models = {{ models | length }}, false) as watermarked
from live as l
left join recorded as r on l.raw_table = r.raw_table
