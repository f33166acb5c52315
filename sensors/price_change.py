"""``price_change_sensor``: every 60 s, decide for every declared job whether it should move.

Each evaluation runs the migration economics (:func:`spotshift.placement.inputs.decide_for_job`,
which assembles the job's inputs and calls :func:`spotshift.placement.economics.decide`, the
function ``spotshift simulate`` calls too) on the latest validated quote snapshot and records
the decision — move or stay, with its reasons — in ``raw.decisions``. When the decision changes the
placement it requests ``migration_job`` with run key ``<job>:<from>-><to>:<quote snapshot id>``,
so a re-evaluated tick never starts a second run for the same move; the JSON cursor remembers the
run keys it requested and the last decision per job.
"""

import json

import dagster as dg

from ops.migration import migration_job
from resources.compute import ComputeBackendResource
from resources.warehouse import WarehouseResource
from spotshift.clock import virtual_now
from spotshift.migration import contract
from spotshift.migration.plan import jobs_to_decide, plan_from_decision
from spotshift.placement.state import load_state

CURSOR_KEEP = 500  # run keys remembered (older ones are long finished; the daemon dedupes run keys too)


@dg.sensor(job=migration_job, minimum_interval_seconds=60, description=__doc__)
def price_change_sensor(
    context: dg.SensorEvaluationContext, warehouse: WarehouseResource, compute: ComputeBackendResource
) -> dg.SensorResult | dg.SkipReason:
    from spotshift.placement.inputs import decide_for_job, record_decision

    cursor = json.loads(context.cursor) if context.cursor else {"requested": [], "decisions": {}}
    busy = _busy_jobs(context.instance)
    now = virtual_now()
    requests, notes = [], []
    with warehouse.get_connection() as con:
        for job in jobs_to_decide(con, compute.backend(), busy=busy, now=now):
            decision = decide_for_job(con, job, now=now)
            record_decision(con, decision)
            cursor["decisions"][job] = decision.decision_id
            notes.append(f"{job}: {decision.action}")
            if not decision.changes_placement:
                continue
            plan = plan_from_decision(decision, state_version=load_state(job).version)
            if plan.run_key in cursor["requested"]:
                continue
            cursor["requested"] = [*cursor["requested"], plan.run_key][-CURSOR_KEEP:]
            requests.append(
                dg.RunRequest(
                    run_key=plan.run_key,
                    run_config=contract.move_run_config(plan.to_dict()),
                    tags=plan.tags(),
                )
            )
    if not notes:
        return dg.SkipReason("no declared job to decide for (all finished, migrating or not declared)")
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor, sort_keys=True))


def _busy_jobs(instance: dg.DagsterInstance) -> set[str]:
    """Jobs with a migration, recovery or rollback run queued or in progress."""
    in_flight = instance.get_runs(
        filters=dg.RunsFilter(
            statuses=[
                dg.DagsterRunStatus.QUEUED,
                dg.DagsterRunStatus.NOT_STARTED,
                dg.DagsterRunStatus.STARTING,
                dg.DagsterRunStatus.STARTED,
            ]
        )
    )
    return {r.tags[contract.TAG_JOB] for r in in_flight if contract.TAG_JOB in r.tags}


defs = dg.Definitions(sensors=[price_change_sensor])
