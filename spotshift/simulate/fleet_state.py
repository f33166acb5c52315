"""The fleet simulator's state: every job's constants and progress as numpy arrays over jobs, with the
transitions of :class:`~spotshift.simulate.accounting.PolicyRun` (start, preemption, one tick of
billing and progress) applied to all jobs at once, and the availability the decisions see.

Used by :func:`spotshift.simulate.fleet.simulate_fleet`; the arithmetic is the one-job simulator's,
in the same order, so a fleet of one job bills as :mod:`spotshift.simulate.engine` does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np

from spotshift.placement.availability import AvailabilityModel
from spotshift.placement.params import PlacementParams
from spotshift.pricing.egress import egress_usd_per_gb
from spotshift.simulate.accounting import Copies
from spotshift.simulate.market import Market
from spotshift.simulate.policies import simulated_job
from spotshift.simulate.scenario import Scenario


@dataclass(frozen=True)
class FleetJob:
    """One job of the fleet: its scenario, where its data lives, and when it is submitted (tick)."""

    name: str
    scenario: Scenario
    home: str
    submit_tick: int


@dataclass
class FleetResult:
    """Totals of a fleet run and per-job outcomes."""

    jobs: int
    ticks: int
    job_ticks: int = 0
    decide_calls: int = 0
    screened_stays: int = 0
    cost_usd: float = 0.0
    compute_usd: float = 0.0
    egress_usd: float = 0.0
    on_demand_usd: float = 0.0
    deadlines_met: int = 0
    moves: int = 0
    preemptions: int = 0
    actions: dict[str, int] = field(default_factory=dict)
    per_job: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self, with_jobs: bool = False) -> dict[str, Any]:
        """JSON-ready (money to cents)."""
        d = asdict(self)
        if not with_jobs:
            d.pop("per_job")
        for k in ("cost_usd", "compute_usd", "egress_usd", "on_demand_usd"):
            d[k] = round(d[k], 2)
        return d


class FleetState:
    """Per-job constants (work, deadlines, sizes, safety reserves) and state (placement, progress,
    checkpoints, copies, money) of a fleet on one market, as arrays over jobs."""

    def __init__(self, m: Market, jobs: list[FleetJob], p: PlacementParams) -> None:
        self.m, self.p, self.jobs = m, p, jobs
        self.n, self.T, self.dt, self.L = len(jobs), m.n_ticks, m.gap_hours, len(m.locations)
        self.loc_index = {loc: i for i, loc in enumerate(m.locations)}
        L, T = self.L, self.T
        self.spot_px = np.asarray(m.spot, dtype=np.float64).reshape(L, T)
        self.od_px = np.asarray(m.on_demand, dtype=np.float64).reshape(L, T)
        self.avail = np.asarray(m.available, dtype=bool).reshape(L, T)
        self.rate_in = np.array(
            [min((egress_usd_per_gb(a, b) for a in m.locations if a != b), default=0.0) for b in m.locations]
        )
        self._constants()
        self._state()

    def _constants(self) -> None:
        jobs, p, dt, m = self.jobs, self.p, self.dt, self.m
        self.sc_of = sc_of = [j.scenario for j in jobs]
        self.work = np.array([s.work_hours for s in sc_of])
        self.window = np.array([s.deadline_hours for s in sc_of])
        self.deadline_h = np.array([j.submit_tick * dt for j in jobs]) + self.window
        self.submit = np.array([j.submit_tick for j in jobs])
        self.interval = np.array([s.checkpoint_interval_hours for s in sc_of])
        self.data_gb = np.array([s.data_bytes / 1e9 for s in sc_of])
        self.ckpt_gb = np.array([s.ckpt_bytes / 1e9 for s in sc_of])
        self.ckpt_lb_gb = self.ckpt_gb * np.array([min(1.0, s.checkpoint_delta_fraction) for s in sc_of])
        full_copy_h = np.array([p.transfer_hours(s.data_bytes + s.ckpt_bytes) for s in sc_of])
        self.reserve_max = p.changeover_hours + full_copy_h + self.interval + dt
        self.reserve_min = p.changeover_hours + self.interval + dt
        self.restore_h = np.array([p.transfer_hours(s.ckpt_bytes) for s in sc_of])
        self.copies = [Copies(s, j.home, True) for s, j in zip(sc_of, jobs, strict=True)]
        self.tjobs = [simulated_job(m, j.scenario, j.name, j.submit_tick) for j in jobs]
        self.deadlines = [m.time_at(j.submit_tick) + timedelta(hours=j.scenario.deadline_hours) for j in jobs]

    def _state(self) -> None:
        n, L = self.n, self.L
        self.running = np.zeros(n, dtype=bool)
        self.done = np.zeros(n, dtype=bool)
        self.loc = np.zeros(n, dtype=np.int64)
        self.on_spot = np.zeros(n, dtype=bool)
        self.progress = np.zeros(n)
        self.ckpt_progress = np.zeros(n)
        self.overhead = np.zeros(n)
        self.overhead_price = np.full(n, np.nan)
        self.cooldown_until = np.full(n, -1.0)
        self.ckpt_loc = np.full(n, -1, dtype=np.int64)
        self.last_loc = np.full(n, -1, dtype=np.int64)
        self.has_ckpt = np.zeros(n, dtype=bool)
        self.data_at = np.zeros((n, L), dtype=bool)
        self.data_at[np.arange(n), [self.loc_index[j.home] for j in self.jobs]] = True
        self.ckpt_cur = np.zeros((n, L), dtype=bool)
        self.compute = np.zeros(n)
        self.od_usd = np.zeros(n)
        self.egress = np.zeros(n)
        self.moves = np.zeros(n, dtype=np.int64)
        self.preempts = np.zeros(n, dtype=np.int64)
        self.finish = np.full(n, np.nan)
        # a queued job's decision stays valid while nothing it depends on changed
        # (see spotshift.simulate.fleet_screen.screen_queued)
        self.q_valid = np.zeros(n, dtype=bool)
        self.q_epoch = np.full(n, -1, dtype=np.int64)
        self.q_version = np.full(n, -1, dtype=np.int64)
        self.q_avail = np.zeros((n, L), dtype=bool)

    def price(self, t: int) -> np.ndarray:
        """(n,) the price each job's current placement pays at tick ``t``."""
        return np.where(self.on_spot, self.spot_px[self.loc, t], self.od_px[self.loc, t])

    def start(self, i: int, li: int, market_spot: bool, t: int) -> None:
        """(Re)start job ``i`` at location ``li`` (:meth:`PolicyRun.start`, for one job of the fleet)."""
        p = self.p
        name = self.m.locations[li]
        planned = bool(self.running[i])
        sent, usd = self.copies[i].copy_to(name)
        self.egress[i] += usd
        self.data_at[i, li] = True
        if self.has_ckpt[i]:
            self.ckpt_cur[i, li] = True
        if self.last_loc[i] >= 0 and li != self.last_loc[i]:
            self.moves[i] += 1
        if planned:
            self.overhead[i] = p.changeover_hours
            self.overhead_price[i] = (self.spot_px if self.on_spot[i] else self.od_px)[self.loc[i], t]
            self.progress[i] = self.ckpt_progress[i]
        else:
            self.overhead[i] = p.changeover_hours + self.sc_of[i].transfer_hours(sent)
            self.overhead_price[i] = np.nan
        self.running[i] = True
        self.loc[i], self.on_spot[i], self.last_loc[i] = li, market_spot, li
        self.ckpt_loc[i] = -1

    def preempt(self, a_t: np.ndarray) -> None:
        """Spot capacity gone where a job runs: back to its last checkpoint, stopped."""
        lost = self.running & self.on_spot & ~a_t[self.loc]
        for i in np.flatnonzero(lost):
            self.preempts[i] += 1
            self.progress[i] = self.ckpt_progress[i]
            self.running[i] = False
            self.overhead[i] = 0.0

    def advance(self, t: int, price: np.ndarray, active: np.ndarray) -> None:
        """Bill and progress one tick for every running job (:meth:`PolicyRun.advance`, vectorised)."""
        r = self.running & active
        if not r.any():
            return
        dt = self.dt
        used = np.where(r, np.minimum(self.overhead, dt), 0.0)
        over_px = np.where(np.isnan(self.overhead_price), price, self.overhead_price)
        rem = np.maximum(0.0, self.work - self.progress)
        wk = np.where(r, np.minimum(dt - used, rem), 0.0)
        cost = np.where(r, used * over_px + wk * price, 0.0)
        self.compute += cost
        self.od_usd += np.where(r & ~self.on_spot, cost, 0.0)
        self.overhead = self.overhead - used
        before = self.progress.copy()
        self.progress = self.progress + wk
        interval = self.interval
        k_new = np.floor(self.progress / interval + 1e-9)
        crossed = r & (k_new > np.floor(before / interval + 1e-9))
        self.ckpt_progress = np.where(crossed, k_new * interval, self.ckpt_progress)
        for i in np.flatnonzero(crossed & (self.ckpt_loc != self.loc)):
            self.copies[i].checkpoint_written(self.m.locations[self.loc[i]])
            self.ckpt_loc[i] = self.loc[i]
            self.has_ckpt[i] = True
            self.ckpt_cur[i] = False
            self.ckpt_cur[i, self.loc[i]] = True
        fin = r & (self.work - self.progress <= 1e-9)
        if fin.any():
            self.finish[fin] = t * dt + (used + wk)[fin]
            self.done |= fin
            self.running &= ~fin
            self.ckpt_progress = np.where(fin, self.progress, self.ckpt_progress)

    def outcomes(self, res: FleetResult) -> None:
        """Fill ``res`` with each job's outcome and the fleet's totals."""
        dt = self.dt
        for i, j in enumerate(self.jobs):
            finish = self.finish[i]
            met = bool(not math.isnan(finish) and finish <= self.deadline_h[i] + 1e-9)
            res.deadlines_met += met
            res.per_job.append(
                {
                    "job": j.name,
                    "cost_usd": round(float(self.compute[i] + self.egress[i]), 2),
                    "egress_usd": round(float(self.egress[i]), 2),
                    "moves": int(self.moves[i]),
                    "preemptions": int(self.preempts[i]),
                    "finish_hours": None
                    if math.isnan(finish)
                    else round(float(finish - j.submit_tick * dt), 3),
                    "deadline_met": met,
                }
            )
        res.compute_usd = float(self.compute.sum())
        res.egress_usd = float(self.egress.sum())
        res.on_demand_usd = float(self.od_usd.sum())
        res.cost_usd = res.compute_usd + res.egress_usd
        res.moves = int(self.moves.sum())
        res.preemptions = int(self.preempts.sum())


class FleetRisk:
    """Availability learned once for the fleet: the model observes every location each tick and
    publishes its estimates every ``refresh`` ticks (per candidate ``c = 2 l + market``: spot rows
    carry the location's rates, on-demand rows stay 0)."""

    def __init__(self, m: Market, refresh_hours: float) -> None:
        self.m = m
        L = len(m.locations)
        self.model = AvailabilityModel(m.locations, gap_hours=m.gap_hours)
        self.refresh = max(1, int(round(refresh_hours / m.gap_hours)))
        self.risks: dict[str, Any] = {}
        self.rate_c = np.zeros(2 * L)
        self.near_c = np.zeros(2 * L)
        self.near_h_c = np.zeros(2 * L)
        self.outage_max = 0.0
        self.version = -1

    def observe(self, t: int, a_t: np.ndarray) -> None:
        """Observe tick ``t``'s availability; publish new estimates when a refresh is due."""
        locs = self.m.locations
        self.model.observe({l_: bool(a_t[k]) for k, l_ in enumerate(locs)})
        if t % self.refresh == 0:
            risks = self.risks = self.model.risks()
            self.version += 1
            self.rate_c[0::2] = [risks[l_].preemptions_per_hour for l_ in locs]
            self.near_c[0::2] = [risks[l_].near_term_preemptions for l_ in locs]
            self.near_h_c[0::2] = [risks[l_].near_term_hours for l_ in locs]
            self.outage_max = max(r.mean_outage_hours for r in risks.values())
