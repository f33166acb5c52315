"""``migration_failure_sensor``: a failed (or check-blocked) move is rolled back.

When a ``migration_job`` or ``preemption_recovery_job`` run fails — a step raised, or a blocking
check (replica root, shadow-validation thresholds) stopped the chain — this run-failure sensor
requests ``rollback_job`` for the move that run recorded in the move ledger (the job named by the
run's tag ``spotshift/job``): stop the target, resume the job in the source, mark the target unfit
for a cooldown. Run key ``rollback:<failed run id>``: one rollback per failed run.
"""

import warnings

import dagster as dg

from ops.migration import migration_job, preemption_recovery_job, rollback_job
from spotshift.migration import contract
from spotshift.migration.state import load

# dagster 1.13 passes the beta `owners` parameter itself whenever it copies a run-status sensor
# (we set no owners); the warning is about dagster's own call, so keep it out of users' logs
warnings.filterwarnings("ignore", message="Parameter `owners` of initializer `SensorDefinition.__init__`")


@dg.run_failure_sensor(
    monitored_jobs=[migration_job, preemption_recovery_job],
    request_job=rollback_job,
    minimum_interval_seconds=15,
    description=__doc__,
)
def migration_failure_sensor(context: dg.RunFailureSensorContext) -> dg.RunRequest | dg.SkipReason:
    run = context.dagster_run
    job = run.tags.get(contract.TAG_JOB, "")
    move = load(job) if job else None
    if move is None or move.run_id != run.run_id:
        return dg.SkipReason(f"run {run.run_id} failed before it had a plan: nothing to roll back")
    reason = context.failure_event.message or f"run {run.run_id} failed"
    return dg.RunRequest(
        run_key=contract.rollback_run_key(run.run_id),
        run_config=contract.rollback_run_config(job, failed_run_id=run.run_id, reason=reason),
        tags=contract.rollback_tags(dict(run.tags), run.run_id),
    )


defs = dg.Definitions(sensors=[migration_failure_sensor])
