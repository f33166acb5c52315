"""What the ``checkpoints`` asset does for one job: train a bounded number of steps, pick up the
newest committed checkpoint, or stop the live trainer with a checkpoint (:func:`advance_job`).
"""

from __future__ import annotations

from typing import Any

from spotshift.errors import ConfigError, NotFoundError
from spotshift.jobs import get_job
from spotshift.training.backend import ComputeBackend
from spotshift.training.runs import (
    build_request,
    current_location,
    latest_ref,
    resume_step,
    run_training,
    stop_with_checkpoint,
)


def advance_job(
    backend: ComputeBackend,
    job_name: str,
    *,
    action: str = "run",
    location: str | None = None,
    steps: int | None = None,
    key_provider: str | None = None,
    run_id: str | None = None,
    database: Any = None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """What the ``checkpoints`` asset does for one job; returns ``mode``, ``location``, ``checkpoint``, ...

    ``action``: ``run`` trains a bounded number of ``steps`` (default: the job's checkpoint cadence)
    from the newest checkpoint in ``location`` and waits for the checkpoint; ``latest`` only picks up
    the newest committed checkpoint; ``stop`` stops the live trainer with a checkpoint. While a
    trainer of the job is running, ``run`` and ``latest`` report its newest committed checkpoint
    instead of starting a second one.
    """
    if action not in ("run", "latest", "stop"):
        raise ConfigError(f"checkpoints action {action!r} is not run, latest or stop")
    info = backend.status(job_name)
    if action == "stop":
        out = stop_with_checkpoint(
            backend, job_name, reason=f"checkpoints asset ({run_id})", database=database
        )
        return {**out, "mode": "stopped" if out["stopped"] else "latest"}
    if info is not None and info.alive:
        ref = latest_ref(job_name, info.location)
        if ref is None:
            raise NotFoundError(
                f"job {job_name!r} is running in {info.location} but has no committed checkpoint yet"
            )
        return {"mode": "live", "location": info.location, "checkpoint": ref, "pid": info.pid}
    loc = location or current_location(job_name, database)
    if action == "latest":
        ref = latest_ref(job_name, loc)
        if ref is None:
            raise NotFoundError(f"job {job_name!r} has no committed checkpoint in {loc}")
        return {"mode": "latest", "location": loc, "checkpoint": ref}
    job = get_job(job_name)
    req = build_request(
        job_name,
        loc,
        steps=steps or job.checkpoint_every_steps,
        key_provider=key_provider,
        run_id=run_id,
    )
    if req.until_step is not None and resume_step(job_name, req.store_url, "auto") >= job.total_steps:
        ref = latest_ref(job_name, loc)
        return {"mode": "complete", "location": loc, "checkpoint": ref}
    result = run_training(backend, req, database=database, timeout_s=timeout_s)
    ref = result.get("checkpoint") or latest_ref(job_name, loc)
    return {
        "mode": "trained",
        "location": loc,
        "checkpoint": ref,
        "steps_run": result.get("steps_run"),
        "result": result,
    }
