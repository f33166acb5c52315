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

The state lives in ``$SPOTSHIFT_HOME/serving/<endpoint>/cutover.json``, written under a lock with
temp name + rename (:mod:`spotshift.serving.cutover_state`), so the router (which re-reads it every
second and resumes at its weights after a restart), the command line and the Dagster sensor never
see half a file or lose each other's change.

After promotion the source stays warm at ``source_floor`` replicas for the failback window
(default 7 days): :func:`failback` puts 100 % back on the source in one step; once the window has
passed :func:`decommission_if_due` records the source decommissioned and the replica-hours the floor
saved over keeping the whole source fleet. :func:`~spotshift.serving.cutover_replicas.replica_plan`
sizes both sides per stage so the total never exceeds 1.25 x the steady state, mirrored traffic
included, and :func:`~spotshift.serving.cutover_replicas.follow` launches and drains the endpoint's
replicas to it through the replica launcher.

This module holds the decisions (the verbs: start, decide, advance, roll back, fail back,
decommission, summarise); the pieces live beside it and are re-exported here so callers name one
module: stages and thresholds (:mod:`~spotshift.serving.cutover_stages`), windows and verdicts
(:mod:`~spotshift.serving.cutover_analysis`), the persisted state
(:mod:`~spotshift.serving.cutover_state`), replicas per side (:mod:`~spotshift.serving.cutover_replicas`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from spotshift.clock import parse_utc
from spotshift.errors import ConfigError, check_range
from spotshift.serving.cutover_analysis import Side, Verdict, Window, analyse, percentile
from spotshift.serving.cutover_replicas import FollowStep, fleet_cap, follow, replica_plan
from spotshift.serving.cutover_stages import (
    ACTIVE_PHASES,
    CRITERIA,
    DEFAULT_FAILBACK_DAYS,
    DEFAULT_INTERVAL_S,
    DEFAULT_SHADOW,
    DEFAULT_SOURCE_FLOOR,
    DEFAULT_STAGES,
    FIRST_SHADOW_HOLD_H,
    LIVE_MIRROR_SHARE,
    MAX_FLEET_RATIO,
    MAX_WINDOWS,
    NEXT_SHADOW_HOLD_H,
    PHASES,
    STATE_FILE,
    Stage,
    Thresholds,
    parse_duration_s,
    parse_stages,
)
from spotshift.serving.cutover_state import (
    CutoverState,
    iso,
    load_state,
    new_cutover_id,
    require_state,
    save_state,
    side_of,
    stage_row,
    stage_verdicts,
    stage_windows,
    state_path,
    update_state,
    window_doc,
)

__all__ = [
    "ACTIVE_PHASES", "CRITERIA", "DEFAULT_FAILBACK_DAYS", "DEFAULT_INTERVAL_S", "DEFAULT_SHADOW",
    "DEFAULT_SOURCE_FLOOR", "DEFAULT_STAGES", "FIRST_SHADOW_HOLD_H", "LIVE_MIRROR_SHARE", "MAX_FLEET_RATIO",
    "MAX_WINDOWS", "NEXT_SHADOW_HOLD_H", "PHASES", "STATE_FILE", "CutoverState", "FollowStep", "Side",
    "Stage", "Thresholds", "Verdict", "Window", "advance_if_due", "analyse", "decide", "decommission_if_due",
    "enter_stage", "failback", "fleet_cap", "follow", "load_state", "new_cutover_id", "parse_duration_s",
    "parse_stages", "percentile", "replica_plan", "require_state", "roll_back", "save_state", "side_of", "stage_row",
    "stage_verdicts", "stage_windows", "start_state", "state_path", "summary", "update_state", "window_doc",
]  # fmt: skip


def enter_stage(state: CutoverState, index: int, now: datetime) -> CutoverState:
    """``state`` at stage ``index`` from ``now``: weights of that stage; the last live stage with
    hold 0 promotes (target 100 %, the failback window opens)."""
    stages = state.stages
    st = replace(state, stage=index, stage_started_at=iso(now), stage_passed_windows=0)
    stage = stages[index]
    if stage.phase == "shadow":
        st.phase, st.target_weight, st.mirror_share = "shadow", 0.0, stage.share
    else:
        st.phase, st.target_weight, st.mirror_share = "live", stage.share, LIVE_MIRROR_SHARE
    if index == len(stages) - 1 and stage.hold_s <= 0:
        st.phase, st.target_weight, st.mirror_share = "promoted", 1.0, 0.0
        st.promoted_at = iso(now)
        st.failback_until = iso(now + timedelta(seconds=state.failback_s))
        st.stage_rows = [*st.stage_rows, stage_row(st, stage, "promoted", now, [])]
    return st


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
        ended_at=iso(now),
    )
    if stage is not None:
        st.stage_rows = [*st.stage_rows, stage_row(st, stage, "rolled_back", now, stage_windows(st))]
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
    if now < parse_utc(state.stage_started_at) + timedelta(seconds=stage.hold_s):
        return state
    done = replace(
        state, stage_rows=[*state.stage_rows, stage_row(state, stage, "passed", now, stage_windows(state))]
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
    if now > parse_utc(state.failback_until):
        raise ConfigError(
            f"cutover {state.cutover_id} of {state.endpoint}: the failback window closed at {state.failback_until}"
        )
    last = state.stages[-1]
    st = replace(
        state,
        phase="failed_back",
        target_weight=0.0,
        mirror_share=0.0,
        ended_at=iso(now),
        reason="failback requested",
    )
    st.stage_rows = [*st.stage_rows, stage_row(st, last, "failed_back", now, [])]
    return st


def decommission_if_due(state: CutoverState, now: datetime) -> CutoverState:
    """After the failback window of a promoted cutover: the source decommissioned, and the
    replica-hours its floor saved over keeping the steady source fleet warm recorded."""
    if state.phase != "promoted" or now <= parse_utc(state.failback_until):
        return state
    hours = state.failback_s / 3600.0
    saved = max(0, state.steady_replicas - state.source_floor) * hours
    st = replace(state, phase="decommissioned", ended_at=iso(now), replica_hours_saved=round(saved, 3))
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
    source_mix: Sequence[dict[str, Any]] = (),
    target_usd_per_hour: float | None = None,
    source_checkpoints: Sequence[str] = (),
    source_model: str = "",
) -> CutoverState:
    """A new cutover at its first stage. ``source_mix``: the source's replicas per location and
    market at the start (``location``, ``market``, ``usd_per_hour``, ``count``), where a rollback
    or failback launches the source back; ``target_usd_per_hour``: the price target replicas are
    launched at; ``source_checkpoints``: what the source serves at ``to_location`` (a new checkpoint
    in the same location, :func:`side_of`); ``source_model``: the model the endpoint declares at the
    start (a promotion with ``model`` declares ``model`` instead, a failback this again:
    :func:`~spotshift.serving.cutover_state.declare_model`)."""
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
        started_at=iso(now),
        source_mix=[dict(e) for e in source_mix],
        target_usd_per_hour=None if target_usd_per_hour is None else float(target_usd_per_hour),
        source_checkpoints=sorted(source_checkpoints),
        source_model=source_model,
    )
    return enter_stage(st, 0, now)


def summary(state: CutoverState, now: datetime | None = None) -> dict[str, Any]:
    """What ``cutover status`` prints: phase, stage, weights, replica plan, last verdicts, why."""
    stage = state.current
    last = state.windows[-1]["verdicts"] if state.windows else []
    hold_left = None
    if state.active and stage is not None and now is not None:
        end = parse_utc(state.stage_started_at) + timedelta(seconds=stage.hold_s)
        hold_left = max(0.0, (end - now).total_seconds())
    return {
        "cutover_id": state.cutover_id,
        "endpoint": state.endpoint,
        "to_location": state.to_location,
        "market": state.market,
        "model": state.model,
        "source_model": state.source_model,
        "model_declared": state.model_declared,
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
