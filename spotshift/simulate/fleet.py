"""Many jobs on one market: spotshift's policy for a fleet, batched (issue 18, simulator scale).

:func:`simulate_fleet` runs every job of a :class:`FleetJob` list on one
:class:`~spotshift.simulate.market.Market` with the accounting of
:mod:`spotshift.simulate.engine` (billing, overhead, checkpoints, preemptions, delta-sync copies)
and the decision function ``price_change_sensor`` calls, :func:`spotshift.placement.economics.decide`.
Jobs do not compete for capacity (as in the one-job simulator, a trace says whether spot capacity
exists in a location; the fleet does not consume it).

Batched: the job state is a set of numpy arrays (:class:`~spotshift.simulate.fleet_state.FleetState`)
advanced for all jobs at once each tick. Python runs per job only where something happens: a
preemption, a start, and a call of ``decide``. ``decide`` is called for every job that is not
running, and for a running job unless :func:`~spotshift.simulate.fleet_screen.stay_is_certain`
proves, from a bound on every term of the move economics, that ``decide`` would say ``stay`` (or
would change nothing) at this tick. The bound is exact arithmetic on the
same terms, so the batched run makes the same decisions as calling ``decide`` for every job at
every tick (``screen=False`` does that; a test compares both).

Availability is learned once for the fleet (one :class:`~spotshift.placement.availability.AvailabilityModel`
observing every location each tick), as the sensor learns from the notices of all jobs.
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import numpy as np

from spotshift.errors import ConfigError
from spotshift.placement.decision import DecisionInputs, Placement
from spotshift.placement.economics import decide
from spotshift.placement.params import PlacementParams
from spotshift.simulate.accounting import NO_SPOT_REASON
from spotshift.simulate.fleet_screen import screen_queued, screen_running
from spotshift.simulate.fleet_state import FleetJob, FleetResult, FleetRisk, FleetState
from spotshift.simulate.market import Market
from spotshift.simulate.scenario import Scenario

__all__ = ["FleetJob", "FleetResult", "generate_fleet", "simulate_fleet"]


def generate_fleet(
    m: Market,
    n_jobs: int,
    *,
    seed: int = 0,
    work_hours: tuple[float, float] = (24.0, 240.0),
    slack: tuple[float, float] = (1.3, 2.0),
    data_gb: tuple[float, float] = (50.0, 2000.0),
    ckpt_gb: tuple[float, float] = (10.0, 300.0),
) -> list[FleetJob]:
    """``n_jobs`` jobs submitted over the market's horizon, each due inside it.

    Work hours, deadline as a multiple of the work (``slack``), dataset and checkpoint sizes are
    drawn uniformly from the ranges; the data's home is a random location; the submission tick is
    uniform over the ticks that leave room for the deadline. Deterministic for ``seed``.
    """
    if n_jobs < 1:
        raise ConfigError(f"fleet size must be >= 1, got {n_jobs}")
    rng = random.Random(seed)
    horizon = m.n_ticks * m.gap_hours
    out = []
    for k in range(n_jobs):
        work = rng.uniform(*work_hours)
        deadline = min(work * rng.uniform(*slack), horizon - m.gap_hours)
        if deadline < work:
            raise ConfigError(
                f"market horizon {horizon:g} h is too short for {work:.0f} h of work; widen it or shrink the jobs"
            )
        sc = Scenario(
            work_hours=work,
            deadline_hours=deadline,
            data_gb=rng.uniform(*data_gb),
            ckpt_gb=rng.uniform(*ckpt_gb),
            checkpoint_interval_hours=0.25,
            changeover_hours=0.25,
        )
        last = max(0, int((horizon - deadline) / m.gap_hours) - 1)
        out.append(FleetJob(f"job-{k:05d}", sc, rng.choice(m.locations), rng.randint(0, last)))
    return out


def simulate_fleet(
    m: Market,
    jobs: list[FleetJob],
    *,
    params: PlacementParams | None = None,
    screen: bool = True,
    risk_refresh_hours: float = 1.0,
) -> FleetResult:
    """Run spotshift's policy for every job of ``jobs`` on ``m`` (see the module doc).

    ``risk_refresh_hours``: how often the availability estimates the decisions see are published
    (the model observes every tick; decisions use the latest publication). ``screen=False`` calls
    :func:`decide` for every active job at every tick (the reference the batched run must equal).
    """
    p = (params or PlacementParams()).with_(decision_interval_hours=m.gap_hours)
    for j in jobs:
        if j.home not in m.locations:
            raise ConfigError(f"fleet job {j.name}: data location {j.home!r} is not in the market")
        if j.scenario.changeover_hours != p.changeover_hours or j.scenario.transfer_gbps != p.transfer_gbps:
            raise ConfigError(
                f"fleet job {j.name}: changeover and transfer speed must match the placement params"
            )
    st = FleetState(m, jobs, p)
    risk = FleetRisk(m, risk_refresh_hours)
    res = FleetResult(jobs=st.n, ticks=st.T)
    quotes_cache: dict[int, list[Any]] = {}
    for t in range(st.T):
        a_t = st.avail[:, t]
        risk.observe(t, a_t)
        active = (st.submit <= t) & ~st.done
        if not active.any():
            if (st.submit > t).any():
                continue
            break
        st.preempt(a_t)
        price = st.price(t)
        remaining = np.maximum(0.0, st.work - st.progress)
        time_left = st.deadline_h - t * st.dt
        slack = time_left - remaining
        todo = active.copy()
        if screen:
            res.screened_stays += screen_running(st, risk, t, todo, price, remaining, slack)
            res.screened_stays += screen_queued(st, risk, t, todo, remaining, time_left, slack)
        idx = np.flatnonzero(todo)
        if len(idx):
            _decide(st, risk, res, idx.tolist(), t, price, remaining, quotes_cache)
            price = st.price(t)
        res.job_ticks += int(active.sum())
        st.advance(t, price, active)
    st.outcomes(res)
    return res


def _decide(
    st: FleetState,
    risk: FleetRisk,
    res: FleetResult,
    idx: list[int],
    t: int,
    price: np.ndarray,
    remaining: np.ndarray,
    quotes_cache: dict[int, list[Any]],
) -> None:
    """Call :func:`decide` for jobs ``idx`` at tick ``t`` and carry out what it says."""
    m, p = st.m, st.p
    ep = m.epoch[t]
    a_t = st.avail[:, t]
    quotes = quotes_cache.get(ep)
    if quotes is None:
        quotes_cache.clear()
        quotes = quotes_cache[ep] = m.quotes(t)
    no_spot = {l_: NO_SPOT_REASON for k, l_ in enumerate(m.locations) if not a_t[k]}
    now = m.time_at(t)
    for i in idx:
        running = bool(st.running[i])
        cur = None
        if running:
            market = "spot" if st.on_spot[i] else "on_demand"
            cur = Placement(m.locations[st.loc[i]], market, m.instance_type, "", float(price[i]))
        cd = st.cooldown_until[i]
        inputs = DecisionInputs(
            job=st.tjobs[i],
            quotes=quotes,
            now=now,
            remaining_hours=float(remaining[i]),
            footprint=st.copies[i].footprint(),
            current=cur,
            current_running=cur is not None,
            checkpoint_age_hours=float(st.progress[i] - st.ckpt_progress[i]) if running else 0.0,
            risks=risk.risks,
            no_spot=no_spot,
            cooldown_until=m.start + timedelta(hours=float(cd)) if cd >= 0 else None,
            deadline_at=st.deadlines[i],
            snapshot_id=f"epoch-{ep}",
        )
        d = decide(inputs, p)
        res.decide_calls += 1
        res.actions[d.action] = res.actions.get(d.action, 0) + 1
        st.q_valid[i] = d.action == "queue" and not running
        if st.q_valid[i]:
            st.q_epoch[i], st.q_version[i] = ep, risk.version
            st.q_avail[i] = a_t
        if d.target is None or not d.changes_placement:
            continue
        q = d.target.quote
        st.start(i, st.loc_index[q.location], q.market == "spot", t)
        if running and d.action == "move":
            st.cooldown_until[i] = t * st.dt + p.cooldown_hours
