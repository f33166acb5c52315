"""Gradual cutover of an inference endpoint: shadow traffic, staged weights, automatic rollback, failback.

An endpoint moves to a target location (``provider/region``, optionally a new checkpoint) in two
phases, each a list of :class:`Stage` held for a time on the virtual clock (:mod:`spotshift.clock`):

* **shadow** (002 playbook: 5 % for 48 h, then +10 % steps to 50 %, 24 h each by default): the router
  mirrors ``percent`` of live requests to the target; the target's answers are compared with the
  source's (greedy decoding: the same prompt must give the same tokens) and its latency measured,
  and never returned to anyone.
* **live** (seed 000: ``(5, 24), (25, 48), (50, 72), (100, 0)`` in percent and hours): the target
  gets ``percent`` of live requests. Entering the last stage with hold 0 is the promotion.

Every ``interval_s`` wall seconds the router closes an analysis window (:class:`Window`: per side
requests, errors, latencies, token-weighted cost; mirrored answers agreeing or not) and
:func:`analyse` compares the target with the source over it, one :class:`Verdict` per criterion
(:data:`CRITERIA`): P99 latency regression (<= 10 % in shadow, <= 15 % live, plus
``p99_slack_ms`` of measurement noise), error-rate delta (<= 0.001), cost per million tokens
against the plan (<= ``cost_tolerance`` above it) and output agreement on the mirrored share
(>= ``min_agreement``, default every answer identical). A side with fewer than ``min_samples``
requests in a window gives no verdict for the criteria that need it. :func:`decide` folds the
verdicts into the :class:`CutoverState`: a failed criterion rolls back at once (target weight 0,
the reason recorded); a stage whose hold has passed on the virtual clock advances to the next at its
next passing window (latency and error rate judged and passed, cost and agreement passed or without
data in that window) when none failed; :func:`advance_if_due` (the Dagster sensor, ``cutover
status``) also advances one whose hold passed after a passing window.

The state lives in ``$SPOTSHIFT_HOME/serving/<endpoint>/cutover.json`` (:func:`state_path`),
written under an exclusive lock with temp name + rename (:func:`update_state`), so the router
(which re-reads it every second and resumes at its weights after a restart), the command line and
the Dagster sensor never see half a file or lose each other's change.

After promotion the source stays warm at ``source_floor`` replicas for the failback window
(default 7 days): :func:`failback` puts 100 % back on the source in one step; once the window has
passed :func:`decommission_if_due` records the source decommissioned and the replica-hours the floor
saved over keeping the whole source fleet. :func:`replica_plan` sizes both sides per stage so the
total never exceeds ``max_fleet_ratio`` (1.25) x the steady state, mirrored traffic included.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from spotshift.atomic import atomic_write_json
from spotshift.errors import ConfigError, NotFoundError, check_range
from spotshift.serving import replica_api as api

DEFAULT_STAGES = "5:24h,25:48h,50:72h,100:0"  # seed 000 GradualMigrationController
DEFAULT_SHADOW = "5:48h,15:24h,25:24h,35:24h,45:24h,50:24h"  # 002: 5 % for 48 h, then +10 % steps to 50 %
FIRST_SHADOW_HOLD_H = 48.0  # a bare shadow share: the first is held 48 h (002), the others 24 h
NEXT_SHADOW_HOLD_H = 24.0
DEFAULT_INTERVAL_S = 60.0
DEFAULT_FAILBACK_DAYS = 7.0  # 002: source on standby 7 days
DEFAULT_SOURCE_FLOOR = 1
MAX_FLEET_RATIO = 1.25
LIVE_MIRROR_SHARE = 0.05  # live phase: share of source-served requests still mirrored (output agreement)
MAX_WINDOWS = 500  # analysis windows kept in the state file (older ones are summarised in stage rows)

CRITERIA = ("p99_latency", "error_rate", "cost_per_million_tokens", "output_agreement")
PHASES = ("shadow", "live", "promoted", "rolled_back", "failed_back", "decommissioned")
ACTIVE_PHASES = ("shadow", "live")
STATE_FILE = "cutover.json"


@dataclass(frozen=True)
class Stage:
    """One step of a cutover: ``percent`` of live traffic (mirrored in shadow, routed live) for
    ``hold_s`` virtual seconds."""

    phase: str
    percent: float
    hold_s: float

    @property
    def share(self) -> float:
        return self.percent / 100.0

    @property
    def label(self) -> str:
        """``shadow-5`` / ``live-25``: the stage's name in run keys and rows."""
        return f"{self.phase}-{self.percent:g}"


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "": 3600.0}


def parse_duration_s(text: str, what: str) -> float:
    """``24h``/``90m``/``30s``/``2d``/``0`` (a bare number is hours) in seconds; ConfigError otherwise."""
    m = _DURATION.match(text.strip().lower())
    if not m:
        raise ConfigError(f"{what}: {text!r} is not a duration (like 24h, 90m, 30s, 2d or 0)")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def parse_stages(text: str, phase: str, what: str) -> tuple[Stage, ...]:
    """``5:24h,25:48h,50:72h,100:0`` as stages (percent in (0, 100], strictly increasing).

    Shadow stages may omit the hold (``5,15,25``): the first is held 48 h, the others 24 h.
    ``none`` (shadow only): no shadow phase. Live stages must end at 100 %.
    """
    text = text.strip()
    if phase == "shadow" and text.lower() in ("", "none", "0"):
        return ()
    out: list[Stage] = []
    for i, part in enumerate(p.strip() for p in text.split(",")):
        pct_text, sep, hold_text = part.partition(":")
        try:
            pct = float(pct_text)
        except ValueError:
            raise ConfigError(f"{what}: {part!r} is not PERCENT[:HOLD] (like 25:48h)") from None
        check_range(pct, f"{what}: percent {pct_text}", low=0, high=100)
        if sep:
            hold = parse_duration_s(hold_text, f"{what} {part}")
        elif phase == "shadow":
            hold = (FIRST_SHADOW_HOLD_H if i == 0 else NEXT_SHADOW_HOLD_H) * 3600.0
        else:
            raise ConfigError(f"{what}: {part!r} has no hold time (like {pct_text}:24h)")
        if out and pct <= out[-1].percent:
            raise ConfigError(f"{what}: percentages must increase ({out[-1].percent:g} then {pct:g})")
        out.append(Stage(phase, pct, hold))
    if phase == "live" and (not out or out[-1].percent != 100):
        raise ConfigError(f"{what}: the last live stage must be 100 (like 100:0)")
    return tuple(out)


@dataclass(frozen=True)
class Thresholds:
    """When the target fails an analysis window (module docstring)."""

    p99_shadow: float = 0.10  # 002: shadow P99 within 10 % of the source
    p99_live: float = 0.15  # seed 000: latency regression > 15 % rolls back
    p99_slack_ms: float = 5.0  # regressions below this many ms are measurement noise
    error_rate_delta: float = 0.001  # seed 000
    cost_tolerance: float = 0.05  # target cost per million tokens at most 5 % above the plan
    min_agreement: float = 1.0  # greedy decoding: every mirrored answer identical
    min_samples: int = 20  # per side and window, for latency and error rate

    def __post_init__(self) -> None:
        for name in ("p99_shadow", "p99_live", "error_rate_delta", "cost_tolerance"):
            check_range(getattr(self, name), name, low=0, high=100, low_inclusive=True)
        check_range(self.p99_slack_ms, "p99_slack_ms", low=0, high=1e6, low_inclusive=True)
        check_range(self.min_agreement, "min_agreement", low=0, high=1, low_inclusive=True)
        check_range(self.min_samples, "min_samples", low=1, high=1e9, low_inclusive=True, integer=True)


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
    """Compare the target with the source over ``window`` (module docstring); one verdict per criterion."""
    s, t = window.source, window.target
    out: list[Verdict] = []
    limit_rel = th.p99_shadow if stage.phase == "shadow" else th.p99_live
    sp, tp = s.p99_ms, t.p99_ms
    if (
        len(s.latencies_ms) < th.min_samples
        or len(t.latencies_ms) < th.min_samples
        or sp is None
        or tp is None
    ):
        out.append(
            Verdict(
                "p99_latency",
                None,
                None,
                limit_rel,
                f"too few samples (source {len(s.latencies_ms)}, target {len(t.latencies_ms)}, need {th.min_samples})",
            )
        )
    else:
        regression = (tp - sp) / sp if sp > 0 else 0.0
        ok = tp <= sp * (1 + limit_rel) + th.p99_slack_ms
        out.append(
            Verdict(
                "p99_latency",
                ok,
                round(regression, 4),
                limit_rel,
                f"P99 target {tp:.1f} ms vs source {sp:.1f} ms ({regression:+.1%}; limit +{limit_rel:.0%} "
                f"+ {th.p99_slack_ms:g} ms)",
            )
        )
    if s.requests < th.min_samples or t.requests < th.min_samples:
        out.append(
            Verdict(
                "error_rate",
                None,
                None,
                th.error_rate_delta,
                f"too few requests (source {s.requests}, target {t.requests}, need {th.min_samples})",
            )
        )
    else:
        delta = (t.error_rate or 0.0) - (s.error_rate or 0.0)
        out.append(
            Verdict(
                "error_rate",
                delta <= th.error_rate_delta,
                round(delta, 6),
                th.error_rate_delta,
                f"error rate target {t.errors}/{t.requests} vs source {s.errors}/{s.requests} (delta {delta:+.4f})",
            )
        )
    cost = t.usd_per_mtok
    if cost is None or plan_usd_per_mtok is None:
        out.append(Verdict("cost_per_million_tokens", None, cost, plan_usd_per_mtok, "no target tokens"))
    else:
        limit = plan_usd_per_mtok * (1 + th.cost_tolerance)
        src = s.usd_per_mtok
        out.append(
            Verdict(
                "cost_per_million_tokens",
                cost <= limit + 1e-12,
                round(cost, 6),
                round(limit, 6),
                f"target {cost:.4f} USD/Mtok vs plan {plan_usd_per_mtok:.4f}"
                + (f", source {src:.4f}" if src is not None else ""),
            )
        )
    if window.mirrored == 0:
        out.append(Verdict("output_agreement", None, None, th.min_agreement, "no mirrored answers"))
    else:
        rate = window.agreed / window.mirrored
        detail = f"{window.agreed}/{window.mirrored} mirrored answers identical"
        if window.first_mismatch:
            detail += f"; first mismatch: {window.first_mismatch}"
        out.append(
            Verdict("output_agreement", rate >= th.min_agreement, round(rate, 6), th.min_agreement, detail)
        )
    return out


@dataclass
class CutoverState:
    """A cutover as persisted (module docstring). ``stage`` indexes ``shadow + live``."""

    cutover_id: str
    endpoint: str
    to_location: str
    market: str
    model: str
    source_locations: list[str]
    shadow: list[Stage]
    live: list[Stage]
    thresholds: Thresholds
    interval_s: float
    plan_usd_per_mtok: float | None
    source_usd_per_mtok: float | None
    steady_replicas: int
    source_floor: int
    failback_s: float
    started_at: str  # virtual, ISO
    phase: str = "shadow"
    stage: int = 0
    stage_started_at: str = ""
    stage_passed_windows: int = 0
    target_weight: float = 0.0
    mirror_share: float = 0.0
    reason: str = ""
    failed_criterion: str = ""
    rolled_back_at_stage: str = ""
    promoted_at: str = ""
    failback_until: str = ""
    ended_at: str = ""
    replica_hours_saved: float | None = None
    version: int = 0  # bumped on every write: the router reloads on change
    windows: list[dict[str, Any]] = field(default_factory=list)
    stage_rows: list[dict[str, Any]] = field(default_factory=list)  # raw.cutovers rows (recorded once)

    @property
    def stages(self) -> list[Stage]:
        return [*self.shadow, *self.live]

    @property
    def current(self) -> Stage | None:
        return self.stages[self.stage] if 0 <= self.stage < len(self.stages) else None

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE_PHASES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CutoverState:
        f = dict(raw)
        f["shadow"] = [Stage(**s) for s in f["shadow"]]
        f["live"] = [Stage(**s) for s in f["live"]]
        f["thresholds"] = Thresholds(**f["thresholds"])
        return cls(**f)


def state_path(endpoint: str) -> Path:
    """``$SPOTSHIFT_HOME/serving/<endpoint>/cutover.json``."""
    return api.registry_path(endpoint).with_name(STATE_FILE)


def load_state(endpoint: str) -> CutoverState | None:
    """The endpoint's cutover (the last one), or None when it never had one."""
    p = state_path(endpoint)
    try:
        raw = json.loads(p.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        raise ConfigError(f"{p}: not a cutover state file") from None
    try:
        return CutoverState.from_dict(raw)
    except (KeyError, TypeError, ConfigError) as exc:
        raise ConfigError(f"{p}: not a cutover state file ({type(exc).__name__})") from None


def require_state(endpoint: str) -> CutoverState:
    """:func:`load_state`, or NotFoundError naming the endpoint."""
    st = load_state(endpoint)
    if st is None:
        raise NotFoundError(
            f"endpoint {endpoint!r} has no cutover (spotshift cutover start {endpoint} --to ...)"
        )
    return st


def save_state(state: CutoverState) -> CutoverState:
    """Write ``state`` atomically (temp + rename), version bumped. Callers hold the lock
    (:func:`update_state`) or own the file."""
    state.version += 1
    if len(state.windows) > MAX_WINDOWS:
        del state.windows[: len(state.windows) - MAX_WINDOWS]
    atomic_write_json(state_path(state.endpoint), state.to_dict())
    return state


def update_state(endpoint: str, change: Callable[[CutoverState], CutoverState | None]) -> CutoverState:
    """Read-modify-write under the endpoint's cutover lock; ``change`` returns the new state (or
    None: nothing to write). Returns the state as it now is."""
    from spotshift.registry import locked

    with locked(state_path(endpoint)):
        st = require_state(endpoint)
        new = change(st)
        return save_state(new) if new is not None else st


def new_cutover_id() -> str:
    return "co-" + secrets.token_hex(4)


def replica_plan(
    state_or_steady: CutoverState | int,
    stage: Stage | None = None,
    *,
    phase: str | None = None,
    floor: int = DEFAULT_SOURCE_FLOOR,
    max_ratio: float = MAX_FLEET_RATIO,
) -> dict[str, int]:
    """Replicas per side for a stage: the target sized for its routed + mirrored share, the source
    for the rest (never below ``floor``), the total capped at ``floor(max_ratio x steady)`` (at least
    steady + 1, so a target replica fits at all) by shrinking the side that has the smaller share.

    ``phase`` ``promoted``: target = steady, source = floor; ``rolled_back``/``failed_back``: source =
    steady, target 0.
    """
    if isinstance(state_or_steady, CutoverState):
        st = state_or_steady
        steady, floor, stage, phase = st.steady_replicas, st.source_floor, st.current, phase or st.phase
    else:
        steady = state_or_steady
    steady = max(1, int(steady))
    cap = fleet_cap(steady, max_ratio)
    if phase == "promoted":
        return {"source": min(floor, cap - steady), "target": steady}
    if phase in ("rolled_back", "failed_back"):
        return {"source": steady, "target": 0}
    if phase == "decommissioned":
        return {"source": 0, "target": steady}
    if stage is None:
        return {"source": steady, "target": 0}
    if stage.phase == "shadow":
        mirrored = math.ceil(steady * stage.share - 1e-9)
        target = max(1, min(mirrored, cap - steady))
        return {"source": steady, "target": target}
    weight = stage.share
    target = max(1, math.ceil(steady * (weight + LIVE_MIRROR_SHARE * (1 - weight)) - 1e-9))
    source = max(floor, math.ceil(steady * (1 - weight) - 1e-9)) if weight < 1 else floor
    if source + target > cap:
        if weight >= 0.5:
            target = max(1, cap - source)
        else:
            source = max(floor, cap - target)
    return {"source": source, "target": target}


def fleet_cap(steady: int, max_ratio: float = MAX_FLEET_RATIO) -> int:
    """Most replicas a cutover may run at once: ``floor(max_ratio x steady)``, at least steady + 1."""
    steady = max(1, int(steady))
    return max(int(math.floor(max_ratio * steady + 1e-9)), steady + 1)


def _iso(dt: datetime) -> str:
    return dt.isoformat()


def _parse(text: str) -> datetime:
    from spotshift.clock import parse_utc

    return parse_utc(text)


def enter_stage(state: CutoverState, index: int, now: datetime) -> CutoverState:
    """``state`` at stage ``index`` from ``now``: weights of that stage; the last live stage with
    hold 0 promotes (target 100 %, the failback window opens)."""
    stages = state.stages
    st = replace(state, stage=index, stage_started_at=_iso(now), stage_passed_windows=0)
    stage = stages[index]
    if stage.phase == "shadow":
        st.phase, st.target_weight, st.mirror_share = "shadow", 0.0, stage.share
    else:
        st.phase, st.target_weight, st.mirror_share = "live", stage.share, LIVE_MIRROR_SHARE
    if index == len(stages) - 1 and stage.hold_s <= 0:
        st.phase, st.target_weight, st.mirror_share = "promoted", 1.0, 0.0
        st.promoted_at = _iso(now)
        st.failback_until = _iso(now + timedelta(seconds=state.failback_s))
        st.stage_rows = [*st.stage_rows, stage_row(st, stage, "promoted", now, [])]
    return st


def _stage_windows(state: CutoverState) -> list[dict[str, Any]]:
    return [
        w for w in state.windows if w.get("stage") == state.stage and w.get("cutover_id") == state.cutover_id
    ]


def stage_row(
    state: CutoverState, stage: Stage, status: str, now: datetime, windows: list[dict[str, Any]]
) -> dict[str, Any]:
    """The ``raw.cutovers`` row of one stage: its windows' figures summed (latency: the worst window)."""

    def total(side: str, key: str) -> float:
        return float(sum(w[side][key] for w in windows))

    def worst(side: str) -> float | None:
        vals = [w[side]["p99_ms"] for w in windows if w[side]["p99_ms"] is not None]
        return max(vals) if vals else None

    def cpm(side: str) -> float | None:
        tok = total(side, "tokens")
        return total(side, "cost_tokens") / tok if tok > 0 else None

    s_req, t_req = total("source", "requests"), total("target", "requests")
    s_err, t_err = total("source", "errors"), total("target", "errors")
    mirrored, agreed = sum(w["mirrored"] for w in windows), sum(w["agreed"] for w in windows)
    return {
        "cutover_id": state.cutover_id,
        "endpoint": state.endpoint,
        "stage_index": state.stages.index(stage) if stage in state.stages else -1,
        "stage": stage.label,
        "phase": stage.phase,
        "percent": stage.percent,
        "from_locations": ",".join(state.source_locations),
        "to_location": state.to_location,
        "status": status,
        "started_at": state.stage_started_at or _iso(now),
        "ended_at": _iso(now),
        "windows": len(windows),
        "source_requests": int(s_req),
        "target_requests": int(t_req),
        "source_p99_ms": worst("source"),
        "target_p99_ms": worst("target"),
        "source_error_rate": s_err / s_req if s_req else None,
        "target_error_rate": t_err / t_req if t_req else None,
        "source_usd_per_mtok": cpm("source") if windows else state.source_usd_per_mtok,
        "target_usd_per_mtok": cpm("target") if windows else state.plan_usd_per_mtok,
        "plan_usd_per_mtok": state.plan_usd_per_mtok,
        "mirrored": int(mirrored),
        "agreement": agreed / mirrored if mirrored else None,
        "reason": state.reason if status == "rolled_back" else "",
        "replica_hours_saved": state.replica_hours_saved,
    }


def window_doc(state: CutoverState, window: Window, verdicts: list[Verdict]) -> dict[str, Any]:
    """The JSON form of an analysed window kept in the state file."""

    def side(s: Side) -> dict[str, Any]:
        return {
            "requests": s.requests,
            "errors": s.errors,
            "tokens": s.tokens,
            "cost_tokens": s.cost_tokens,
            "p99_ms": None if s.p99_ms is None else round(s.p99_ms, 3),
            "samples": len(s.latencies_ms),
        }

    return {
        "cutover_id": state.cutover_id,
        "stage": state.stage,
        "stage_label": state.current.label if state.current else "",
        "started": window.started,
        "ended": window.ended,
        "source": side(window.source),
        "target": side(window.target),
        "mirrored": window.mirrored,
        "agreed": window.agreed,
        "mirror_skipped": window.mirror_skipped,
        "transport_failures": window.transport_failures,
        "verdicts": [v.to_dict() for v in verdicts],
    }


def roll_back(state: CutoverState, now: datetime, reason: str, criterion: str = "") -> CutoverState:
    """Target weight 0 and no mirroring, at once; the reason recorded with the stage it happened in."""
    if state.phase not in ACTIVE_PHASES:
        return state
    stage = state.current
    st = replace(
        state,
        phase="rolled_back",
        target_weight=0.0,
        mirror_share=0.0,
        reason=reason[:500],
        failed_criterion=criterion,
        rolled_back_at_stage=stage.label if stage else "",
        ended_at=_iso(now),
    )
    if stage is not None:
        st.stage_rows = [*st.stage_rows, stage_row(st, stage, "rolled_back", now, _stage_windows(st))]
    return st


def decide(state: CutoverState, window: Window, now: datetime) -> CutoverState:
    """Fold one analysed window into ``state`` (module docstring): roll back on a failed criterion,
    advance a stage whose hold passed with a passing window and none failing."""
    if not state.active or state.current is None:
        return state
    stage = state.current
    verdicts = analyse(window, stage, state.plan_usd_per_mtok, state.thresholds)
    st = replace(state, windows=[*state.windows, window_doc(state, window, verdicts)])
    failed = [v for v in verdicts if v.passed is False]
    if failed:
        why = "; ".join(f"{v.criterion}: {v.detail}" for v in failed)
        return roll_back(st, now, f"{stage.label} failed {why}", failed[0].criterion)
    judged = {v.criterion: v.passed for v in verdicts}
    if not (judged["p99_latency"] and judged["error_rate"]):  # too little data: judge nothing, move nothing
        return st
    st.stage_passed_windows += 1  # latency and errors passed, cost and agreement passed or had no data
    return advance_if_due(st, now)


def advance_if_due(state: CutoverState, now: datetime) -> CutoverState:
    """Next stage when the current one's hold has passed on the virtual clock and a window passed."""
    stage = state.current
    if not state.active or stage is None or state.stage_passed_windows < 1:
        return state
    if now < _parse(state.stage_started_at) + timedelta(seconds=stage.hold_s):
        return state
    done = replace(
        state, stage_rows=[*state.stage_rows, stage_row(state, stage, "passed", now, _stage_windows(state))]
    )
    return enter_stage(done, state.stage + 1, now)


def failback(state: CutoverState, now: datetime) -> CutoverState:
    """100 % back on the source in one step, within the failback window (or during the cutover)."""
    if state.phase in ACTIVE_PHASES:
        return roll_back(state, now, "failback requested during the cutover", "")
    if state.phase != "promoted":
        raise ConfigError(
            f"cutover {state.cutover_id} of {state.endpoint} is {state.phase}: nothing to fail back"
        )
    if now > _parse(state.failback_until):
        raise ConfigError(
            f"cutover {state.cutover_id} of {state.endpoint}: the failback window closed at {state.failback_until}"
        )
    last = state.stages[-1]
    st = replace(
        state,
        phase="failed_back",
        target_weight=0.0,
        mirror_share=0.0,
        ended_at=_iso(now),
        reason="failback requested",
    )
    st.stage_rows = [*st.stage_rows, stage_row(st, last, "failed_back", now, [])]
    return st


def decommission_if_due(state: CutoverState, now: datetime) -> CutoverState:
    """After the failback window of a promoted cutover: the source decommissioned, and the
    replica-hours its floor saved over keeping the steady source fleet warm recorded."""
    if state.phase != "promoted" or now <= _parse(state.failback_until):
        return state
    hours = state.failback_s / 3600.0
    saved = max(0, state.steady_replicas - state.source_floor) * hours
    st = replace(state, phase="decommissioned", ended_at=_iso(now), replica_hours_saved=round(saved, 3))
    st.stage_rows = [*st.stage_rows, stage_row(st, state.stages[-1], "decommissioned", now, [])]
    return st


def start_state(
    endpoint: str,
    *,
    to_location: str,
    market: str,
    model: str,
    source_locations: list[str],
    shadow: Sequence[Stage],
    live: Sequence[Stage],
    thresholds: Thresholds,
    interval_s: float,
    plan_usd_per_mtok: float | None,
    source_usd_per_mtok: float | None,
    steady_replicas: int,
    source_floor: int,
    failback_s: float,
    now: datetime,
) -> CutoverState:
    """A new cutover at its first stage."""
    check_range(interval_s, "--interval-seconds", low=0, high=86400)
    check_range(steady_replicas, "steady replicas", low=1, high=1e6, low_inclusive=True, integer=True)
    check_range(source_floor, "--source-floor", low=0, high=1e6, low_inclusive=True, integer=True)
    check_range(failback_s, "--failback", low=0, high=365 * 86400, low_inclusive=True)
    if not live:
        raise ConfigError("--stages: at least one live stage (ending at 100)")
    st = CutoverState(
        cutover_id=new_cutover_id(),
        endpoint=endpoint,
        to_location=to_location,
        market=market,
        model=model,
        source_locations=list(source_locations),
        shadow=list(shadow),
        live=list(live),
        thresholds=thresholds,
        interval_s=float(interval_s),
        plan_usd_per_mtok=plan_usd_per_mtok,
        source_usd_per_mtok=source_usd_per_mtok,
        steady_replicas=int(steady_replicas),
        source_floor=int(source_floor),
        failback_s=float(failback_s),
        started_at=_iso(now),
    )
    return enter_stage(st, 0, now)


def summary(state: CutoverState, now: datetime | None = None) -> dict[str, Any]:
    """What ``cutover status`` prints: phase, stage, weights, replica plan, last verdicts, why."""
    stage = state.current
    last = state.windows[-1]["verdicts"] if state.windows else []
    hold_left = None
    if state.active and stage is not None and now is not None:
        end = _parse(state.stage_started_at) + timedelta(seconds=stage.hold_s)
        hold_left = max(0.0, (end - now).total_seconds())
    return {
        "cutover_id": state.cutover_id,
        "endpoint": state.endpoint,
        "to_location": state.to_location,
        "market": state.market,
        "model": state.model,
        "source_locations": state.source_locations,
        "phase": state.phase,
        "stage": stage.label if stage else None,
        "stage_index": state.stage,
        "stages": [s.label for s in state.stages],
        "target_weight": state.target_weight,
        "mirror_share": state.mirror_share,
        "hold_left_s": hold_left,
        "passed_windows_in_stage": state.stage_passed_windows,
        "windows": len(state.windows),
        "replicas": replica_plan(state),
        "steady_replicas": state.steady_replicas,
        "plan_usd_per_mtok": state.plan_usd_per_mtok,
        "source_usd_per_mtok": state.source_usd_per_mtok,
        "last_verdicts": last,
        "reason": state.reason,
        "failed_criterion": state.failed_criterion,
        "promoted_at": state.promoted_at or None,
        "failback_until": state.failback_until or None,
        "replica_hours_saved": state.replica_hours_saved,
    }


def stage_verdicts(state: CutoverState, stage_label: str) -> dict[str, dict[str, Any]]:
    """Per criterion over one stage's windows: ``passed`` (False when any window failed it, True
    when some passed and none failed, None without data), window counts and the telling detail.
    What ``cutover_validation``'s checks report."""
    windows = [
        w
        for w in state.windows
        if w.get("cutover_id") == state.cutover_id and w.get("stage_label") == stage_label
    ]
    out: dict[str, dict[str, Any]] = {}
    for name in CRITERIA:
        vs = [v for w in windows for v in w["verdicts"] if v["criterion"] == name]
        failed = [v for v in vs if v["passed"] is False]
        passed = [v for v in vs if v["passed"] is True]
        verdict = False if failed else (True if passed else None)
        telling = failed[0] if failed else (passed[-1] if passed else (vs[-1] if vs else None))
        out[name] = {
            "passed": verdict,
            "failed_windows": len(failed),
            "passed_windows": len(passed),
            "windows": len(windows),
            "value": telling["value"] if telling else None,
            "limit": telling["limit"] if telling else None,
            "detail": telling["detail"] if telling else "no analysis window in this stage",
        }
    return out
