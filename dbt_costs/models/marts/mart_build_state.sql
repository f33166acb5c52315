-- Row counts of every raw table at the moment this build read them. `spotshift report` compares
-- them with the live counts to know whether the marts are stale (raw tables are append-only, and
-- dbt holds the warehouse lock for the whole build, so the counts match what the marts saw).
{% set tables = ['price_quotes', 'compute_usage', 'transfers', 'checkpoints', 'decisions',
                 'scaling_decisions', 'migrations', 'preemptions', 'shadow_validations', 'job_baselines',
                 'inference_usage', 'cutovers', 'budget_alerts', 'reconciliations', 'pool_events',
                 'checkpoint_compatibility'] %}
{% for t in tables %}
select '{{ t }}' as raw_table, count(*) as row_count, now()::timestamp as built_at
from {{ source('spotshift', t) }}
{% if not loop.last %}union all{% endif %}
{% endfor %}
