"""``emergency_checkpoint``: stop a job's trainer at the next step boundary with a committed checkpoint.

With no live trainer (it already exited on a provider notice), it returns the newest committed
checkpoint where the job last ran — so the op is safe to run again. ``emergency_checkpoint_job``
wraps it for the UI; recovery jobs use the op as their first step.
"""

from typing import Any

import dagster as dg

from resources.compute import ComputeBackendResource
from resources.warehouse import WarehouseResource
from spotshift.migration import contract
from spotshift.training.runs import stop_with_checkpoint


class EmergencyCheckpointConfig(dg.Config):
    job: str = ""  # empty: run tag spotshift/job
    preemption: bool = False  # True: the stop is a preemption (writes the notice event the sensor reads)
    timeout_s: float = 300.0


@dg.op(out=dg.Out(dict, description="job, location, stopped and the committed checkpoint ref"))
def emergency_checkpoint(
    context: dg.OpExecutionContext,
    config: EmergencyCheckpointConfig,
    compute: ComputeBackendResource,
    warehouse: WarehouseResource,
) -> dict[str, Any]:
    job = config.job or context.run.tags.get(contract.TAG_JOB, "")
    if not job:
        raise dg.Failure(f"emergency_checkpoint: no job (config job or tag {contract.TAG_JOB})")
    out = stop_with_checkpoint(
        compute.backend(),
        job,
        reason=f"emergency_checkpoint op (run {context.run_id})",
        preemption=config.preemption,
        timeout_s=config.timeout_s,
        database=warehouse.database,
    )
    ref = out["checkpoint"]
    context.add_output_metadata(
        {
            "job": job,
            "location": out["location"],
            "stopped": out["stopped"],
            "step": ref["step"],
            "checkpoint_id": ref["checkpoint_id"],
            "url": ref["url"],
        }
    )
    return {"job": job, "location": out["location"], "stopped": out["stopped"], "checkpoint": ref}


@dg.job(description="Stop a job's trainer with a committed checkpoint (config job or tag spotshift/job).")
def emergency_checkpoint_job() -> None:
    emergency_checkpoint()


defs = dg.Definitions(jobs=[emergency_checkpoint_job])
