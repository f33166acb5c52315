{% macro curve_point_holds(days, location, instance_type, instant) %}
{#-
    Join condition: the row of `days` (int_price_curves points, one row per day each is in force)
    for the curve of `location` + `instance_type` whose [valid_from, valid_to) holds `instant`. The
    equality on the day makes it a hash join; at most one point matches.
-#}
    {{ days }}.location = {{ location }}
    and {{ days }}.instance_type = {{ instance_type }}
    and {{ days }}.day = date_trunc('day', {{ instant }})
    and {{ instant }} >= {{ days }}.valid_from
    and ({{ instant }} < {{ days }}.valid_to or {{ days }}.valid_to is null)
{%- endmacro %}
