{#-
    Incremental builds of the usage chain (stg_spotshift__compute_usage, stg_spotshift__checkpoints,
    stg_spotshift__transfers, stg_spotshift__preemptions, int_job_first_spot, int_usage_lookups,
    fct_gpu_usage, fct_preemptions, fct_data_transfer).

    Raw tables are append-only (spotshift never updates or deletes a raw row; a correction is a new
    row with the same key), so the rows a build has not seen yet are those at a row position
    (DuckDB rowid) at or above the row count of the build that last finished. Every incremental
    model records, in a post-hook inside its own transaction, the row counts its build covered
    (table cost_marts_watermarks: model, raw_table, row_count); int_raw_delta_bounds starts the next
    delta at the smallest count any of them recorded, so a model that failed or was not selected
    re-reads what it missed (every model replaces whole keys, so re-reading is harmless). A raw
    table with fewer rows than recorded (rewritten by hand) makes the delta the whole table.
-#}

{% macro usage_incremental_models() %}
    {{ return(['stg_spotshift__compute_usage', 'stg_spotshift__checkpoints', 'stg_spotshift__transfers',
               'stg_spotshift__preemptions', 'int_job_first_spot', 'int_usage_lookups', 'fct_gpu_usage',
               'fct_preemptions', 'fct_data_transfer']) }}
{% endmacro %}

{#- The config of every model of the chain: config(**usage_chain_config('<unique key>')). Extra
    post-hooks run before the watermark is recorded. -#}
{% macro usage_chain_config(unique_key, post_hook=[]) %}
    {{ return({
        'materialized': 'incremental',
        'incremental_strategy': 'delete+insert',
        'unique_key': unique_key,
        'on_schema_change': 'append_new_columns',
        'post_hook': post_hook + ['{{ record_watermark() }}'],
    }) }}
{% endmacro %}

{% macro usage_delta_tables() %}
    {{ return(['compute_usage', 'checkpoints', 'migrations', 'preemptions', 'price_quotes', 'transfers']) }}
{% endmacro %}

{% macro watermark_relation() %}
    {{ return(api.Relation.create(database=target.database, schema=target.schema, identifier='cost_marts_watermarks')) }}
{% endmacro %}

{#- First row position of `table` the current build has not seen (0 outside a run). Compiled into a
    literal so DuckDB skips the seen row groups by their rowid range. -#}
{% macro raw_delta_from(table) %}
    {%- if execute -%}
        {%- set rows = run_query("select from_row from " ~ ref('int_raw_delta_bounds') ~ " where raw_table = '" ~ table ~ "'") -%}
        {{- return(rows.columns[0].values()[0] if rows | length > 0 else 0) -}}
    {%- endif -%}
    {{- return(0) -}}
{% endmacro %}

{#- Post-hook of int_raw_delta_bounds, before any model records (two at once would conflict). -#}
{% macro create_watermark_table() %}
    create table if not exists {{ watermark_relation() }} (model varchar, raw_table varchar, row_count bigint)
{% endmacro %}

{#- Post-hook: this model's build covered the raw rows int_raw_delta_bounds counted. -#}
{% macro record_watermark() %}
    delete from {{ watermark_relation() }} where model = '{{ this.identifier }}';
    insert into {{ watermark_relation() }}
    select '{{ this.identifier }}', raw_table, through_row from {{ ref('int_raw_delta_bounds') }};
{% endmacro %}

{#- is_incremental(), and every model of the chain recorded a watermark before this build
    (int_raw_delta_bounds.watermarked): otherwise (the first build after the chain became
    incremental, a model added to it) each model runs its full query, which delete+insert applies
    over the old table (on_schema_change adds new columns). -#}
{% macro usage_chain_incremental() %}
    {#- a unit test has no `this` (its incremental branch would need overrides): the full query -#}
    {%- if this is none -%}
        {{- return(false) -}}
    {%- endif -%}
    {{- return(is_incremental() and usage_chain_watermarked()) -}}
{% endmacro %}

{% macro usage_chain_watermarked() %}
    {%- if not execute -%}
        {{- return(false) -}}
    {%- endif -%}
    {%- set rows = run_query("select bool_and(watermarked) from " ~ ref('int_raw_delta_bounds')) -%}
    {{- return(rows.columns[0].values()[0] == true) -}}
{% endmacro %}

{#- The raw row's position (its write order; the tie-break among duplicates). A unit test's given
    rows are a CTE without one: NULL there. -#}
{% macro raw_rowid() %}
    {%- if this is none -%}cast(null as bigint){%- else -%}rowid{%- endif -%}
{% endmacro %}
