"""A cutover as persisted: :class:`CutoverState`, its file, its ``raw.cutovers`` rows and windows.

The state lives in ``$SPOTSHIFT_HOME/serving/<endpoint>/cutover.json`` (:func:`state_path`),
written under an exclusive lock with temp name + rename (:func:`update_state`), so the router
(which re-reads it every second and resumes at its weights after a restart), the command line and
the Dagster sensor never see half a file or lose each other's change. The decisions that change it
are :mod:`spotshift.serving.cutover`'s.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from spotshift.atomic import atomic_write_json
from spotshift.errors import ConfigError, NotFoundError
from spotshift.registry import locked
from spotshift.serving import replica_api as api
from spotshift.serving.cutover_analysis import Side, Verdict, Window
from spotshift.serving.cutover_stages import (
    ACTIVE_PHASES,
    CRITERIA,
    MAX_WINDOWS,
    STATE_FILE,
    Stage,
    Thresholds,
)
from spotshift.serving.endpoints import set_endpoint_model


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
    # what the source ran at the start, per location and market (``location``, ``market``,
    # ``usd_per_hour``, ``count``): where the source scales back to on a rollback or failback
    source_mix: list[dict[str, Any]] = field(default_factory=list)
    target_usd_per_hour: float | None = None  # price of a target replica (launches)
    # a cutover to a new checkpoint (``--model``) in a location the source already serves from: the
    # checkpoints the source served there at the start, which keep those replicas on the source side
    source_checkpoints: list[str] = field(default_factory=list)
    # what the endpoint declared it serves at the start (``spotshift endpoints``; empty: not declared):
    # a cutover with ``model`` declares ``model`` once promoted and this again on a failback
    source_model: str = ""
    model_declared: bool = False  # the declaration names ``model`` by this cutover's doing

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


def side_of(to_location: str, source_checkpoints: Sequence[str], location: str, checkpoint: str) -> str:
    """``target`` for a replica at ``location`` serving ``checkpoint`` when it runs in the cutover's
    ``to_location`` and not one of ``source_checkpoints`` (what the source served there at the start:
    a cutover to a new checkpoint in the same location); else ``source``."""
    return "target" if location == to_location and checkpoint not in source_checkpoints else "source"


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
    with locked(state_path(endpoint)):
        st = require_state(endpoint)
        new = change(st)
        return declare_model(save_state(new) if new is not None else st)


def declare_model(state: CutoverState) -> CutoverState:
    """Bring the endpoint's declared model in line with ``state`` (under the cutover lock; the state
    is saved first, so a crash in between is mended by the next :func:`update_state`, e.g. ``cutover
    status`` or the stage sensor): promoted or decommissioned, the declaration names the cutover's
    ``model`` (the autoscaler launches it); failed back, the ``source_model`` again (only while it
    still names ``model``). A rollback before promotion, or a cutover without ``model``, leaves the
    declaration alone."""
    want = state.phase in ("promoted", "decommissioned")
    if not state.model or not state.source_model or want == state.model_declared:
        return state
    if want:
        set_endpoint_model(state.endpoint, state.model)
    else:
        set_endpoint_model(state.endpoint, state.source_model, only_if=state.model)
    state.model_declared = want
    return save_state(state)


def new_cutover_id() -> str:
    return "co-" + secrets.token_hex(4)


def iso(dt: datetime) -> str:
    """A virtual time as stored in the state (ISO 8601)."""
    return dt.isoformat()


def stage_windows(state: CutoverState) -> list[dict[str, Any]]:
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
        "started_at": state.stage_started_at or iso(now),
        "ended_at": iso(now),
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
