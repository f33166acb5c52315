"""Analysing a cutover window: per side requests, errors, latencies and cost; one verdict per criterion.

:func:`analyse` compares the target with the source over one :class:`Window` (what the router
measured in ``interval_s`` wall seconds), one :class:`Verdict` per criterion of
:data:`~spotshift.serving.cutover_stages.CRITERIA`; a side with fewer than ``min_samples`` requests
gives no verdict (``passed`` None) for the criteria that need it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from spotshift.serving.cutover_stages import Stage, Thresholds


@dataclass
class Side:
    """What one side (source or target) did in a window."""

    requests: int = 0
    errors: int = 0
    tokens: float = 0.0
    cost_tokens: float = 0.0  # sum of tokens x the serving replica's USD per million tokens
    latencies_ms: list[float] = field(default_factory=list)

    def add(self, ms: float | None, ok: bool, tokens: float, usd_per_mtok: float) -> None:
        self.requests += 1
        if ok:
            if ms is not None:
                self.latencies_ms.append(ms)
            self.tokens += tokens
            self.cost_tokens += tokens * usd_per_mtok
        else:
            self.errors += 1

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def p99_ms(self) -> float | None:
        return percentile(self.latencies_ms, 99)

    @property
    def usd_per_mtok(self) -> float | None:
        return self.cost_tokens / self.tokens if self.tokens > 0 else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile, linear interpolation (numpy's default); None when empty."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class Window:
    """One analysis window as the router saw it (wall seconds ``started``..``ended``)."""

    started: float
    ended: float = 0.0
    source: Side = field(default_factory=Side)
    target: Side = field(default_factory=Side)
    mirrored: int = 0
    agreed: int = 0
    mirror_skipped: int = 0  # the target had no free capacity: not mirrored (never queued)
    transport_failures: int = 0  # replicas lost mid-request (retried elsewhere; not an error rate)
    first_mismatch: str = ""


@dataclass(frozen=True)
class Verdict:
    """One criterion over one window: ``passed`` None when the window had too little data."""

    criterion: str
    passed: bool | None
    value: float | None
    limit: float | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def analyse(window: Window, stage: Stage, plan_usd_per_mtok: float | None, th: Thresholds) -> list[Verdict]:
    """Compare the target with the source over ``window``; one verdict per criterion, in
    :data:`~spotshift.serving.cutover_stages.CRITERIA` order."""
    return [
        _latency(window, stage, th),
        _error_rate(window, th),
        _cost(window, plan_usd_per_mtok, th),
        _agreement(window, th),
    ]


def _latency(window: Window, stage: Stage, th: Thresholds) -> Verdict:
    """P99 regression of the target over the source (<= 10 % shadow, <= 15 % live, plus slack)."""
    s, t = window.source, window.target
    limit_rel = th.p99_shadow if stage.phase == "shadow" else th.p99_live
    sp, tp = s.p99_ms, t.p99_ms
    if (
        len(s.latencies_ms) < th.min_samples
        or len(t.latencies_ms) < th.min_samples
        or sp is None
        or tp is None
    ):
        return Verdict(
            "p99_latency",
            None,
            None,
            limit_rel,
            f"too few samples (source {len(s.latencies_ms)}, target {len(t.latencies_ms)}, need {th.min_samples})",
        )
    regression = (tp - sp) / sp if sp > 0 else 0.0
    ok = tp <= sp * (1 + limit_rel) + th.p99_slack_ms
    return Verdict(
        "p99_latency",
        ok,
        round(regression, 4),
        limit_rel,
        f"P99 target {tp:.1f} ms vs source {sp:.1f} ms ({regression:+.1%}; limit +{limit_rel:.0%} "
        f"+ {th.p99_slack_ms:g} ms)",
    )


def _error_rate(window: Window, th: Thresholds) -> Verdict:
    """Error-rate delta of the target over the source (<= ``error_rate_delta``)."""
    s, t = window.source, window.target
    if s.requests < th.min_samples or t.requests < th.min_samples:
        return Verdict(
            "error_rate",
            None,
            None,
            th.error_rate_delta,
            f"too few requests (source {s.requests}, target {t.requests}, need {th.min_samples})",
        )
    delta = (t.error_rate or 0.0) - (s.error_rate or 0.0)
    return Verdict(
        "error_rate",
        delta <= th.error_rate_delta,
        round(delta, 6),
        th.error_rate_delta,
        f"error rate target {t.errors}/{t.requests} vs source {s.errors}/{s.requests} (delta {delta:+.4f})",
    )


def _cost(window: Window, plan_usd_per_mtok: float | None, th: Thresholds) -> Verdict:
    """Target cost per million tokens at most ``cost_tolerance`` above the plan."""
    cost = window.target.usd_per_mtok
    if cost is None or plan_usd_per_mtok is None:
        return Verdict("cost_per_million_tokens", None, cost, plan_usd_per_mtok, "no target tokens")
    limit = plan_usd_per_mtok * (1 + th.cost_tolerance)
    src = window.source.usd_per_mtok
    return Verdict(
        "cost_per_million_tokens",
        cost <= limit + 1e-12,
        round(cost, 6),
        round(limit, 6),
        f"target {cost:.4f} USD/Mtok vs plan {plan_usd_per_mtok:.4f}"
        + (f", source {src:.4f}" if src is not None else ""),
    )


def _agreement(window: Window, th: Thresholds) -> Verdict:
    """Share of mirrored answers identical to the source's (>= ``min_agreement``)."""
    if window.mirrored == 0:
        return Verdict("output_agreement", None, None, th.min_agreement, "no mirrored answers")
    rate = window.agreed / window.mirrored
    detail = f"{window.agreed}/{window.mirrored} mirrored answers identical"
    if window.first_mismatch:
        detail += f"; first mismatch: {window.first_mismatch}"
    return Verdict("output_agreement", rate >= th.min_agreement, round(rate, 6), th.min_agreement, detail)
