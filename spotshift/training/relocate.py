"""Moving a job's training between locations: bring its newest checkpoint into a region's store
(:func:`replicate_latest`, what ``checkpoint_replicas`` does), resume it there for a bounded
probation or for the rest of the job (:func:`resume_in_target`, :func:`start_live`). The runs
themselves: :mod:`spotshift.training.runs`.
"""

from __future__ import annotations

import time
from typing import Any

from spotshift.checkpoint.format import latest_checkpoint, open_checkpoint, step_of
from spotshift.checkpoint.migrate import MigrationReport, migrate_checkpoint
from spotshift.errors import ConfigError
from spotshift.jobs import get_job
from spotshift.sync.store_url import open_store
from spotshift.training.backend import ComputeBackend
from spotshift.training.request import TrainRequest
from spotshift.training.runs import build_request, current_location, latest_ref, run_training, store_url_for


def replicate_latest(
    job_name: str,
    region: str,
    keys: Any,
    *,
    source_location: str | None = None,
    database: Any = None,
) -> Any:
    """What ``checkpoint_replicas`` does: bring the job's newest checkpoint into ``region``'s store.

    The source is where the job last checkpointed (or ``source_location``); returns the
    :class:`~spotshift.checkpoint.migrate.MigrationReport` (method ``present`` when nothing moved).
    """
    src_loc = source_location or current_location(job_name, database)
    if src_loc == region:
        ck = open_checkpoint(open_store(store_url_for(region)), job_name)
        return MigrationReport(
            job=job_name,
            checkpoint_id=ck.checkpoint_id,
            step=ck.step,
            content_hash=ck.content_hash,
            method="present",
            src_store=ck.store.url,
            dst_store=ck.store.url,
            src_location=region,
            dst_location=region,
            bytes_full=ck.stored_bytes,
            bytes_sent=0,
            seconds=0.0,
            notes=["the region is where the job checkpoints"],
        )
    return migrate_checkpoint(
        open_store(store_url_for(src_loc)),
        job_name,
        open_store(store_url_for(region)),
        keys,
        src_location=src_loc,
        dst_location=region,
    )


def resume_in_target(
    backend: ComputeBackend,
    job_name: str,
    target: str,
    *,
    steps: int | None = None,
    detach: bool = False,
    key_provider: str | None = None,
    run_id: str | None = None,
    database: Any = None,
    timeout_s: float | None = None,
    usage: dict[str, Any] | None = None,
    min_step_seconds: float = 0.0,
    accept_older: bool = False,
) -> dict[str, Any]:
    """What ``retrain_run`` does: resume the job in ``target`` from the checkpoint replicated there.

    ``accept_older`` resumes from the target's newest checkpoint even when a newer one exists
    elsewhere (a rollback discarding the steps a failed target made).
    ``usage`` (price_usd_hour, list_price_usd_hour, instance_type, market, gpu_model, gpu_count)
    prices the trainer's ``raw.compute_usage`` interval; ``min_step_seconds`` paces its steps.

    Refuses when the target's newest checkpoint is older than the job's newest anywhere (steps would
    be lost) or when a trainer of the job is live. Bounded (``steps``, default the job's cadence) and
    waited for; ``detach`` starts the rest of the job and returns once it has taken its first step.
    """
    job = get_job(job_name)
    source = current_location(job_name, database)
    newest = latest_ref(job_name, source)
    found = latest_checkpoint(open_store(store_url_for(target)), job_name)
    if found is None:
        raise ConfigError(
            f"{target} holds no checkpoint of {job_name!r}: materialize checkpoint_replicas for it first"
        )
    if newest is not None and step_of(found) < newest["step"] and not accept_older:
        raise ConfigError(
            f"{target} holds {job_name} step {step_of(found)} but {source} has step {newest['step']}: "
            "replicate the newest checkpoint first (checkpoint_replicas)"
        )
    req = build_request(
        job_name,
        target,
        resume={"store_url": store_url_for(target), "checkpoint_id": found},
        steps=None if detach else (steps or job.checkpoint_every_steps),
        key_provider=key_provider,
        run_id=run_id,
        usage=usage,
        min_step_seconds=min_step_seconds,
    )
    t0 = time.monotonic()
    out: dict[str, Any] = {"source_location": source, "target_location": target, "resumed_from": found}
    if detach:
        info = run_training(backend, req, wait=False)
        _wait_first_step(backend, req, t0, timeout_s)
        out.update({"mode": "detached", "pid": info.pid, "seconds_to_first_step": time.monotonic() - t0})  # type: ignore[union-attr]
        return out
    result = run_training(backend, req, database=database, timeout_s=timeout_s)
    out.update(
        {
            "mode": "trained",
            "checkpoint": result.get("checkpoint"),
            "steps_run": result.get("steps_run"),
            "step": result.get("step"),
            "seconds": time.monotonic() - t0,
            "result": result,
        }
    )
    return out


def start_live(
    backend: ComputeBackend,
    job_name: str,
    location: str,
    *,
    usage: dict[str, Any] | None = None,
    key_provider: str | None = None,
    run_id: str | None = None,
    database: Any = None,
    accept_older: bool = False,
    timeout_s: float | None = 600.0,
) -> dict[str, Any]:
    """Start the job's live trainer in ``location`` for the rest of the job: continuing from its
    newest checkpoint (which must be in ``location``'s store, see :func:`resume_in_target`), or from
    scratch when the job has never checkpointed. Returns once the trainer has taken its first step."""
    try:
        newest = latest_ref(job_name, current_location(job_name, database))
    except ConfigError:
        newest = None
    if newest is None and latest_ref(job_name, location) is None:
        req = build_request(
            job_name, location, resume="none", usage=usage, key_provider=key_provider, run_id=run_id
        )
        t0 = time.monotonic()
        info = run_training(backend, req, wait=False)
        _wait_first_step(backend, req, t0, timeout_s)
        return {
            "mode": "started",
            "target_location": location,
            "pid": info.pid,  # type: ignore[union-attr]
            "seconds_to_first_step": time.monotonic() - t0,
        }
    return resume_in_target(
        backend,
        job_name,
        location,
        detach=True,
        key_provider=key_provider,
        run_id=run_id,
        database=database,
        usage=usage,
        accept_older=accept_older,
        timeout_s=timeout_s,
    )


def _wait_first_step(backend: ComputeBackend, req: TrainRequest, t0: float, timeout_s: float | None) -> None:
    """Wait until the trainer started at ``t0`` (monotonic) for ``req`` has taken its first step;
    :class:`ConfigError` when it exits first or takes no step within ``timeout_s``."""
    while backend.progress(req.name) is None:
        status = backend.status(req.name)
        if status is None or not status.alive:
            raise ConfigError(
                f"trainer of {req.job} in {req.location} exited: {backend.wait(req.name).get('error')}"
            )
        if timeout_s is not None and time.monotonic() - t0 > timeout_s:
            raise ConfigError(f"trainer of {req.job} in {req.location} took no step within {timeout_s:.0f}s")
        time.sleep(0.05)
