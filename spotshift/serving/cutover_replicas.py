"""Replicas of a cutover: how many each side wants per stage, and making the endpoint's replicas follow.

:func:`replica_plan` sizes both sides for a stage: the target for its routed + mirrored share, the
source for the rest (never below the failback floor), the total capped at :func:`fleet_cap`
(``floor(1.25 x steady)``, at least steady + 1) — "no double fleet".

:func:`follow` makes the endpoint's replicas match the plan of the state's current phase and stage,
through the :class:`~spotshift.serving.launcher.ReplicaLauncher` the autoscaler applies its
decisions with (no second way to start or stop a replica): a replica runs on the *target* side when
its location is the cutover's ``to_location`` (for a new checkpoint where the source already serves:
and it does not serve the source's checkpoint there), else on the *source* side; ready, draining and
still-provisioning replicas all count. One pass, under the endpoint's cutover-replicas lock (two
followers never launch the same replica twice):

1. launch what a side lacks while the total stays within the cap (the target at ``to_location`` in
   the cutover's market and price; the source back where it ran at the start, per location and
   market, in the proportions it had);
2. drain what a side has beyond its plan: launches still provisioning first (they serve nothing),
   then the newest replicas of the location with the most. A stop is the launcher's drain — the
   replica answers 503 to new requests (the router retries them elsewhere), finishes those in
   flight, deregisters, exits — and returns once the process has gone;
3. launch again into the room the drains made.

Weights move before replicas do (the router changes them at a window, in one assignment): a side
whose share grew serves it on the replicas it has until the follower's next pass; a side with no
ready replica gets none of the traffic (the router falls back to the other side), so replica
changes never fail a request. The source stays warm at its floor through the failback window
(``promoted``), comes back to the steady state on a rollback or failback, and goes to 0 once
decommissioned.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from spotshift.errors import ConfigError, NotFoundError
from spotshift.registry import locked
from spotshift.serving import replica_api as api
from spotshift.serving.cutover_stages import DEFAULT_SOURCE_FLOOR, LIVE_MIRROR_SHARE, MAX_FLEET_RATIO, Stage
from spotshift.serving.cutover_state import CutoverState, side_of, state_path
from spotshift.serving.launcher import LaunchInfo, ReplicaLauncher

SIDES = ("source", "target")
DEFAULT_STOP_TIMEOUT_S = 60.0


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


@dataclass(frozen=True)
class Member:
    """One replica of the endpoint as the follower sees it (``state``: ready, draining, provisioning)."""

    replica_id: str
    side: str
    location: str
    market: str
    state: str
    started_at_s: float


@dataclass(frozen=True)
class FollowStep:
    """What one :func:`follow` pass did: the plan, the replicas per side before and after, the
    launches and drains (the launcher's stop reports), and the most replicas running at once."""

    phase: str
    stage: str
    plan: dict[str, int]
    cap: int
    before: dict[str, int]
    after: dict[str, int]
    launched: tuple[dict[str, Any], ...]
    drained: tuple[dict[str, Any], ...]
    peak: int
    notes: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(self.launched or self.drained)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def members(state: CutoverState, launcher: ReplicaLauncher) -> list[Member]:
    """The endpoint's replicas (registered, draining included) and launches still provisioning, by side."""

    def side(r: api.ReplicaRecord) -> str:
        return side_of(state.to_location, state.source_checkpoints, r.location, r.checkpoint)

    def launch_side(i: LaunchInfo) -> str:  # no checkpoint before it listens: what it was asked to serve
        if i.location != state.to_location or (state.source_checkpoints and i.model != state.model):
            return "source"
        return "target"

    out = [
        Member(r.replica_id, side(r), r.location, r.market, r.state, r.started_at_s)
        for r in api.live_replicas(state.endpoint, include_draining=True)
    ]
    out += [
        Member(i.launch_id, launch_side(i), i.location, i.market, "provisioning", i.started_at_s)
        for i in launcher.provisioning(state.endpoint)
    ]
    return out


def _up(ms: list[Member], side: str) -> list[Member]:
    return [m for m in ms if m.side == side and m.state != "draining"]


def _counts(ms: list[Member]) -> dict[str, int]:
    return {s: len(_up(ms, s)) for s in SIDES}


def _source_spec(state: CutoverState, ms: list[Member]) -> tuple[str, str, float] | None:
    """Where the next source replica goes: the start's (location, market) furthest below its share."""
    if not state.source_mix:
        return None
    up = _up(ms, "source")

    def short(e: dict[str, Any]) -> float:
        have = sum(1 for m in up if m.location == e["location"] and m.market == e["market"])
        return have / max(1, int(e["count"]))

    best = min(state.source_mix, key=lambda e: (short(e), e["location"], e["market"]))
    return best["location"], best["market"], float(best["usd_per_hour"])


def _launch_spec(state: CutoverState, side: str, ms: list[Member]) -> tuple[str, str, float] | None:
    if side == "target":
        if state.target_usd_per_hour is None:
            return None
        return state.to_location, state.market, float(state.target_usd_per_hour)
    return _source_spec(state, ms)


def _drain_order(ms: list[Member], side: str) -> list[Member]:
    """Provisioning launches first, then the newest replicas of the location with the most."""
    up = _up(ms, side)
    per_loc = {loc: sum(1 for m in up if m.location == loc) for loc in {m.location for m in up}}
    return sorted(up, key=lambda m: (m.state != "provisioning", -per_loc[m.location], -m.started_at_s))


class _Pass:
    """The bookkeeping of one :func:`follow` pass."""

    def __init__(self, state: CutoverState, launcher: ReplicaLauncher, stop_timeout_s: float) -> None:
        self.state, self.launcher, self.stop_timeout_s = state, launcher, stop_timeout_s
        self.plan, self.cap = replica_plan(state), fleet_cap(state.steady_replicas)
        self.ms = members(state, launcher)
        self.before = _counts(self.ms)
        self.peak = len(self.ms)
        self.launched: list[dict[str, Any]] = []
        self.drained: list[dict[str, Any]] = []
        self.notes: list[str] = []

    def launch(self) -> None:
        for side in ("target", "source"):
            while len(_up(self.ms, side)) < self.plan[side] and len(self.ms) < self.cap:
                spec = _launch_spec(self.state, side, self.ms)
                if spec is None:
                    self.notes.append(f"no {side} launch spec in the cutover state: {side} not launched")
                    break
                loc, market, usd = spec
                # a new checkpoint: the target's; the source's as declared at the start (once promoted
                # the endpoint declares the new one)
                model = self.state.model if side == "target" else self.state.source_model
                info = self.launcher.start(self.state.endpoint, loc, market, usd_per_hour=usd, model=model)
                self.ms.append(Member(info.launch_id, side, loc, market, "provisioning", info.started_at_s))
                self.peak = max(self.peak, len(self.ms))
                self.launched.append(
                    {
                        "side": side,
                        "launch_id": info.launch_id,
                        "location": loc,
                        "market": market,
                        "pid": info.pid,
                    }
                )

    def drain(self) -> None:
        for side in ("target", "source"):
            surplus = len(_up(self.ms, side)) - self.plan[side]
            for m in _drain_order(self.ms, side)[: max(0, surplus)]:
                try:
                    report = self.launcher.stop(
                        self.state.endpoint, m.replica_id, timeout_s=self.stop_timeout_s
                    )
                except NotFoundError:  # gone meanwhile (drained on a notice, or killed)
                    report = None
                self.drained.append(
                    {"side": side, "location": m.location, **(asdict(report) if report else {})}
                )
                if report is not None and not report.drained:
                    self.notes.append(f"{m.replica_id} still draining after {self.stop_timeout_s:g} s")
        self.ms = members(self.state, self.launcher)

    def step(self) -> FollowStep:
        st = self.state
        return FollowStep(
            st.phase, st.current.label if st.current else "", self.plan, self.cap, self.before,
            _counts(self.ms), tuple(self.launched), tuple(self.drained), self.peak, tuple(self.notes),
        )  # fmt: skip


def follow(
    state: CutoverState, launcher: ReplicaLauncher, *, stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S
) -> FollowStep:
    """One pass making ``state.endpoint``'s replicas match :func:`replica_plan` (module docstring):
    launch within the cap, drain the surplus, launch into the room made. Idempotent: a pass over a
    fleet that matches the plan starts and stops nothing."""
    if stop_timeout_s <= 0:
        raise ConfigError(f"replica stop timeout {stop_timeout_s!r}: must be > 0 seconds")
    with locked(state_path(state.endpoint).with_name("cutover-replicas")):
        p = _Pass(state, launcher, stop_timeout_s)
        p.launch()
        p.drain()
        p.launch()
        return p.step()
