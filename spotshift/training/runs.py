"""Training runs of declared jobs: build the request, start/resume, stop with a checkpoint, collect.

What the command line (``spotshift train``) and the Dagster assets (``checkpoints``,
``retrain_run``) and op (``emergency_checkpoint``) call; they stay thin. Standard library at import
time (the command line imports this module lazily anyway).
"""

from __future__ import annotations

import os
from typing import Any

from spotshift.errors import ConfigError, NotFoundError
from spotshift.training.backend import ComputeBackend, TrainerInfo, default_workdir
from spotshift.training.request import TrainRequest, job_train_config


def dataset_source(name: str) -> str:
    """The ``source`` of a registered dataset (``file://`` URL or local path)."""
    from spotshift import registry

    entry = registry.get("datasets", name)
    source = entry.get("source")
    if not isinstance(source, str) or not source:
        raise ConfigError(f"dataset {name!r} has no source")
    return source


def store_url_for(location: str) -> str:
    """The object store of a ``provider/region`` location (its local store on the embedded default)."""
    from spotshift.home import region_store_url

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
    from spotshift.jobs import get_job

    job = get_job(job_name)
    from spotshift.pools.site import site_admits

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
    from spotshift.clock import load_clock

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
    from spotshift import warehouse
    from spotshift.errors import SpotshiftError
    from spotshift.placement.inputs import usage_for
    from spotshift.placement.state import load_state

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
    from spotshift.checkpoint.format import latest_checkpoint, step_of
    from spotshift.sync.store_url import open_store

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
    from spotshift.facts import ingest_facts

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
    import time

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
    from spotshift import warehouse
    from spotshift.jobs import get_job

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
    from spotshift import warehouse
    from spotshift.clock import virtual_now
    from spotshift.errors import NotFoundError
    from spotshift.placement.inputs import decide_for_job, usage_for

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
            from spotshift.jobs import get_job

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
    from spotshift.checkpoint.format import open_checkpoint
    from spotshift.sync.store_url import open_store

    try:
        return open_checkpoint(open_store(store_url_for(location)), job_name).ref().to_dict()
    except NotFoundError:
        return None


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
    from spotshift.jobs import get_job

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
    from spotshift.checkpoint.migrate import migrate_checkpoint
    from spotshift.sync.store_url import open_store

    src_loc = source_location or current_location(job_name, database)
    if src_loc == region:
        from spotshift.checkpoint.format import open_checkpoint
        from spotshift.checkpoint.migrate import MigrationReport

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
    import time

    from spotshift.checkpoint.format import latest_checkpoint, step_of
    from spotshift.jobs import get_job
    from spotshift.sync.store_url import open_store

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
        while backend.progress(req.name) is None:
            if not backend.status(req.name).alive:  # type: ignore[union-attr]
                raise ConfigError(
                    f"trainer of {job_name} in {target} exited: {backend.wait(req.name).get('error')}"
                )
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                raise ConfigError(f"trainer of {job_name} in {target} took no step within {timeout_s:.0f}s")
            time.sleep(0.05)
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
    import time

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
        while backend.progress(req.name) is None:
            status = backend.status(req.name)
            if status is None or not status.alive:
                raise ConfigError(
                    f"trainer of {job_name} in {location} exited: {backend.wait(req.name).get('error')}"
                )
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                raise ConfigError(f"trainer of {job_name} in {location} took no step within {timeout_s:.0f}s")
            time.sleep(0.05)
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
