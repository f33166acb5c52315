-- The newest simulated baseline per job and kind (spotshift.costs.baselines appends a row whenever
-- an input of the simulation changed): today only stay_first_spot, the job's first spot placement
-- kept and paying for the preemptions that location's availability trace deals it.
with source as (
    select * from {{ source('spotshift', 'job_baselines') }}
),

renamed as (
    select
        job,
        baseline,
        location,
        instance_type,
        availability,
        inputs_digest,
        computed_at,
        work_hours,
        deadline_hours,
        coalesce(preemptions, 0) as preemptions,
        coalesce(on_demand_hours, 0) as on_demand_hours,
        compute_usd,
        bound_compute_usd,
        preemption_factor,
        deadline_met
    from source
    where job is not null and baseline is not null and preemption_factor is not null
)

select * from {{ deduplicate('renamed', 'job, baseline', 'computed_at desc, inputs_digest') }} as deduplicated
