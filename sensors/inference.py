"""``inference_autoscale_sensor``: every 60 s, one scaling decision per declared endpoint.

The library gathers the decision's inputs and decides (:func:`spotshift.serving.control.plan_scaling`:
usage history and its 10-minute forecast, the router's SLO violations, the registry, prices, recent
replica preemptions); a decision that starts or stops replicas becomes a ``scale_endpoint_job`` run
with run key ``<endpoint>:<digest of the inputs snapshot>``. The JSON cursor keeps per endpoint the
autoscaler's memory (hysteresis timers, commitments), the router violation counts already acted on
and the last run key, so a re-evaluated tick never asks for a second run. New endpoints get their
``endpoints`` partition here.
"""

import json

import dagster as dg

from assets.partitions import endpoints_partitions
from ops.inference import scale_endpoint_job
from resources.compute import ReplicaLauncherResource
from spotshift.clock import virtual_now
from spotshift.errors import SpotshiftError
from spotshift.serving.control import decision_to_doc, plan_scaling
from spotshift.serving.endpoints import load_endpoints
from spotshift.serving.scaling_types import ScalerMemory


@dg.sensor(job=scale_endpoint_job, minimum_interval_seconds=60, description=__doc__)
def inference_autoscale_sensor(
    context: dg.SensorEvaluationContext, launcher: ReplicaLauncherResource
) -> dg.SensorResult:
    cursor = json.loads(context.cursor) if context.cursor else {}
    endpoints = load_endpoints()
    known = set(context.instance.get_dynamic_partitions(endpoints_partitions.name))
    new_partitions = [e.name for e in endpoints if e.name not in known]
    requests, now, lch = [], virtual_now(), launcher.launcher()
    for ep in endpoints:
        state = cursor.get(ep.name, {})
        try:
            plan = plan_scaling(
                ep,
                lch,
                now=now,
                memory=ScalerMemory.from_json(state.get("memory")),
                violations_seen=state.get("violations"),
            )
        except SpotshiftError as exc:  # one endpoint's missing quotes must not stop the others
            context.log.warning(f"endpoint {ep.name}: no decision ({exc})")
            continue
        new_state = {
            "memory": plan.decision.memory.to_json(),
            "violations": plan.violations_seen,
            "last_run_key": state.get("last_run_key"),
        }
        if plan.actionable and plan.run_key != state.get("last_run_key"):
            new_state["last_run_key"] = plan.run_key
            requests.append(
                dg.RunRequest(
                    run_key=plan.run_key,
                    run_config={
                        "ops": {
                            "apply_scaling_decision": {
                                "config": {"decision": json.dumps(decision_to_doc(plan.decision))}
                            }
                        }
                    },
                    tags={"spotshift/endpoint": ep.name, "spotshift/action": plan.decision.action},
                )
            )
        cursor[ep.name] = new_state
    return dg.SensorResult(
        run_requests=requests,
        cursor=json.dumps(cursor, sort_keys=True),
        dynamic_partitions_requests=[endpoints_partitions.build_add_request(new_partitions)]
        if new_partitions
        else None,
    )


defs = dg.Definitions(sensors=[inference_autoscale_sensor])
