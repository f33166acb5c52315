"""Running a shadow pair: resume one checkpoint in the source and in the target as real trainer
processes (started by the :class:`ComputeBackend` in their locations, each from its own location's
copy of the same checkpoint), run both K steps and compare them with
:func:`spotshift.training.shadow.compare_runs` (the verdict rules live there).
"""

from __future__ import annotations

from typing import Any

from spotshift.checkpoint.format import checkpoint_prefix, open_checkpoint
from spotshift.errors import ConfigError
from spotshift.facts import ingest_facts
from spotshift.jobs import get_job
from spotshift.sync.store_url import open_store
from spotshift.training.backend import ComputeBackend, default_workdir
from spotshift.training.request import TrainRequest, job_train_config
from spotshift.training.runs import dataset_source, store_url_for, usage_from_quotes
from spotshift.training.shadow import ShadowComparison, ShadowThresholds, compare_runs


def _shadow_request(
    job: str,
    side: str,
    location: str,
    ckpt: Any,
    *,
    steps: int,
    overrides: dict[str, Any] | None,
    key_provider: str | None,
    run_id: str | None,
    usage: dict[str, Any] | None,
) -> TrainRequest:

    url = store_url_for(location)
    declared = get_job(job)
    # the built-in trainer's checkpoints carry its config; a Session's (your own command) do not
    cfg = ckpt.meta["state"].get("train_config") or job_train_config(declared)
    return TrainRequest(
        job=job,
        location=location,
        workdir=str(default_workdir(job, location, role="shadow", side=side)),
        store_url=url,
        dataset_source=dataset_source(cfg["dataset"]),
        config=cfg,
        resume={"store_url": url, "checkpoint_id": ckpt.checkpoint_id},
        role="shadow",
        shadow_steps=steps,
        shadow_side=side,
        overrides=dict(overrides or {}),
        key_provider=key_provider,
        watchers={},
        run_id=run_id,
        hours_per_step=declared.hours_per_step,
        usage=usage or usage_from_quotes(declared, location),
        command=declared.argv,
        command_cwd=declared.command_cwd,
    )


def _finish(backend: ComputeBackend, req: TrainRequest, timeout_s: float) -> dict[str, Any]:

    result = backend.wait(req.name, timeout_s=timeout_s)
    ingest_facts(req.workdir)
    if result.get("status") != "completed":
        raise ConfigError(
            f"shadow run ({req.shadow_side}, {req.location}) of {req.job} failed: {result.get('error')}"
        )
    return result["shadow"]


def _checkpoint_in(job: str, location: str, checkpoint_id: str | None) -> Any:
    """The checkpoint both sides resume (default: newest in ``location``'s store)."""
    return open_checkpoint(open_store(store_url_for(location)), job, checkpoint_id)


def _require_replica(job: str, location: str, ckpt: Any) -> None:

    if not open_store(store_url_for(location)).exists(checkpoint_prefix(job, ckpt.checkpoint_id) + "COMMIT"):
        raise ConfigError(
            f"{location} does not hold checkpoint {job}/{ckpt.checkpoint_id}: migrate it first (checkpoint_replicas)"
        )


def run_shadow_side(
    backend: ComputeBackend,
    job: str,
    *,
    side: str,
    location: str,
    steps: int,
    checkpoint_id: str,
    perturb: dict[str, Any] | None = None,
    key_provider: str | None = None,
    timeout_s: float = 600.0,
    run_id: str | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One side of a comparison: resume ``checkpoint_id`` from ``location``'s store there, run
    ``steps`` (with ``perturb`` overrides), and return the trainer's per-step statistics. Nothing is
    committed: a side never adds to the job's checkpoint lineage (so a failed target leaves nothing
    behind). The migration's probation run in the target is the target side."""
    if steps <= 0:
        raise ConfigError(f"shadow steps must be > 0, got {steps}")
    ckpt = _checkpoint_in(job, location, checkpoint_id)
    req = _shadow_request(
        job,
        side,
        location,
        ckpt,
        steps=steps,
        overrides=perturb,
        key_provider=key_provider,
        run_id=run_id,
        usage=usage,
    )
    backend.start(req)
    return {
        **_finish(backend, req, timeout_s),
        "resumed": ckpt.ref().to_dict(),
        "perturb": dict(perturb or {}),
    }


def run_shadow_validation(
    backend: ComputeBackend,
    job: str,
    *,
    source_location: str,
    target_location: str,
    steps: int,
    checkpoint_id: str | None = None,
    thresholds: ShadowThresholds | None = None,
    perturb: dict[str, Any] | None = None,
    key_provider: str | None = None,
    timeout_s: float = 600.0,
    run_id: str | None = None,
    usage: dict[str, dict[str, Any]] | None = None,
    target_result: dict[str, Any] | None = None,
) -> ShadowComparison:
    """Resume the checkpoint (default: newest in the source) on both sides, run ``steps``, compare.

    The target must already hold the same checkpoint (``checkpoint_replicas``); otherwise
    :class:`ConfigError` says so. ``usage`` (``{"source": {...}, "target": {...}}``) prices each
    side's ``raw.compute_usage`` interval; a side without one is priced from the latest quotes.
    ``target_result`` (from :func:`run_shadow_side`) is a target side that already ran — the
    migration's probation — so only the source side runs now.
    """
    if steps <= 0:
        raise ConfigError(f"shadow steps must be > 0, got {steps}")
    ckpt = _checkpoint_in(job, source_location, checkpoint_id)
    _require_replica(job, target_location, ckpt)
    if target_result is not None:
        resumed = target_result.get("resumed", {}).get("content_hash")
        if resumed != ckpt.content_hash:
            raise ConfigError(f"shadow of {job}: the target side resumed {resumed}, not {ckpt.checkpoint_id}")
        perturb = target_result.get("perturb") or perturb
    sides = [("source", source_location, {})] + (
        [] if target_result is not None else [("target", target_location, dict(perturb or {}))]
    )
    requests = [
        _shadow_request(
            job,
            side,
            location,
            ckpt,
            steps=steps,
            overrides=over,
            key_provider=key_provider,
            run_id=run_id,
            usage=(usage or {}).get(side),
        )
        for side, location, over in sides
    ]
    for req in requests:  # both sides at once when both run here
        backend.start(req)
    results = {req.shadow_side: _finish(backend, req, timeout_s) for req in requests}
    if target_result is not None:
        results["target"] = target_result
    return compare_runs(
        results["source"],
        results["target"],
        thresholds=thresholds or ShadowThresholds(),
        job=job,
        source_location=source_location,
        target_location=target_location,
        resumed=ckpt.ref().to_dict(),
        perturb=perturb,
    )
