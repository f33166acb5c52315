"""The scaling policies the inference simulator replays: spotshift's autoscaler (and its
one-market baselines) through :func:`~spotshift.serving.autoscale.decide_scaling`, and the
SpotHedge-like policy as SkyServe published it (see :mod:`spotshift.serving.simulate`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import timedelta
from typing import Any

from spotshift.placement.risk import OnlineRiskEstimator
from spotshift.serving.autoscale import decide_scaling
from spotshift.serving.scaling_plan import hysteresis_step, wanted_by_region
from spotshift.serving.scaling_types import (
    Launch,
    LocationQuote,
    ReplicaState,
    ScalerMemory,
    ScalingDecision,
    ScalingInputs,
    ScalingParams,
)
from spotshift.serving.sim_world import SimInputs, SimReplica


class AutoscalerPolicy:
    """Drives :func:`decide_scaling` tick by tick (the same function the live loop calls)."""

    def __init__(
        self,
        name: str,
        sim: SimInputs,
        params: ScalingParams,
        *,
        risk_aware: bool = False,
        skip_unchanged: bool = True,
        on_decision: Callable[[int, ScalingDecision], None] | None = None,
    ) -> None:
        """``on_decision(tick, decision)`` sees every decision made (the demo prints and records them)."""
        self.name, self.sim, self.params = name, sim, params
        self.skip_unchanged = skip_unchanged
        self.on_decision = on_decision
        self.memory = ScalerMemory()
        # spot risk learned from the availability seen so far (as the training simulator does)
        self.risk = OnlineRiskEstimator(sim.locations, gap_hours=sim.tick_s / 3600.0) if risk_aware else None
        self._risk: dict[str, float] = {}
        self._risk_every = max(1, 3600 // sim.tick_s)
        self._last_key: Any = None
        self.decisions = 0
        # quote snapshot ids must name their quotes: derive them from this window's prices
        import hashlib

        digest = hashlib.blake2b(digest_size=8)
        digest.update("|".join(sim.locations).encode())
        for arr in (sim.spot, sim.on_demand, sim.reserved):
            digest.update(arr.tobytes())
        self.quotes_id = digest.hexdigest()

    def step(
        self,
        t: int,
        replicas: Mapping[str, SimReplica],
        quotes: list[LocationQuote],
        no_spot: Mapping[str, str],
    ) -> tuple[list[Launch], list[str]]:
        sim, p = self.sim, self.params
        cap = sim.profile.capacity_tokens_s
        demand = {u: float(sim.demand[t - 1 if t else 0, j]) for j, u in enumerate(sim.users)}
        forecast = {u: float(sim.forecast[t, j]) for j, u in enumerate(sim.users)}
        states = sorted(
            (sim.locations[r.loc], r.market, r.state_at(t), r.replica_id) for r in replicas.values()
        )
        risk: dict[str, float] = self._risk
        if self.risk is not None:
            self.risk.observe({loc: bool(sim.available[t, i]) for i, loc in enumerate(sim.locations)})
            if t % self._risk_every == 0:  # estimates move slowly: refresh them hourly
                risk = self._risk = {
                    loc: round(self.risk.risk(loc).preemptions_per_hour / p.risk_step) * p.risk_step
                    for loc in sim.locations
                }
        # a tick whose decisive inputs equal the last "hold" tick's (and no hysteresis timer expires
        # yet) would hold again: skip the call, the launches and terminations are identical
        key = (
            tuple(sorted(wanted_by_region(demand, forecast, cap, p).items())),
            tuple(demand[u] > self.memory.granted.get(u, 0) * cap for u in sim.users),
            tuple(s[:3] for s in states),
            tuple(sorted(no_spot)),
            int(sim.epoch[t]),
            int((sim.start.timestamp() + t * sim.tick_s) // 3600),
            tuple(sorted(risk.items())),
        )
        now_s = sim.start.timestamp() + t * sim.tick_s
        if self.skip_unchanged and key == self._last_key and now_s < self.memory.next_change_s(p):
            return [], []
        inputs = ScalingInputs(
            endpoint=self.name,
            now=sim.start + timedelta(seconds=t * sim.tick_s),
            profile=sim.profile,
            demand_tokens_s=demand,
            forecast_tokens_s=forecast,
            replicas=[ReplicaState(rid, loc, m, st) for loc, m, st, rid in states],
            quotes=quotes,
            no_spot=no_spot,
            spot_risk=risk,
            snapshot_id=f"{self.quotes_id}#{int(sim.epoch[t])}",
        )
        d = decide_scaling(inputs, self.memory, p)
        self.decisions += 1
        if self.on_decision is not None:
            self.on_decision(t, d)
        self.memory = d.memory
        self._last_key = key if d.action == "hold" else None
        return list(d.launches), [x.replica_id for x in d.terminations]


class SpotHedgePolicy:
    """SpotHedge as published (SkyServe, NSDI'24), one service per user region over the locations
    that meet its SLO; see the module docstring."""

    def __init__(self, sim: SimInputs, extra: int = 1, params: ScalingParams | None = None) -> None:
        self.name, self.sim, self.extra = "spothedge", sim, extra
        self.params = replace(params or ScalingParams(), headroom=1.0, use_forecast=False)
        self.memory = ScalerMemory()
        prof = sim.profile
        self.eligible: dict[str, list[int]] = {}
        for j, u in enumerate(sim.users):
            ok = [i for i in range(len(sim.locations)) if sim.rtt[j, i] + prof.inference_ms <= prof.slo_ms]
            self.eligible[u] = ok or [int(sim.rtt[j].argmin())]
        self.decisions = 0

    def step(
        self,
        t: int,
        replicas: Mapping[str, SimReplica],
        quotes: list[LocationQuote],
        no_spot: Mapping[str, str],
    ) -> tuple[list[Launch], list[str]]:
        sim = self.sim
        cap = sim.profile.capacity_tokens_s
        now_s = sim.start.timestamp() + t * sim.tick_s
        launches: list[Launch] = []
        stops: list[str] = []
        by_loc = {q.location: q for q in quotes}
        self.decisions += 1
        for j, u in enumerate(sim.users):
            load = float(sim.demand[t - 1 if t else 0, j])
            wanted = math.ceil(load / cap - 1e-9)  # reactive: SkyServe scales on the load it sees
            granted, _ = hysteresis_step(u, wanted, False, now_s, self.memory, self.params)
            mine = [r for r in replicas.values() if r.owner == u]
            spot = [r for r in mine if r.market == "spot"]
            od = [r for r in mine if r.market == "on_demand"]
            # spot: target + N_extra, each new one in the cheapest region not already used
            want_spot = granted + self.extra if granted else 0
            cands = [
                i
                for i in self.eligible[u]
                if sim.locations[i] not in no_spot and (by_loc[sim.locations[i]].spot_usd_hour is not None)
            ]
            used = {r.loc for r in spot}
            for _ in range(max(0, want_spot - len(spot))):
                if not cands:
                    break
                fresh = [i for i in cands if i not in used]
                pool = fresh or cands
                counts = {i: sum(1 for r in spot if r.loc == i) for i in pool}
                i = min(pool, key=lambda x: (counts[x], by_loc[sim.locations[x]].spot_usd_hour, x))
                used.add(i)
                launches.append(Launch(sim.locations[i], "spot", 1, f"spothedge:{u}"))
                spot.append(SimReplica("", i, "spot", t, t, u))
            if len(spot) > want_spot:
                extra = sorted(
                    (r for r in spot if r.replica_id),
                    key=lambda r: (
                        r.state_at(t) == "ready",
                        -(by_loc[sim.locations[r.loc]].spot_usd_hour or 0.0),
                    ),
                )
                stops += [r.replica_id for r in extra[: len(spot) - want_spot]]
            # dynamic on-demand fallback: cover the target while ready spot replicas fall short
            ready_spot = sum(1 for r in spot if r.replica_id and r.state_at(t) == "ready")
            want_od = max(0, granted - ready_spot)
            if want_od > len(od):
                i = min(
                    (x for x in self.eligible[u] if by_loc[sim.locations[x]].on_demand_usd_hour is not None),
                    key=lambda x: (by_loc[sim.locations[x]].on_demand_usd_hour, x),
                    default=None,
                )
                if i is not None:
                    launches.append(
                        Launch(sim.locations[i], "on_demand", want_od - len(od), f"spothedge:{u}")
                    )
            elif want_od < len(od):
                extra_od = sorted(od, key=lambda r: (r.state_at(t) == "ready", r.replica_id))
                stops += [r.replica_id for r in extra_od[: len(od) - want_od]]
        return launches, stops
