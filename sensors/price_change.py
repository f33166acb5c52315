"""``price_change_sensor``: every 60 s, decide for every declared job whether it should move.

Each evaluation runs the migration economics for every declared job on the latest validated quote
snapshot through :func:`spotshift.migration.plan.tick` (inputs read once per tick, scoring
vectorised, the same decisions as :func:`spotshift.placement.economics.decide` over the whole
snapshot; ``spotshift placement decide-all`` runs the same tick from the command line) and
records each decision — move or stay, with its reasons — in ``raw.decisions``. Jobs whose inputs
did not change since their last decision (the prices of the quotes they can use, declaration,
state, checkpoints, transfers, risks, team budget; no deadline) are re-decided only every 15
minutes of virtual time; a job with a deadline is decided every tick. When a decision changes the
placement it requests ``migration_job`` with run key ``<job>:<from>-><to>:<quote snapshot id>``,
so a re-evaluated tick never starts a second run for the same move; the JSON cursor remembers the
run keys it requested, the last decision per job and the digest of its inputs.
"""

import json

import dagster as dg

from ops.migration import migration_job
from resources.compute import ComputeBackendResource
from resources.warehouse import WarehouseResource
from spotshift.clock import virtual_now
from spotshift.migration import contract
from spotshift.migration.plan import plan_from_decision, tick
from spotshift.placement.state import load_state

CURSOR_KEEP = 500  # run keys remembered (older ones are long finished; the daemon dedupes run keys too)


@dg.sensor(job=migration_job, minimum_interval_seconds=60, description=__doc__)
def price_change_sensor(
    context: dg.SensorEvaluationContext, warehouse: WarehouseResource, compute: ComputeBackendResource
) -> dg.SensorResult | dg.SkipReason:
    cursor = json.loads(context.cursor) if context.cursor else {"requested": [], "decisions": {}}
    busy = _busy_jobs(context.instance)
    now = virtual_now()
    requests, notes = [], []
    previous = {k: (v[0], v[1]) for k, v in cursor.get("inputs", {}).items()}
    with warehouse.get_connection() as con:
        result = tick(con, compute.backend(), now=now, busy=busy, previous=previous)
    inputs = cursor.setdefault("inputs", {})
    for decision in result.decisions:
        job = decision.job
        cursor["decisions"][job] = decision.decision_id
        inputs[job] = [result.digests[job], now.timestamp()]
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
    if result.skipped:
        notes.append(f"{result.skipped} job(s) unchanged since their last decision")
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
