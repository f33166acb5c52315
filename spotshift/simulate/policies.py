"""The policies of the one-job simulator, each a per-tick decision on a shared
:class:`~spotshift.simulate.accounting.PolicyRun` (see :mod:`spotshift.simulate.engine` for what
each one does), and the hindsight lower bound."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from spotshift.errors import ConfigError
from spotshift.jobs import TrainingJob
from spotshift.placement.availability import AvailabilityModel
from spotshift.placement.deadline import ahead_of_uniform_progress
from spotshift.placement.decision import DecisionInputs, Placement
from spotshift.placement.economics import decide
from spotshift.placement.params import PlacementParams
from spotshift.pricing.egress import egress_usd_per_gb
from spotshift.simulate.accounting import NO_SPOT_REASON, PolicyRun, run_loop
from spotshift.simulate.market import Market
from spotshift.simulate.scenario import PolicyResult, Scenario


def _cheapest_on_demand_start(m: Market, sc: Scenario, home: str) -> int:
    """Where always-on-demand runs: lowest price x work + initial copy, at the first tick."""
    best: tuple[float, str, int] | None = None
    for i, loc in enumerate(m.locations):
        p = m.on_demand[i][0]
        if math.isnan(p):
            continue
        total = p * sc.work_hours + egress_usd_per_gb(home, loc) * sc.data_gb
        key = (total, loc, i)
        if best is None or key < best:
            best = key
    if best is None:
        raise ConfigError(f"no on-demand price for {m.instance_type} at {m.start.isoformat()}")
    return best[2]


def run_on_demand(m: Market, sc: Scenario, home: str) -> PolicyResult:
    run = PolicyRun("on_demand", m, sc, home, delta=True)
    where = _cheapest_on_demand_start(m, sc, home)

    def tick(t: int) -> None:
        if not run.running:
            run.start(where, "on_demand", t)

    return run_loop(run, tick, net=False)


def run_stay_first_spot(m: Market, sc: Scenario, home: str) -> PolicyResult:
    run = PolicyRun("stay_first_spot", m, sc, home, delta=True)
    i = m.locations.index(home)

    def tick(t: int) -> None:
        if not run.running and m.spot_available(i, t):
            run.start(i, "spot", t)

    return run_loop(run, tick, net=True)


def run_greedy(m: Market, sc: Scenario, home: str, *, delta: bool) -> PolicyResult:
    run = PolicyRun("greedy_delta" if delta else "greedy_full", m, sc, home, delta=delta)

    def tick(t: int) -> None:
        if run.running:
            return
        best: tuple[float, str, int] | None = None
        for i, loc in enumerate(m.locations):
            if m.spot_available(i, t):
                key = (m.spot[i][t], loc, i)
                if best is None or key < best:
                    best = key
        if best is not None:
            run.start(best[2], "spot", t)

    return run_loop(run, tick, net=True)


def run_uniform_progress(m: Market, sc: Scenario, home: str) -> PolicyResult:
    """Can't Be Late's Uniform Progress in the data's region: spot when available; on-demand while
    behind the uniform-progress line; back to spot once ahead by a changeover (hysteresis)."""
    run = PolicyRun("uniform_progress", m, sc, home, delta=True)
    i = m.locations.index(home)

    def tick(t: int) -> None:
        time_left = run.time_left(t)
        ahead = ahead_of_uniform_progress(run.remaining(), sc.work_hours, time_left, sc.deadline_hours)
        spot_ok = m.spot_available(i, t)
        if run.market == "spot":
            return
        if run.market == "on_demand":
            lead = sc.work_hours * time_left / sc.deadline_hours - run.remaining()
            if spot_ok and lead >= sc.changeover_hours:
                run.start(i, "spot", t)
            return
        if spot_ok:
            run.start(i, "spot", t)
        elif not ahead:
            run.start(i, "on_demand", t)

    return run_loop(run, tick, net=True)


def simulated_job(m: Market, sc: Scenario, name: str, submit_tick: int) -> TrainingJob:
    """The training job ``decide`` sees for a scenario submitted at tick ``submit_tick`` of ``m``."""
    return TrainingJob(
        name=name,
        dataset="simulated",
        total_steps=max(1, int(round(sc.work_hours * 100))),
        work_hours=sc.work_hours,
        checkpoint_every_minutes=sc.checkpoint_interval_hours * 60.0,
        gpu_model=m.gpu_model,
        gpu_count=m.gpu_count,
        submitted_at=m.time_at(submit_tick).isoformat(),
        deadline_hours=sc.deadline_hours,
    )


def run_spotshift(m: Market, sc: Scenario, home: str, params: PlacementParams | None) -> PolicyResult:
    """spotshift's own economics: :func:`decide` every tick, with what a sensor would know: the
    prices of the tick, where capacity is gone now, and the availability learned so far
    (:class:`~spotshift.placement.availability.AvailabilityModel`: hazards, co-interruptions)."""
    run = PolicyRun("spotshift", m, sc, home, delta=True)
    p = (params or PlacementParams()).with_(
        changeover_hours=sc.changeover_hours,
        transfer_gbps=sc.transfer_gbps,
        decision_interval_hours=m.gap_hours,
    )
    job = simulated_job(m, sc, "simulated", 0)
    deadline = m.start + timedelta(hours=sc.deadline_hours)
    risk = AvailabilityModel(m.locations, gap_hours=m.gap_hours)
    quotes_cache: dict[int, list[Any]] = {}
    actions = run.res.actions

    def tick(t: int) -> None:
        risk.observe({loc: m.available[i][t] for i, loc in enumerate(m.locations)})
        ep = m.epoch[t]
        quotes = quotes_cache.get(ep)
        if quotes is None:
            quotes = quotes_cache[ep] = m.quotes(t)
        no_spot = {loc: NO_SPOT_REASON for i, loc in enumerate(m.locations) if not m.available[i][t]}
        now = m.time_at(t)
        cur = None
        if run.running:
            cur = Placement(m.locations[run.loc], run.market or "", m.instance_type, "", run.price(t))  # type: ignore[index]
        inputs = DecisionInputs(
            job=job,
            quotes=quotes,
            now=now,
            remaining_hours=run.remaining(),
            footprint=run.copies.footprint(),
            current=cur,
            current_running=cur is not None,
            checkpoint_age_hours=run.progress - run.ckpt_progress if run.running else 0.0,
            risks=risk.risks(),
            no_spot=no_spot,
            cooldown_until=m.start + timedelta(hours=run.cooldown_until) if run.cooldown_until >= 0 else None,
            deadline_at=deadline,
            snapshot_id=f"epoch-{ep}",
        )
        d = decide(inputs, p)
        actions[d.action] = actions.get(d.action, 0) + 1
        if d.target is None or not d.changes_placement:
            return
        q = d.target.quote
        planned = run.running
        run.start(m.locations.index(q.location), q.market, t)
        if planned and d.action == "move":
            run.cooldown_until = t * m.gap_hours + p.cooldown_hours

    return run_loop(run, tick, net=False)


def hindsight_bound(m: Market, sc: Scenario, home: str) -> PolicyResult:
    """A lower bound no policy can beat: the job's hours bought in the cheapest ticks before the
    deadline at the cheapest price available in each (spot with capacity, or on-demand), with no
    changeover, copies or lost work. ``moves`` counts changes of the cheapest location along the
    chosen ticks; nothing is copied, so ``gb_moved`` and ``egress_usd`` are 0."""
    res = PolicyResult("hindsight", lower_bound=True)
    dt = m.gap_hours
    slots = []
    for t in range(m.n_ticks):
        best: tuple[float, str, str] | None = None
        for i, loc in enumerate(m.locations):
            for market, series in (("spot", m.spot), ("on_demand", m.on_demand)):
                p = series[i][t]
                if math.isnan(p) or (market == "spot" and not m.available[i][t]):
                    continue
                if best is None or (p, loc, market) < best:
                    best = (p, loc, market)
        if best is not None:
            slots.append((t, *best))

    def capacity(t: int, by_deadline: bool) -> float:
        return max(0.0, min(dt, sc.deadline_hours - t * dt)) if by_deadline else dt

    in_time = sum(capacity(s[0], True) for s in slots) >= sc.work_hours - 1e-9
    chosen = sorted(slots, key=lambda s: (s[1], s[0]))
    need = sc.work_hours
    picked = []
    for s in chosen:
        if need <= 1e-12:
            break
        h = min(capacity(s[0], in_time), need)
        if h <= 0:
            continue
        need -= h
        res.compute_usd += s[1] * h
        if s[3] == "spot":
            res.spot_hours += h
        else:
            res.on_demand_hours += h
        picked.append((s[0], s[2], h))
    picked.sort()
    if picked and need <= 1e-9:
        res.finish_hours = picked[-1][0] * dt + picked[-1][2]
    res.moves = sum(1 for a, b in zip(picked, picked[1:], strict=False) if a[1] != b[1])
    res.cost_usd = res.compute_usd
    res.deadline_met = res.finish_hours is not None and res.finish_hours <= sc.deadline_hours + 1e-9
    return res
