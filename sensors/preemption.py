"""``preemption_sensor``: resume preempted jobs elsewhere, from their emergency checkpoints.

A trainer that receives a provider notice (AWS IMDS ``spot/instance-action``, GCP
``instance/preempted``, Azure Scheduled Events ``Preempt``, or SIGTERM) commits an emergency
checkpoint and records the notice event (``events/preemption/<notice id>.json`` in its region's
object store, or a row in PostgreSQL when the instance is on PostgreSQL:
:mod:`spotshift.training.notice_events`). This sensor reads those events for every known region
and requests ``preemption_recovery_job``
with run key ``<job>:<notice id>``; the JSON cursor remembers the notice ids it acted on, so a
re-evaluated tick never starts a second recovery for one notice.
"""

import json

import dagster as dg

from assets.partitions import regions_partitions
from ops.migration import preemption_recovery_job
from spotshift.migration import contract
from spotshift.placement.state import list_states
from spotshift.serving.notices import is_replica_notice
from spotshift.training.notice_events import read_notices

CURSOR_KEEP = 2000  # notice ids remembered


def known_locations(instance: dg.DagsterInstance) -> list[str]:
    """Regions whose stores may hold notices: every quoted region and every place a job has run."""
    locations = set(instance.get_dynamic_partitions(regions_partitions.name))
    locations.update(s.location for s in list_states() if s.location)
    return sorted(locations)


@dg.sensor(job=preemption_recovery_job, minimum_interval_seconds=30, description=__doc__)
def preemption_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    cursor = json.loads(context.cursor) if context.cursor else {"seen": []}
    seen = set(cursor["seen"])
    requests = []
    for location in known_locations(context.instance):
        for notice in read_notices(location, skip=seen):
            if is_replica_notice(notice):  # a serving replica's: inference_autoscale_sensor replaces it
                continue
            seen.add(notice["notice_id"])
            cursor["seen"] = [*cursor["seen"], notice["notice_id"]][-CURSOR_KEEP:]
            job, location, notice_id = notice["job"], notice["location"], notice["notice_id"]
            noticed_at = str(notice.get("virtual_noticed_at") or notice.get("noticed_at") or "")
            requests.append(
                dg.RunRequest(
                    run_key=contract.recovery_run_key(job, notice_id),
                    run_config=contract.recovery_run_config(
                        job, location, notice_id, noticed_at=noticed_at, step=int(notice.get("step") or 0)
                    ),
                    tags=contract.recovery_tags(job, location, notice_id),
                )
            )
    if not requests:
        return dg.SkipReason("no new preemption notice")
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor, sort_keys=True))


defs = dg.Definitions(sensors=[preemption_sensor])
