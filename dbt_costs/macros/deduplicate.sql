{% macro deduplicate(relation, partition_by, order_by) %}
{#-
    Rows of `relation` with one row per `partition_by` key: the first by `order_by` among
    duplicates (a retried append writes a fact twice). Keys that occur once — nearly all — pass
    through an anti-join; only duplicated keys are ranked. DuckDB turns a plain
    `qualify row_number() over (partition by key)` into a hash aggregate over whole rows, which
    costs seconds and gigabytes at millions of rows (bench/bench_costs.py).
-#}
(
    with rows as (
        select * from {{ relation }}
    ),

    duplicated as (
        select {{ partition_by }}
        from rows
        group by all
        having count(*) > 1
    )

    select rows.* from rows anti join duplicated using ({{ partition_by }})

    union all

    select rows.* from rows semi join duplicated using ({{ partition_by }})
    qualify row_number() over (partition by {{ partition_by }} order by {{ order_by }}) = 1
)
{% endmacro %}
