"""``cutover_stage_sensor`` and ``cutover_failure_sensor``: a cutover's stages as runs, rollback on failure.

``cutover_stage_sensor`` (every 15 s): for each endpoint with a cutover it first moves what the
virtual clock alone moves (:func:`spotshift.migration.endpoint_cutover.check`: a stage whose hold
passed after a passing window advances; a failback window that closed decommissions the source),
then requests one ``cutover_job`` run per finished stage, run key ``<endpoint>:<cutover id>:<stage>``
(a re-evaluated tick requests nothing twice; the cursor keeps the keys already requested).

``cutover_failure_sensor``: a failed ``cutover_job`` run (a blocking check of ``cutover_validation``
failed) requests ``cutover_rollback_job`` for its endpoint, run key ``cutover-rollback:<run id>``.
"""

import json
import warnings

import dagster as dg

from ops.cutover import cutover_job, cutover_rollback_job
from spotshift.errors import SpotshiftError
from spotshift.migration import endpoint_cutover as ec

warnings.filterwarnings("ignore", message="Parameter `owners` of initializer `SensorDefinition.__init__`")


@dg.sensor(job=cutover_job, minimum_interval_seconds=15, description=__doc__)
def cutover_stage_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    requested: list[str] = json.loads(context.cursor) if context.cursor else []
    seen = set(requested)
    runs = []
    for endpoint in ec.cutover_endpoints():
        try:
            st = ec.check(endpoint)
        except SpotshiftError as exc:
            context.log.warning(f"cutover of {endpoint}: {exc}")
            continue
        for stage in ec.finished_stages(st):
            key = ec.stage_run_key(endpoint, st.cutover_id, stage)
            if key in seen:
                continue
            seen.add(key)
            requested.append(key)
            runs.append(
                dg.RunRequest(
                    run_key=key,
                    run_config=ec.stage_run_config(endpoint, st.cutover_id, stage),
                    tags=ec.stage_tags(st, stage),
                )
            )
    return dg.SensorResult(run_requests=runs, cursor=json.dumps(requested[-2000:]))


@dg.run_failure_sensor(
    monitored_jobs=[cutover_job],
    request_job=cutover_rollback_job,
    minimum_interval_seconds=15,
    description=__doc__,
)
def cutover_failure_sensor(context: dg.RunFailureSensorContext) -> dg.RunRequest | dg.SkipReason:
    run = context.dagster_run
    endpoint = run.tags.get(ec.TAG_ENDPOINT, "")
    if not endpoint:
        return dg.SkipReason(f"run {run.run_id} names no endpoint: nothing to roll back")
    reason = context.failure_event.message or f"cutover_job run {run.run_id} failed"
    return dg.RunRequest(
        run_key=ec.rollback_run_key(run.run_id),
        run_config=ec.rollback_run_config(endpoint, reason),
        tags={
            ec.TAG_ENDPOINT: endpoint,
            ec.TAG_CUTOVER: run.tags.get(ec.TAG_CUTOVER, ""),
            "spotshift/trigger": "rollback",
            "spotshift/rolls_back": run.run_id,
        },
    )


defs = dg.Definitions(sensors=[cutover_stage_sensor, cutover_failure_sensor])
