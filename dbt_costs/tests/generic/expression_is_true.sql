{% test expression_is_true(model, expression) %}
-- fails on every row where the SQL boolean expression is false (NULL counts as false)
select * from {{ model }} where not coalesce(({{ expression }}), false)
{% endtest %}
