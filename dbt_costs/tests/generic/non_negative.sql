{% test non_negative(model, column_name) %}
-- fails on every row where the column is negative (NULL passes: pair with not_null when needed)
select * from {{ model }} where {{ column_name }} < 0
{% endtest %}
