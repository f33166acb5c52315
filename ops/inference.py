"""``scale_endpoint_job``: apply one scaling decision of ``inference_autoscale_sensor`` (start replicas,
drain the ones it stops) and record it in ``raw.scaling_decisions`` — one library call,
:func:`spotshift.serving.control.apply_scaling`."""

import json

import dagster as dg

from resources.compute import ReplicaLauncherResource
from spotshift.errors import SpotshiftError
from spotshift.serving.control import apply_scaling, decision_from_doc


class ScaleConfig(dg.Config):
    decision: str  # JSON document of a ScalingDecision (spotshift.serving.control.decision_to_doc)


@dg.op
def apply_scaling_decision(
    context: dg.OpExecutionContext, config: ScaleConfig, launcher: ReplicaLauncherResource
) -> dict:
    """Start and stop the decision's replicas through the launcher, then record the decision."""
    try:
        decision = decision_from_doc(json.loads(config.decision))
        outcome = apply_scaling(decision, launcher.launcher())
    except (ValueError, SpotshiftError) as exc:
        raise dg.Failure(f"scale_endpoint_job: {exc}") from None
    context.add_output_metadata(
        {
            "decision_id": outcome.decision_id,
            "action": outcome.action,
            "started": len(outcome.started),
            "stopped": len(outcome.stopped),
            "outcome": dg.MetadataValue.json(outcome.to_dict()),
            "reasons": dg.MetadataValue.json(list(decision.reasons)),
        }
    )
    return outcome.to_dict()


@dg.job(tags={"spotshift/kind": "scaling"})
def scale_endpoint_job() -> None:
    apply_scaling_decision()


defs = dg.Definitions(jobs=[scale_endpoint_job])
