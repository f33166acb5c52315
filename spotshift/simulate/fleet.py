"""Many jobs on one market: spotshift's policy for a fleet, batched (issue 18, simulator scale).

:func:`simulate_fleet` runs every job of a :class:`FleetJob` list on one
:class:`~spotshift.simulate.market.Market` with the accounting of
:mod:`spotshift.simulate.engine` (billing, overhead, checkpoints, preemptions, delta-sync copies)
and the decision function ``price_change_sensor`` calls, :func:`spotshift.placement.economics.decide`.
Jobs do not compete for capacity (as in the one-job simulator, a trace says whether spot capacity
exists in a location; the fleet does not consume it).

Batched: the job state is a set of numpy arrays advanced for all jobs at once each tick. Python runs
per job only where something happens: a preemption, a start, and a call of ``decide``. ``decide``
is called for every job that is not running, and for a running job unless
:func:`stay_is_certain` proves, from a bound on every term of the move economics, that ``decide``
would say ``stay`` (or would change nothing) at this tick. The bound is exact arithmetic on the
same terms, so the batched run makes the same decisions as calling ``decide`` for every job at
every tick (``screen=False`` does that; a test compares both).

Availability is learned once for the fleet (one :class:`~spotshift.placement.availability.AvailabilityModel`
observing every location each tick), as the sensor learns from the notices of all jobs.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np

from spotshift.errors import ConfigError
from spotshift.jobs import TrainingJob
from spotshift.placement.economics import DecisionInputs, Placement, decide
from spotshift.placement.params import PlacementParams
from spotshift.placement.risk import OnlineRiskEstimator
from spotshift.simulate.engine import NO_SPOT_REASON, Scenario, _Copies
from spotshift.simulate.market import Market


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


def stay_is_certain(
    *,
    price: np.ndarray,
    spot: np.ndarray,
    remaining: np.ndarray,
    slack: np.ndarray,
    reserve_max: np.ndarray,
    reserve_min: np.ndarray,
    in_cooldown: np.ndarray,
    rate: np.ndarray,
    per_preemption_hours: np.ndarray,
    cheapest_price: float,
    params: PlacementParams,
) -> np.ndarray:
    """For running jobs (arrays over jobs): True where :func:`decide` is certain to leave the job where
    it is, so calling it can be skipped.

    * on-demand with ``slack <= reserve_min``: the deadline safety net holds it there;
    * otherwise only when the safety net cannot fire (``slack > reserve_max``, the reserve with the
      largest possible copy) and either the job is in its cooldown, or no alternative can pay:
      for every alternative ``c``, ``net_c <= (price - cheapest_price) x remaining - downtime +
      current_risk`` (egress, staleness and the target's risk are >= 0, its effective price is >=
      the cheapest quote), and that bound is <= the hysteresis margin.

    ``rate`` is the current location's preemptions per hour (0 on on-demand); ``per_preemption_hours``
    the hours one preemption costs (changeover + half a checkpoint interval + restore copy).
    """
    p = params
    held = ~spot & (slack <= reserve_min - 1e-9)
    free = slack > reserve_max + 1e-9
    cur_risk = np.where(spot, rate * remaining * price * per_preemption_hours, 0.0)
    bound = (price - cheapest_price) * remaining - p.changeover_hours * price + cur_risk
    margin = np.maximum(p.margin_min_usd, p.margin_fraction * price * remaining)
    cannot_pay = bound < margin - 1e-6
    return np.isfinite(price) & (held | (free & (in_cooldown | cannot_pay)))


def simulate_fleet(
    m: Market,
    jobs: list[FleetJob],
    *,
    params: PlacementParams | None = None,
    screen: bool = True,
) -> FleetResult:
    """Run spotshift's policy for every job of ``jobs`` on ``m`` (see the module doc)."""
    n = len(jobs)
    T = m.n_ticks
    dt = m.gap_hours
    L = len(m.locations)
    loc_index = {loc: i for i, loc in enumerate(m.locations)}
    p = (params or PlacementParams()).with_(decision_interval_hours=dt)
    for j in jobs:
        if j.home not in loc_index:
            raise ConfigError(f"fleet job {j.name}: data location {j.home!r} is not in the market")
        if j.scenario.changeover_hours != p.changeover_hours or j.scenario.transfer_gbps != p.transfer_gbps:
            raise ConfigError(
                f"fleet job {j.name}: changeover and transfer speed must match the placement params"
            )
    spot_px = np.asarray(m.spot, dtype=np.float64).reshape(L, T)
    od_px = np.asarray(m.on_demand, dtype=np.float64).reshape(L, T)
    avail = np.asarray(m.available, dtype=bool).reshape(L, T)
    with np.errstate(all="ignore"):
        cheapest = np.nanmin(np.concatenate([spot_px, od_px]), axis=0)
    # per-job constants
    work = np.array([j.scenario.work_hours for j in jobs])
    deadline_h = np.array([j.submit_tick * dt + j.scenario.deadline_hours for j in jobs])
    submit = np.array([j.submit_tick for j in jobs])
    interval = np.array([j.scenario.checkpoint_interval_hours for j in jobs])
    full_copy_h = np.array([p.transfer_hours(j.scenario.data_bytes + j.scenario.ckpt_bytes) for j in jobs])
    reserve_max = p.changeover_hours + full_copy_h + interval + dt
    reserve_min = p.changeover_hours + interval + dt
    per_pre_h = np.array(
        [
            p.changeover_hours
            + j.scenario.checkpoint_interval_hours / 2
            + p.transfer_hours(j.scenario.ckpt_bytes)
            for j in jobs
        ]
    )
    # per-job state
    running = np.zeros(n, dtype=bool)
    done = np.zeros(n, dtype=bool)
    loc = np.zeros(n, dtype=np.int64)
    on_spot = np.zeros(n, dtype=bool)
    progress = np.zeros(n)
    ckpt_progress = np.zeros(n)
    overhead = np.zeros(n)
    overhead_price = np.full(n, np.nan)
    cooldown_until = np.full(n, -1.0)
    ckpt_loc = np.full(n, -1, dtype=np.int64)
    last_loc = np.full(n, -1, dtype=np.int64)
    compute = np.zeros(n)
    od_usd = np.zeros(n)
    egress = np.zeros(n)
    moves = np.zeros(n, dtype=np.int64)
    preempts = np.zeros(n, dtype=np.int64)
    finish = np.full(n, np.nan)
    copies = [_Copies(j.scenario, j.home, True) for j in jobs]
    tjobs = [
        TrainingJob(
            name=j.name,
            dataset="simulated",
            total_steps=max(1, int(round(j.scenario.work_hours * 100))),
            work_hours=j.scenario.work_hours,
            checkpoint_every_minutes=j.scenario.checkpoint_interval_hours * 60.0,
            gpu_model=m.gpu_model,
            gpu_count=m.gpu_count,
            submitted_at=m.time_at(j.submit_tick).isoformat(),
            deadline_hours=j.scenario.deadline_hours,
        )
        for j in jobs
    ]
    deadlines = [m.time_at(j.submit_tick) + timedelta(hours=j.scenario.deadline_hours) for j in jobs]
    res = FleetResult(jobs=n, ticks=T)
    risk = OnlineRiskEstimator(m.locations, gap_hours=dt)
    quotes_cache: dict[int, list[Any]] = {}

    def start(i: int, li: int, market_spot: bool, t: int) -> None:
        name = m.locations[li]
        planned = bool(running[i])
        sent, usd = copies[i].copy_to(name)
        egress[i] += usd
        if last_loc[i] >= 0 and li != last_loc[i]:
            moves[i] += 1
        if planned:
            overhead[i] = p.changeover_hours
            overhead_price[i] = (spot_px if on_spot[i] else od_px)[loc[i], t]
            progress[i] = ckpt_progress[i]
        else:
            overhead[i] = p.changeover_hours + jobs[i].scenario.transfer_hours(sent)
            overhead_price[i] = np.nan
        running[i] = True
        loc[i], on_spot[i], last_loc[i] = li, market_spot, li
        ckpt_loc[i] = -1

    for t in range(T):
        a_t = avail[:, t]
        risk.observe({l_: bool(a_t[k]) for k, l_ in enumerate(m.locations)})
        active = (submit <= t) & ~done
        if not active.any():
            if (submit > t).any():
                continue
            break
        # preemptions: spot capacity gone where a job runs
        lost = running & on_spot & ~a_t[loc]
        for i in np.flatnonzero(lost):
            preempts[i] += 1
            progress[i] = ckpt_progress[i]
            running[i] = False
            overhead[i] = 0.0
        price = np.where(on_spot, spot_px[loc, t], od_px[loc, t])
        remaining = np.maximum(0.0, work - progress)
        time_left = deadline_h - t * dt
        # decisions
        todo = active.copy()
        if screen:
            risks_now = risk.risks()
            rate_loc = np.array([risks_now[l_].preemptions_per_hour for l_ in m.locations])
            skip = running & stay_is_certain(
                price=price,
                spot=on_spot,
                remaining=remaining,
                slack=time_left - remaining,
                reserve_max=reserve_max,
                reserve_min=reserve_min,
                in_cooldown=cooldown_until > t * dt,
                rate=rate_loc[loc],
                per_preemption_hours=per_pre_h,
                cheapest_price=float(cheapest[t]),
                params=p,
            )
            res.screened_stays += int((skip & active).sum())
            todo &= ~skip
        idx = np.flatnonzero(todo)
        if len(idx):
            ep = m.epoch[t]
            quotes = quotes_cache.get(ep)
            if quotes is None:
                quotes_cache.clear()
                quotes = quotes_cache[ep] = m.quotes(t)
            no_spot = {l_: NO_SPOT_REASON for k, l_ in enumerate(m.locations) if not a_t[k]}
            risks = risk.risks()
            now = m.time_at(t)
            for i in idx.tolist():
                cur = None
                if running[i]:
                    cur = Placement(
                        m.locations[loc[i]],
                        "spot" if on_spot[i] else "on_demand",
                        m.instance_type,
                        "",
                        float(price[i]),
                    )
                cd = cooldown_until[i]
                inputs = DecisionInputs(
                    job=tjobs[i],
                    quotes=quotes,
                    now=now,
                    remaining_hours=float(remaining[i]),
                    footprint=copies[i].footprint(),
                    current=cur,
                    current_running=cur is not None,
                    checkpoint_age_hours=float(progress[i] - ckpt_progress[i]) if running[i] else 0.0,
                    risks=risks,
                    no_spot=no_spot,
                    cooldown_until=m.start + timedelta(hours=float(cd)) if cd >= 0 else None,
                    deadline_at=deadlines[i],
                    snapshot_id=f"epoch-{ep}",
                )
                d = decide(inputs, p)
                res.decide_calls += 1
                res.actions[d.action] = res.actions.get(d.action, 0) + 1
                if d.target is None or not d.changes_placement:
                    continue
                q = d.target.quote
                planned = bool(running[i])
                start(i, loc_index[q.location], q.market == "spot", t)
                if planned and d.action == "move":
                    cooldown_until[i] = t * dt + p.cooldown_hours
            price = np.where(on_spot, spot_px[loc, t], od_px[loc, t])
        # advance one tick for every running job (engine._Run.advance, vectorised)
        r = running & active
        res.job_ticks += int(active.sum())
        if not r.any():
            continue
        used = np.where(r, np.minimum(overhead, dt), 0.0)
        over_px = np.where(np.isnan(overhead_price), price, overhead_price)
        rem = np.maximum(0.0, work - progress)
        wk = np.where(r, np.minimum(dt - used, rem), 0.0)
        cost = np.where(r, used * over_px + wk * price, 0.0)
        compute += cost
        od_usd += np.where(r & ~on_spot, cost, 0.0)
        overhead = overhead - used
        before = progress.copy()
        progress = progress + wk
        k_new = np.floor(progress / interval + 1e-9)
        crossed = r & (k_new > np.floor(before / interval + 1e-9))
        ckpt_progress = np.where(crossed, k_new * interval, ckpt_progress)
        for i in np.flatnonzero(crossed & (ckpt_loc != loc)):
            copies[i].checkpoint_written(m.locations[loc[i]])
            ckpt_loc[i] = loc[i]
        fin = r & (work - progress <= 1e-9)
        if fin.any():
            finish[fin] = t * dt + (used + wk)[fin]
            done |= fin
            running &= ~fin
            ckpt_progress = np.where(fin, progress, ckpt_progress)
    for i, j in enumerate(jobs):
        met = bool(not math.isnan(finish[i]) and finish[i] <= deadline_h[i] + 1e-9)
        res.deadlines_met += met
        res.per_job.append(
            {
                "job": j.name,
                "cost_usd": round(float(compute[i] + egress[i]), 2),
                "egress_usd": round(float(egress[i]), 2),
                "moves": int(moves[i]),
                "preemptions": int(preempts[i]),
                "finish_hours": None
                if math.isnan(finish[i])
                else round(float(finish[i] - j.submit_tick * dt), 3),
                "deadline_met": met,
            }
        )
    res.compute_usd = float(compute.sum())
    res.egress_usd = float(egress.sum())
    res.on_demand_usd = float(od_usd.sum())
    res.cost_usd = res.compute_usd + res.egress_usd
    res.moves = int(moves.sum())
    res.preemptions = int(preempts.sum())
    return res
