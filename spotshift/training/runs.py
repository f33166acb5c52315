"""Training runs of declared jobs: build the request, start/resume, stop with a checkpoint, collect.

What the command line (``spotshift train``) and the Dagster op (``emergency_checkpoint``) call; they
stay thin. Moving the runs between locations: :mod:`spotshift.training.relocate`; the ``checkpoints``
asset's step: :mod:`spotshift.training.advance`. No heavy package at import time (the command line
imports this module lazily anyway).
"""

from __future__ import annotations

import os
import time
from typing import Any

from spotshift import registry, warehouse
from spotshift.checkpoint.format import latest_checkpoint, open_checkpoint, step_of
from spotshift.clock import load_clock, virtual_now
from spotshift.errors import ConfigError, NotFoundError, SpotshiftError
from spotshift.facts import ingest_facts
from spotshift.home import region_store_url
from spotshift.jobs import get_job
from spotshift.placement.inputs import decide_for_job, usage_for
from spotshift.placement.state import load_state
from spotshift.pools.site import site_admits
from spotshift.sync.store_url import open_store
from spotshift.training.backend import ComputeBackend, TrainerInfo, default_workdir
from spotshift.training.request import TrainRequest, job_train_config


def dataset_source(name: str) -> str:
    """The ``source`` of a registered dataset (``file://`` URL or local path)."""
    entry = registry.get("datasets", name)
    source = entry.get("source")
    if not isinstance(source, str) or not source:
        raise ConfigError(f"dataset {name!r} has no source")
    return source


def store_url_for(location: str) -> str:
    """The object store of a ``provider/region`` location (its local store on the embedded default)."""
    try:
        return region_store_url(location)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def build_request(
    job_name: str,
    location: str,
    *,
    resume: Any = "auto",
    until_step: int | None = None,
    steps: int | None = None,
    replicate_to: list[str] | None = None,
    key_provider: str | None = None,
    overrides: dict[str, Any] | None = None,
    usage: dict[str, Any] | None = None,
    run_id: str | None = None,
    workdir: str | None = None,
    min_step_seconds: float = 0.0,
    watchers: dict[str, str] | None = None,
    checkpoint_every_steps: int | None = None,
    command: list[str] | None = None,
) -> TrainRequest:
    """A training request for declared job ``job_name`` in ``location``.

    ``steps`` bounds the run to that many steps past the checkpoint it resumes from (resolved
    here, so the bound is absolute); ``until_step`` sets the absolute bound directly. ``command``
    runs that command under the wrapper instead of the built-in trainer (default: the job's
    declared ``command``, if any).
    """
    job = get_job(job_name)

    if not job.allows(location) and not site_admits(job, location):
        raise ConfigError(
            f"job {job_name!r} is not allowed in {location} (allowed: {', '.join(job.allowed_locations)})"
        )
    store_url = store_url_for(location)
    if steps is not None:
        if steps <= 0:
            raise ConfigError(f"--steps must be > 0, got {steps}")
        until_step = resume_step(job_name, store_url, resume) + steps
    config = job_train_config(job)
    if not usage:
        usage = usage_from_quotes(job, location)

    clock = load_clock()
    if min_step_seconds <= 0:
        min_step_seconds = clock.step_pace_seconds(job.hours_per_step)
    # the live trainer (no bound) paces on a stepped clock; bounded runs inside a run do not wait on it
    pace_on_clock = clock.paces_on_clock and until_step is None and job.hours_per_step > 0
    return TrainRequest(
        job=job.name,
        location=location,
        workdir=workdir or str(default_workdir(job.name, location)),
        store_url=store_url,
        dataset_source=dataset_source(job.dataset),
        config=config,
        resume=resume,
        until_step=until_step,
        checkpoint_every_steps=checkpoint_every_steps or job.checkpoint_every_steps,
        checkpoint_every_minutes=job.checkpoint_every_minutes,
        replica_urls=[store_url_for(loc) for loc in (replicate_to or []) if loc != location],
        key_provider=key_provider,
        watchers=watchers,
        overrides=dict(overrides or {}),
        min_step_seconds=min_step_seconds,
        hours_per_step=job.hours_per_step,
        pace_on_clock=pace_on_clock,
        usage=dict(usage or {}),
        run_id=run_id,
        command=command or job.argv,
        command_cwd=os.getcwd() if command else job.command_cwd,
    )


def usage_from_quotes(job: Any, location: str, *, database: Any = None) -> dict[str, Any]:
    """Price a trainer nobody priced (``spotshift train``, a shadow run): the job's current placement
    when it runs in ``location``, else the cheapest fitting quote there (empty without quotes)."""
    try:
        state = load_state(job.name)
        same = state.location == location
        with warehouse.connect(database) as con:
            return usage_for(
                con,
                job,
                location,
                market=state.market if same else None,
                instance_type=state.instance_type if same else None,
            )
    except SpotshiftError:
        return {}


def resume_step(job: str, store_url: str, resume: Any) -> int:
    """The step a request with this ``resume`` would start from (0 for a fresh start)."""
    if resume == "none":
        return 0
    if isinstance(resume, dict):
        ckpt = resume.get("checkpoint_id")
        if ckpt and ckpt != "latest":
            return step_of(ckpt)
        store_url = resume["store_url"]
    found = latest_checkpoint(open_store(store_url), job)
    return step_of(found) if found else 0


def collect(
    backend: ComputeBackend, name: str, *, timeout_s: float | None = None, database: Any = None
) -> dict[str, Any]:
    """Wait for a trainer, move its facts into the warehouse, return its result (facts written included)."""
    result = backend.wait(name, timeout_s=timeout_s)
    info = backend.status(name)
    if info is not None:
        result["facts_ingested"] = ingest_facts(info.workdir, database=database)
    return result


def watch_trainer(backend: Any, name: str, task: Any, *, poll_s: float = 0.5) -> None:
    """Report a running trainer's step and loss to a progress ``task`` until the trainer exits.

    ``task`` is a :class:`spotshift.progress.Task` (absolute steps; its total is the stop step).
    Returns when the process is gone; the result is collected by :func:`collect`.
    """
    while True:
        info = backend.status(name)
        last = backend.last_metrics(name) if hasattr(backend, "last_metrics") else None
        if last and "step" in last:
            loss = last.get("loss")
            task.update(completed=float(last["step"]), note=f"loss {loss:.4f}" if loss is not None else "")
        if info is None or not info.alive:
            return
        time.sleep(poll_s)


def run_training(
    backend: ComputeBackend,
    request: TrainRequest,
    *,
    wait: bool = True,
    timeout_s: float | None = None,
    database: Any = None,
) -> dict[str, Any] | TrainerInfo:
    """Start a trainer; with ``wait``, wait for it and return its result (failures raise)."""
    info = backend.start(request)
    if not wait:
        return info
    result = collect(backend, request.name, timeout_s=timeout_s, database=database)
    if result.get("status") == "failed":
        raise ConfigError(f"trainer of {request.job} in {request.location} failed: {result.get('error')}")
    return result


def current_location(job_name: str, database: Any = None) -> str:
    """Where the job's newest checkpoint was committed (warehouse), else its declared start location."""
    job = get_job(job_name)
    with warehouse.connect(database) as con:
        row = warehouse.first_row(
            con,
            "SELECT location FROM raw.checkpoints WHERE job = ? ORDER BY step DESC, created_at DESC LIMIT 1",
            [job_name],
        )
    if row and row[0]:
        return str(row[0])
    if job.start_location:
        return job.start_location
    raise ConfigError(f"job {job_name!r} has no checkpoint yet and no start_location: give a location")


def train_location(job_name: str, database: Any = None) -> tuple[str, dict[str, Any], str]:
    """Where ``spotshift train JOB`` runs when no ``--location`` is given: ``(location, usage, why)``.

    Where the job last checkpointed, else its declared ``start_location``, else where placement
    puts it now (the decision ``spotshift placement plan`` prints, on the latest validated quote
    snapshot); ``usage`` prices the interval at the placed quote (empty for the first two: the
    request prices them). :class:`ConfigError` with what to do when none applies.
    """
    try:
        return current_location(job_name, database), {}, "where the job last checkpointed or starts"
    except ConfigError:
        pass
    try:
        with warehouse.connect(database) as con:
            decision = decide_for_job(con, job_name, now=virtual_now())
            target = decision.target
            if target is None:
                raise ConfigError(
                    f"job {job_name!r}: placement queues it ({'; '.join(decision.reasons)}): give --location"
                )
            q = target.quote

            usage = usage_for(
                con, get_job(job_name), q.location, market=q.market, instance_type=q.instance_type
            )
    except NotFoundError as exc:
        raise ConfigError(
            f"job {job_name!r} has no checkpoint, no start_location and placement has no prices ({exc}): "
            "give --location PROVIDER/REGION"
        ) from None
    return q.location, usage, f"placed by `spotshift placement plan` ({q.market} {q.instance_type})"


def stop_with_checkpoint(
    backend: ComputeBackend,
    job_name: str,
    *,
    reason: str = "emergency_checkpoint",
    preemption: bool = False,
    timeout_s: float = 300.0,
    database: Any = None,
) -> dict[str, Any]:
    """Stop the job's live trainer at the next step boundary with a committed checkpoint, and return it.

    With no live trainer, return the newest committed checkpoint where the job last ran. The
    result has ``checkpoint`` (a checkpoint ref dict), ``location`` and ``stopped`` (bool).
    """
    info = backend.status(job_name)
    if info is not None and info.alive:
        backend.stop(job_name, reason=reason, preemption=preemption, wait=False)
        result = collect(backend, job_name, timeout_s=timeout_s, database=database)
        if result.get("status") == "failed":
            raise ConfigError(f"trainer of {job_name} failed while stopping: {result.get('error')}")
        ckpt = result.get("checkpoint") or result.get("resumed_from")
        if ckpt is None:
            raise NotFoundError(f"trainer of {job_name} stopped before its first checkpoint")
        return {"stopped": True, "location": info.location, "checkpoint": ckpt, "result": result}
    location = current_location(job_name, database)
    ref = latest_ref(job_name, location)
    if ref is None:
        raise NotFoundError(f"job {job_name!r} has no live trainer and no committed checkpoint in {location}")
    return {"stopped": False, "location": location, "checkpoint": ref}


def latest_ref(job_name: str, location: str) -> dict[str, Any] | None:
    """The newest committed checkpoint of a job in a location's store (as a ref dict), or None."""
    try:
        return open_checkpoint(open_store(store_url_for(location)), job_name).ref().to_dict()
    except NotFoundError:
        return None


def wait_for_exit(
    backend: ComputeBackend, job_name: str, *, location: str | None = None, timeout_s: float = 180.0
) -> bool:
    """Wait until the job's trainer (the one in ``location``, when given) has exited.

    A preempted trainer writes its notice right after its emergency checkpoint and exits a moment
    later; a recovery must not start the job elsewhere before that (one live trainer per job).
    Returns whether it had to wait; :class:`ConfigError` if it is still alive after ``timeout_s``.
    """
    info = backend.status(job_name)
    if info is None or not info.alive or (location is not None and info.location != location):
        return False
    backend.wait(job_name, timeout_s=timeout_s)
    return True
