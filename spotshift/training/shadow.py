"""Shadow comparison: resume one checkpoint in the source and in the target, run both K steps, compare.

Both sides are real trainer processes started by the :class:`ComputeBackend` in their locations,
each resuming from its own location's copy of the same checkpoint (same id, so same content). They
record per step: loss, gradient norm (before clipping) and per-layer activation statistics (mean,
std and max |x| of each block's output and of the final norm); and the checkpoint after K steps.

Compared (thresholds in :class:`ShadowThresholds`, defaults from DESIGN §3):

* loss curves — max absolute difference, must be <= ``max_loss_diff`` (0.01);
* gradient norms — max relative difference;
* activation statistics — max relative difference (the mean is compared relative to the
  layer's std, since a mean near zero has no useful relative scale);
* the resulting checkpoints — content hash (identical bits) and plaintext bytes. Identical bits
  are expected on identical hardware and software; across GPU models they are not, so by default
  this check warns instead of failing (``require_identical_checkpoint``).

A perturbation (``perturb``, e.g. ``{"learning_rate": 3e-3}``) is applied to the target side only:
this is how a deliberately failing validation is produced.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from spotshift.errors import ConfigError
from spotshift.training.backend import ComputeBackend, default_workdir
from spotshift.training.request import TrainRequest, job_train_config

#: roll back when the loss curves diverge by more than this (seed 000: "loss divergence > 0.01");
#: the one definition every default (run config, asset config, ``spotshift move``) reads
MAX_LOSS_DIFF = 0.01


@dataclass(frozen=True)
class ShadowThresholds:
    """Pass/fail limits of a shadow comparison."""

    max_loss_diff: float = MAX_LOSS_DIFF
    max_grad_norm_rel_diff: float = 0.05
    max_activation_rel_diff: float = 0.05
    require_identical_checkpoint: bool = False


@dataclass
class ShadowComparison:
    """The comparison of two shadow runs (what ``shadow_validation`` reports)."""

    validation_id: str
    job: str
    source_location: str
    target_location: str
    checkpoint_id: str  # content hash both sides resumed from
    checkpoint: str  # checkpoint id (s<step>-<hash>)
    steps: int
    max_loss_diff: float
    max_grad_norm_rel_diff: float
    max_activation_rel_diff: float
    checkpoint_bytes_equal: bool
    source_checkpoint_hash: str
    target_checkpoint_hash: str
    source_checkpoint_bytes: int
    target_checkpoint_bytes: int
    passed: bool
    reasons: list[str]
    thresholds: dict[str, Any]
    perturb: dict[str, Any] = field(default_factory=dict)
    source_losses: list[float] = field(default_factory=list)
    target_losses: list[float] = field(default_factory=list)
    validated_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ShadowComparison:
        """Inverse of :meth:`to_dict`; keys that are not fields (e.g. a recorded ``loss_curves``) are ignored."""
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in raw.items() if k in names})

    def row(self) -> dict[str, Any]:
        """The ``raw.shadow_validations`` row."""
        return {
            "validation_id": self.validation_id,
            "job": self.job,
            "source_location": self.source_location,
            "target_location": self.target_location,
            "checkpoint_id": self.checkpoint_id,
            "steps": self.steps,
            "max_loss_diff": self.max_loss_diff,
            "max_grad_norm_rel_diff": self.max_grad_norm_rel_diff,
            "max_activation_rel_diff": self.max_activation_rel_diff,
            "checkpoint_bytes_equal": self.checkpoint_bytes_equal,
            "passed": self.passed,
            "reasons": json.dumps(self.reasons),
            "validated_at": self.validated_at,
        }


def _rel(a: float, b: float, scale: float | None = None) -> float:
    if a == b:
        return 0.0
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    denom = scale if scale is not None else max(abs(a), abs(b))
    return abs(a - b) / max(denom, 1e-12)


def compare_runs(
    source: dict[str, Any],
    target: dict[str, Any],
    *,
    thresholds: ShadowThresholds,
    job: str,
    source_location: str,
    target_location: str,
    resumed: dict[str, Any],
    perturb: dict[str, Any] | None = None,
) -> ShadowComparison:
    """Compare the ``shadow`` sections of two trainer results."""
    from spotshift.clock import virtual_now

    a, b = source["steps"], target["steps"]
    if len(a) != len(b) or not a:
        raise ConfigError(f"shadow runs of {job} ran {len(a)} and {len(b)} steps: nothing to compare")
    loss_diff = max(
        abs(x["loss"] - y["loss"]) if math.isfinite(y["loss"]) else math.inf
        for x, y in zip(a, b, strict=True)
    )
    grad_diff = max(_rel(x["grad_norm"], y["grad_norm"]) for x, y in zip(a, b, strict=True))
    act_diff = 0.0
    for x, y in zip(a, b, strict=True):
        for layer, (mean_a, std_a, max_a) in x["activations"].items():
            mean_b, std_b, max_b = y["activations"].get(layer, (math.nan,) * 3)
            act_diff = max(
                act_diff,
                _rel(mean_a, mean_b, scale=max(abs(std_a), 1e-6)),
                _rel(std_a, std_b),
                _rel(max_a, max_b),
            )
    ca, cb = source["checkpoint"], target["checkpoint"]
    bytes_equal = ca["content_hash"] == cb["content_hash"] and ca["plain_bytes"] == cb["plain_bytes"]
    cmp = ShadowComparison(
        validation_id=str(uuid.uuid4()),
        job=job,
        source_location=source_location,
        target_location=target_location,
        checkpoint_id=resumed["content_hash"],
        checkpoint=resumed["checkpoint_id"],
        steps=len(a),
        max_loss_diff=_finite(loss_diff),
        max_grad_norm_rel_diff=_finite(grad_diff),
        max_activation_rel_diff=_finite(act_diff),
        checkpoint_bytes_equal=bytes_equal,
        source_checkpoint_hash=ca["content_hash"],
        target_checkpoint_hash=cb["content_hash"],
        source_checkpoint_bytes=int(ca["plain_bytes"]),
        target_checkpoint_bytes=int(cb["plain_bytes"]),
        passed=False,
        reasons=[],
        thresholds=asdict(thresholds),
        perturb=dict(perturb or {}),
        source_losses=[x["loss"] for x in a],
        target_losses=[y["loss"] for y in b],
        validated_at=virtual_now().isoformat(),
    )
    blocked = [v for v in verdicts(cmp) if not v.passed and v.blocking]
    cmp.passed, cmp.reasons = not blocked, [v.reason for v in blocked]
    return cmp


def _finite(x: float) -> float:
    return x if math.isfinite(x) else 1e300


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
    from spotshift.jobs import get_job
    from spotshift.training.runs import dataset_source, store_url_for, usage_from_quotes

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
    from spotshift.facts import ingest_facts

    result = backend.wait(req.name, timeout_s=timeout_s)
    ingest_facts(req.workdir)
    if result.get("status") != "completed":
        raise ConfigError(
            f"shadow run ({req.shadow_side}, {req.location}) of {req.job} failed: {result.get('error')}"
        )
    return result["shadow"]


def _checkpoint_in(job: str, location: str, checkpoint_id: str | None) -> Any:
    """The checkpoint both sides resume (default: newest in ``location``'s store)."""
    from spotshift.checkpoint.format import open_checkpoint
    from spotshift.sync.store_url import open_store
    from spotshift.training.runs import store_url_for

    return open_checkpoint(open_store(store_url_for(location)), job, checkpoint_id)


def _require_replica(job: str, location: str, ckpt: Any) -> None:
    from spotshift.checkpoint.format import checkpoint_prefix
    from spotshift.sync.store_url import open_store
    from spotshift.training.runs import store_url_for

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


@dataclass(frozen=True)
class ShadowVerdict:
    """One rule applied to a comparison. ``blocking``: a failure stops the move (else it warns)."""

    name: str
    passed: bool
    blocking: bool
    description: str
    reason: str  # why it failed, for ``ShadowComparison.reasons``
    # the measured values and their limit as numbers (the UI plots them across migrations)
    measured: dict[str, float] = field(default_factory=dict)


def _within(value: float, limit: float) -> bool:
    # written so that NaN fails: a comparison with NaN is never within a limit
    return bool(value <= limit)


def verdicts(cmp: ShadowComparison) -> list[ShadowVerdict]:
    """The shadow rules, the only place they are written (the comparison's ``passed``/``reasons``,
    the asset checks of ``shadow_validation`` and the move's gate all read them):
    ``loss_divergence``, ``grad_norms`` and ``activations`` block; ``checkpoint_bytes`` blocks only
    when the thresholds require identical checkpoints, else it warns."""
    thr = ShadowThresholds(**cmp.thresholds)
    loss, grad, act = cmp.max_loss_diff, cmp.max_grad_norm_rel_diff, cmp.max_activation_rel_diff
    return [
        ShadowVerdict(
            "loss_divergence",
            _within(loss, thr.max_loss_diff),
            True,
            f"max |loss diff| {loss:.3g} over {cmp.steps} steps (limit {thr.max_loss_diff})",
            f"loss divergence {loss:.4g} > {thr.max_loss_diff}",
            {"max_loss_diff": float(loss), "limit": float(thr.max_loss_diff)},
        ),
        ShadowVerdict(
            "grad_norms",
            _within(grad, thr.max_grad_norm_rel_diff),
            True,
            f"max relative grad-norm diff {grad:.3g} (limit {thr.max_grad_norm_rel_diff})",
            f"gradient-norm difference {grad:.4g} > {thr.max_grad_norm_rel_diff}",
            {"max_grad_norm_rel_diff": float(grad), "limit": float(thr.max_grad_norm_rel_diff)},
        ),
        ShadowVerdict(
            "activations",
            _within(act, thr.max_activation_rel_diff),
            True,
            f"max relative activation-statistic diff {act:.3g} (limit {thr.max_activation_rel_diff})",
            f"activation-statistics difference {act:.4g} > {thr.max_activation_rel_diff}",
            {"max_activation_rel_diff": float(act), "limit": float(thr.max_activation_rel_diff)},
        ),
        ShadowVerdict(
            "checkpoint_bytes",
            bool(cmp.checkpoint_bytes_equal),
            thr.require_identical_checkpoint,
            f"resulting checkpoints: source {cmp.source_checkpoint_hash[:16]} ({cmp.source_checkpoint_bytes} "
            f"bytes), target {cmp.target_checkpoint_hash[:16]} ({cmp.target_checkpoint_bytes} bytes)",
            "resulting checkpoints differ",
            {
                "checkpoint_bytes_equal": 1.0 if cmp.checkpoint_bytes_equal else 0.0,
                "source_checkpoint_bytes": float(cmp.source_checkpoint_bytes),
                "target_checkpoint_bytes": float(cmp.target_checkpoint_bytes),
            },
        ),
    ]
