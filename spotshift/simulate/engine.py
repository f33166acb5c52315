"""The policy simulator: replay a market for one described job under several placement policies.

Every policy runs the same job (``work_hours`` instance-hours of work, due ``deadline_hours`` after
``start``) on the same :class:`~spotshift.simulate.market.Market`, tick by tick, with the same
accounting:

* **Compute**: a running placement is billed its price for the tick; work progresses except during
  *overhead* (changeover, and waiting for copies on a cold start).
* **Checkpoints** every ``checkpoint_interval_hours`` of work, written in the region the job runs in.
  A preemption (spot capacity gone at a tick) loses the work since the last checkpoint.
* **Starting somewhere** copies what is missing there (dataset, latest checkpoint) from where it is,
  billed at :mod:`spotshift.pricing.egress` rates. With *full copies* (SkyPilot-like) every start
  outside the data's home region copies the whole dataset, and the checkpoint unless it is already
  there; with *delta sync* replicas persist, so a region copies the dataset once and a stale
  checkpoint receives only ``checkpoint_delta_fraction`` of it.
* **A cold start** (first start, or after a preemption) waits ``changeover + copy time`` at the new
  price. **A planned move** (the job still runs) pre-stages copies while the source runs: the
  changeover is billed at the source's price and the work since the last checkpoint is redone —
  the same terms the migration economics charge.
* **Deadline safety net**: every spot policy switches to on-demand (in the region holding the
  latest checkpoint) when :func:`spotshift.placement.deadline.deadline_requires_on_demand` says
  so, and stays there; the ``spotshift`` policy gets this from :func:`decide` itself.

Policies: ``on_demand``, ``stay_first_spot``, ``greedy_full``, ``greedy_delta``, ``uniform_progress``
(Can't Be Late, single region), ``spotshift`` (:func:`spotshift.placement.economics.decide`, the
function ``price_change_sensor`` calls), ``hindsight`` (a lower bound, see :func:`hindsight_bound`)
and ``optimum`` (the offline optimum that pays for moves, waits and the deadline, see
:func:`spotshift.simulate.optimum.offline_optimum`). Every result carries its cost as a multiple
of both (``vs_optimum``, ``vs_hindsight``) when they were run.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from datetime import timedelta
from typing import Any

from spotshift.errors import ConfigError
from spotshift.jobs import TrainingJob
from spotshift.placement.availability import AvailabilityModel
from spotshift.placement.deadline import (
    ahead_of_uniform_progress,
    deadline_requires_on_demand,
    safety_reserve_hours,
)
from spotshift.placement.decision import DecisionInputs, Placement
from spotshift.placement.economics import decide
from spotshift.placement.params import PlacementParams
from spotshift.placement.scoring import DataFootprint
from spotshift.pricing.egress import egress_usd_per_gb
from spotshift.simulate.market import Market
from spotshift.simulate.optimum import offline_optimum
from spotshift.simulate.scenario import PolicyResult, Scenario

POLICIES = (
    "on_demand",
    "stay_first_spot",
    "greedy_full",
    "greedy_delta",
    "uniform_progress",
    "spotshift",
    "hindsight",
    "optimum",
)
NO_SPOT_REASON = "no spot capacity (preempted)"


class _Copies:
    """Where the dataset and the latest checkpoint are, and what a start somewhere must copy."""

    def __init__(self, sc: Scenario, home: str, delta: bool) -> None:
        self.sc = sc
        self.home = home
        self.delta = delta
        self.data_at: set[str] = {home}
        self.ckpt_current: set[str] = set()  # hold the latest checkpoint
        self.ckpt_stale: set[str] = set()  # hold an older one
        self.has_ckpt = False

    def missing(self, loc: str) -> tuple[int, int, str, str | None]:
        """(dataset bytes, checkpoint bytes, dataset source, checkpoint source) to start at ``loc``."""
        sc = self.sc
        if self.delta:
            data = 0 if loc in self.data_at else sc.data_bytes
        else:
            data = 0 if loc == self.home else sc.data_bytes
        src_d = self._nearest(self.data_at if self.delta else {self.home}, loc)
        ckpt = 0
        src_c = None
        if self.has_ckpt and loc not in self.ckpt_current:
            stale = self.delta and loc in self.ckpt_stale
            ckpt = int(sc.ckpt_bytes * (sc.checkpoint_delta_fraction if stale else 1.0))
            src_c = self._nearest(self.ckpt_current, loc)
        return data, ckpt, src_d, src_c

    @staticmethod
    def _nearest(sources: set[str], dst: str) -> str:
        return min(sorted(sources), key=lambda s: egress_usd_per_gb(s, dst))

    def copy_to(self, loc: str) -> tuple[int, float]:
        """Make ``loc`` hold the dataset and latest checkpoint; returns (bytes sent, egress USD)."""
        data, ckpt, src_d, src_c = self.missing(loc)
        usd = 0.0
        if data:
            usd += egress_usd_per_gb(src_d, loc) * data / 1e9
        if ckpt and src_c is not None:
            usd += egress_usd_per_gb(src_c, loc) * ckpt / 1e9
        if self.delta:
            self.data_at.add(loc)
        if self.has_ckpt:
            self.ckpt_current.add(loc)
            self.ckpt_stale.discard(loc)
        return data + ckpt, usd

    def checkpoint_written(self, loc: str) -> None:
        """A new checkpoint was committed in ``loc``."""
        self.ckpt_stale |= self.ckpt_current - {loc}
        self.ckpt_current = {loc}
        self.has_ckpt = True

    def latest_location(self) -> str:
        """Where the latest checkpoint is (the data's home before the first one)."""
        if self.has_ckpt and self.ckpt_current:
            return sorted(self.ckpt_current)[0]
        return self.home

    def footprint(self) -> DataFootprint:
        """The same knowledge as the warehouse gives ``price_change_sensor``."""
        sc = self.sc
        ckpt_present: dict[str, int] = {}
        if self.has_ckpt:
            kept = int(sc.ckpt_bytes * (1.0 - sc.checkpoint_delta_fraction)) if self.delta else 0
            for loc in self.ckpt_stale:
                ckpt_present[loc] = kept
            for loc in self.ckpt_current:
                ckpt_present[loc] = sc.ckpt_bytes
        data_at = self.data_at if self.delta else {self.home}
        return DataFootprint(
            dataset_bytes=sc.data_bytes,
            checkpoint_bytes=sc.ckpt_bytes if self.has_ckpt else 0,
            dataset_present={loc: sc.data_bytes for loc in data_at},
            checkpoint_present=ckpt_present,
        )


class _Run:
    """One policy's job on the market: placement, progress, checkpoints, money."""

    def __init__(self, name: str, market: Market, sc: Scenario, home: str, delta: bool) -> None:
        self.m = market
        self.sc = sc
        self.res = PolicyResult(name)
        self.copies = _Copies(sc, home, delta)
        self.loc: int | None = None
        self.market: str | None = None
        self.last_loc: int | None = None
        self.progress = 0.0
        self.ckpt_progress = 0.0
        self.overhead = 0.0
        self.overhead_price = 0.0
        self.locked = False  # safety net fired: on-demand until done
        self.cooldown_until: float = -1.0
        self.done = False

    # ---- state helpers
    @property
    def running(self) -> bool:
        return self.loc is not None

    def price(self, t: int) -> float:
        assert self.loc is not None
        series = self.m.spot if self.market == "spot" else self.m.on_demand
        return series[self.loc][t]

    def remaining(self) -> float:
        return max(0.0, self.sc.work_hours - self.progress)

    def time_left(self, t: int) -> float:
        return self.sc.deadline_hours - t * self.m.gap_hours

    # ---- transitions
    def start(self, loc: int, market: str, t: int) -> None:
        """(Re)start the job at ``loc`` in ``market`` at tick ``t``."""
        if self.loc == loc and self.market == market:
            return
        name = self.m.locations[loc]
        planned = self.running
        sent, usd = self.copies.copy_to(name)
        self.res.gb_moved += sent / 1e9
        self.res.egress_usd += usd
        if self.last_loc is not None and loc != self.last_loc:
            self.res.moves += 1
        if planned:
            self.overhead = self.sc.changeover_hours
            self.overhead_price = self.price(t)
            self.progress = self.ckpt_progress  # the target resumes from the last checkpoint
        else:
            self.overhead = self.sc.changeover_hours + self.sc.transfer_hours(sent)
            self.overhead_price = math.nan  # billed at the new price
        self.loc, self.market, self.last_loc = loc, market, loc

    def stop(self) -> None:
        self.loc = None
        self.market = None
        self.overhead = 0.0

    def preempt(self) -> None:
        self.res.preemptions += 1
        self.progress = self.ckpt_progress
        self.stop()

    def safety_net(self, t: int) -> bool:
        """Switch to on-demand in the checkpoint's region when the deadline requires it."""
        if self.locked:
            return True
        target = self.m.locations[self.loc] if self.running else self.copies.latest_location()
        data, ckpt, _, _ = self.copies.missing(target)
        reserve = safety_reserve_hours(
            self.sc.changeover_hours,
            self.sc.transfer_hours(data + ckpt),
            self.sc.checkpoint_interval_hours,
            self.m.gap_hours,
        )
        if deadline_requires_on_demand(self.time_left(t), self.remaining(), reserve):
            self.locked = True
            self.start(self.m.locations.index(target), "on_demand", t)
            return True
        return False

    def advance(self, t: int) -> None:
        """Bill and progress one tick."""
        if not self.running:
            return
        dt = self.m.gap_hours
        price = self.price(t)
        cost = 0.0
        used = 0.0
        if self.overhead > 0:
            used = min(self.overhead, dt)
            cost += used * (price if math.isnan(self.overhead_price) else self.overhead_price)
            self.overhead -= used
        work = min(dt - used, self.remaining())
        cost += work * price
        elapsed = used + work
        if self.market == "spot":
            self.res.spot_hours += elapsed
        else:
            self.res.on_demand_hours += elapsed
        self.res.compute_usd += cost
        before = self.progress
        self.progress += work
        interval = self.sc.checkpoint_interval_hours
        if math.floor(self.progress / interval + 1e-9) > math.floor(before / interval + 1e-9):
            self.ckpt_progress = math.floor(self.progress / interval + 1e-9) * interval
            self.copies.checkpoint_written(self.m.locations[self.loc])  # type: ignore[index]
        if self.remaining() <= 1e-9:
            self.done = True
            self.res.finish_hours = t * dt + elapsed
            self.ckpt_progress = self.progress
            self.stop()

    def finish(self) -> PolicyResult:
        r = self.res
        r.cost_usd = r.compute_usd + r.egress_usd
        r.deadline_met = r.finish_hours is not None and r.finish_hours <= self.sc.deadline_hours + 1e-9
        return r


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


def default_home(m: Market) -> str:
    """The data's home when not given: the cheapest spot location at the first tick (ties by name)."""
    cands = [(m.spot[i][0], loc) for i, loc in enumerate(m.locations) if not math.isnan(m.spot[i][0])]
    if not cands:
        raise ConfigError(
            f"no spot price for {m.instance_type} at {m.start.isoformat()}; choose another --start"
        )
    return min(cands)[1]


def simulate(
    market: Market,
    scenario: Scenario,
    *,
    policies: tuple[str, ...] = POLICIES,
    params: PlacementParams | None = None,
) -> dict[str, PolicyResult]:
    """Run ``policies`` on ``market`` for ``scenario``; results keyed by policy name, with savings."""
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise ConfigError(f"unknown policy {', '.join(unknown)} (known: {', '.join(POLICIES)})")
    home = scenario.data_location or default_home(market)
    if home not in market.locations:
        raise ConfigError(f"--data-location {home!r} is not one of the simulated locations")
    wanted = set(policies) | {"on_demand"}
    out = {name: run_policy(name, market, scenario, home, params) for name in POLICIES if name in wanted}
    base = out["on_demand"].cost_usd
    for r in out.values():
        r.saving_vs_on_demand = (1.0 - r.cost_usd / base) if base > 0 and math.isfinite(r.cost_usd) else None
    for ref, attr in (("optimum", "vs_optimum"), ("hindsight", "vs_hindsight")):
        if ref in out and 0 < out[ref].cost_usd < math.inf:
            for r in out.values():
                setattr(r, attr, r.cost_usd / out[ref].cost_usd)
    return {k: v for k, v in out.items() if k in policies}


def run_policy(
    name: str, market: Market, scenario: Scenario, home: str, params: PlacementParams | None = None
) -> PolicyResult:
    """Run one policy (no saving computed: that needs the on-demand run)."""
    if name == "on_demand":
        return _run_on_demand(market, scenario, home)
    if name == "stay_first_spot":
        return _run_stay_first_spot(market, scenario, home)
    if name in ("greedy_full", "greedy_delta"):
        return _run_greedy(market, scenario, home, delta=name == "greedy_delta")
    if name == "uniform_progress":
        return _run_uniform_progress(market, scenario, home)
    if name == "spotshift":
        return _run_spotshift(market, scenario, home, params)
    if name == "hindsight":
        return hindsight_bound(market, scenario, home)
    if name == "optimum":
        return offline_optimum(market, scenario, home)
    raise ConfigError(f"unknown policy {name!r} (known: {', '.join(POLICIES)})")


def _loop(run: _Run, decide_tick: Any, *, net: bool) -> PolicyResult:
    m = run.m
    for t in range(m.n_ticks):
        if run.running and run.market == "spot" and not m.spot_available(run.loc, t):  # type: ignore[arg-type]
            run.preempt()
        if not (net and run.safety_net(t)):
            decide_tick(t)
        run.advance(t)
        if run.done:
            break
    return run.finish()


def _run_on_demand(m: Market, sc: Scenario, home: str) -> PolicyResult:
    run = _Run("on_demand", m, sc, home, delta=True)
    where = _cheapest_on_demand_start(m, sc, home)

    def tick(t: int) -> None:
        if not run.running:
            run.start(where, "on_demand", t)

    return _loop(run, tick, net=False)


def _run_stay_first_spot(m: Market, sc: Scenario, home: str) -> PolicyResult:
    run = _Run("stay_first_spot", m, sc, home, delta=True)
    i = m.locations.index(home)

    def tick(t: int) -> None:
        if not run.running and m.spot_available(i, t):
            run.start(i, "spot", t)

    return _loop(run, tick, net=True)


def _run_greedy(m: Market, sc: Scenario, home: str, *, delta: bool) -> PolicyResult:
    run = _Run("greedy_delta" if delta else "greedy_full", m, sc, home, delta=delta)

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

    return _loop(run, tick, net=True)


def _run_uniform_progress(m: Market, sc: Scenario, home: str) -> PolicyResult:
    """Can't Be Late's Uniform Progress in the data's region: spot when available; on-demand while
    behind the uniform-progress line; back to spot once ahead by a changeover (hysteresis)."""
    run = _Run("uniform_progress", m, sc, home, delta=True)
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

    return _loop(run, tick, net=True)


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


def _run_spotshift(m: Market, sc: Scenario, home: str, params: PlacementParams | None) -> PolicyResult:
    """spotshift's own economics: :func:`decide` every tick, with what a sensor would know: the
    prices of the tick, where capacity is gone now, and the availability learned so far
    (:class:`~spotshift.placement.availability.AvailabilityModel`: hazards, co-interruptions)."""
    run = _Run("spotshift", m, sc, home, delta=True)
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

    return _loop(run, tick, net=False)


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


def scenario_summary(
    m: Market, sc: Scenario, home: str, seed: int, prices: str, traces: str
) -> dict[str, Any]:
    """The scenario as recorded next to the results (JSON)."""
    return {
        "prices": prices,
        "traces": traces,
        "seed": seed,
        "instance_type": m.instance_type,
        "gpu_model": m.gpu_model,
        "gpu_count": m.gpu_count,
        "locations": len(m.locations),
        "start": m.start.isoformat(),
        "tick_hours": m.gap_hours,
        **asdict(sc),
        "data_location": home,
    }
