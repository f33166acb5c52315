"""Shadow comparison: the verdict rules on two shadow runs (one checkpoint resumed in the source and
in the target, both run K steps). Running the pair: :mod:`spotshift.training.shadow_run`.

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

from spotshift.clock import virtual_now
from spotshift.errors import ConfigError

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
