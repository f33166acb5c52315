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
from spotshift.placement.availability import AvailabilityModel
from spotshift.placement.decision import DecisionInputs, Placement
from spotshift.placement.economics import decide
from spotshift.placement.horizon import expected_preemptions_array
from spotshift.placement.params import PlacementParams
from spotshift.pricing.egress import egress_usd_per_gb
from spotshift.simulate.engine import NO_SPOT_REASON, Scenario, _Copies, simulated_job
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
    cur_loc: np.ndarray,
    remaining: np.ndarray,
    slack: np.ndarray,
    reserve_max: np.ndarray,
    reserve_min: np.ndarray,
    expected_preemptions: np.ndarray,
    per_preemption_hours: np.ndarray,
    ckpt_age: np.ndarray,
    egress_lb: np.ndarray,
    cand_price: np.ndarray,
    params: PlacementParams,
) -> np.ndarray:
    """For running jobs (arrays over jobs ``n``; candidates ``c = 2 l + market`` over the market's
    locations): True where :func:`decide` is certain to leave the job where it is, so calling it
    can be skipped.

    * on-demand with ``slack <= reserve_min``: the deadline safety net holds it there;
    * otherwise only when the safety net cannot fire (``slack > reserve_max``, the reserve with the
      largest possible copy) and no alternative can pay (inside the cooldown only a move that pays
      can happen, one ahead of a predicted interruption, so the same bound serves there): for
      every candidate ``c`` that is not the current placement and can run now (``cand_price``
      finite: priced, and spot with capacity), the move's net with every term of
      :class:`~spotshift.placement.decision.MoveTerms` (savings, downtime, staleness, risk at the
      target and here) and egress at its lower bound ``egress_lb`` (n, c) is <= the hysteresis
      margin. Feasibility and the ``max_alternatives`` cut only remove alternatives, so they are
      not needed for the bound.

    ``expected_preemptions`` (n, c): each candidate's expected preemptions over each job's remaining
    hours (:func:`spotshift.placement.horizon.expected_preemptions_array`; 0 for on-demand);
    ``per_preemption_hours`` (n,) the hours one preemption costs the job (changeover + half a
    checkpoint interval + restore).
    """
    p = params
    held = ~spot & (slack <= reserve_min - 1e-9)
    free = slack > reserve_max + 1e-9
    cur = 2 * cur_loc + (~spot).astype(np.int64)
    rows = np.arange(len(cur))
    cur_risk = expected_preemptions[rows, cur] * per_preemption_hours * price
    with np.errstate(invalid="ignore"):
        net = (
            (price[:, None] - cand_price[None, :]) * remaining[:, None]
            - egress_lb
            - (p.changeover_hours * price)[:, None]
            - ckpt_age[:, None] * cand_price[None, :]
            - expected_preemptions * per_preemption_hours[:, None] * cand_price[None, :]
            + cur_risk[:, None]
        )
    net = np.where(np.isfinite(cand_price)[None, :], net, -np.inf)
    net[rows, cur] = -np.inf
    margin = np.maximum(p.margin_min_usd, p.margin_fraction * price * remaining)
    cannot_pay = net.max(axis=1, initial=-np.inf) < margin - 1e-6
    return np.isfinite(price) & (held | (free & cannot_pay))


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
    rate_in = np.array(
        [min((egress_usd_per_gb(a, b) for a in m.locations if a != b), default=0.0) for b in m.locations]
    )
    # per-job constants
    sc_of = [j.scenario for j in jobs]
    work = np.array([s.work_hours for s in sc_of])
    window = np.array([s.deadline_hours for s in sc_of])
    deadline_h = np.array([j.submit_tick * dt for j in jobs]) + window
    submit = np.array([j.submit_tick for j in jobs])
    interval = np.array([s.checkpoint_interval_hours for s in sc_of])
    data_gb = np.array([s.data_bytes / 1e9 for s in sc_of])
    ckpt_gb = np.array([s.ckpt_bytes / 1e9 for s in sc_of])
    ckpt_lb_gb = ckpt_gb * np.array([min(1.0, s.checkpoint_delta_fraction) for s in sc_of])
    full_copy_h = np.array([p.transfer_hours(s.data_bytes + s.ckpt_bytes) for s in sc_of])
    reserve_max = p.changeover_hours + full_copy_h + interval + dt
    reserve_min = p.changeover_hours + interval + dt
    restore_h = np.array([p.transfer_hours(s.ckpt_bytes) for s in sc_of])
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
    has_ckpt = np.zeros(n, dtype=bool)
    data_at = np.zeros((n, L), dtype=bool)
    data_at[np.arange(n), [loc_index[j.home] for j in jobs]] = True
    ckpt_cur = np.zeros((n, L), dtype=bool)
    compute = np.zeros(n)
    od_usd = np.zeros(n)
    egress = np.zeros(n)
    moves = np.zeros(n, dtype=np.int64)
    preempts = np.zeros(n, dtype=np.int64)
    finish = np.full(n, np.nan)
    # a queued job's decision stays valid while nothing it depends on changed (see _queue_holds)
    q_valid = np.zeros(n, dtype=bool)
    q_epoch = np.full(n, -1, dtype=np.int64)
    q_version = np.full(n, -1, dtype=np.int64)
    q_avail = np.zeros((n, L), dtype=bool)
    copies = [_Copies(s, j.home, True) for s, j in zip(sc_of, jobs, strict=True)]
    tjobs = [simulated_job(m, j.scenario, j.name, j.submit_tick) for j in jobs]
    deadlines = [m.time_at(j.submit_tick) + timedelta(hours=j.scenario.deadline_hours) for j in jobs]
    res = FleetResult(jobs=n, ticks=T)
    model = AvailabilityModel(m.locations, gap_hours=dt)
    refresh = max(1, int(round(risk_refresh_hours / dt)))
    risks: dict[str, Any] = {}
    rate_c = np.zeros(2 * L)
    near_c = np.zeros(2 * L)
    near_h_c = np.zeros(2 * L)
    outage_max = 0.0
    version = -1
    quotes_cache: dict[int, list[Any]] = {}

    def start(i: int, li: int, market_spot: bool, t: int) -> None:
        name = m.locations[li]
        planned = bool(running[i])
        sent, usd = copies[i].copy_to(name)
        egress[i] += usd
        data_at[i, li] = True
        if has_ckpt[i]:
            ckpt_cur[i, li] = True
        if last_loc[i] >= 0 and li != last_loc[i]:
            moves[i] += 1
        if planned:
            overhead[i] = p.changeover_hours
            overhead_price[i] = (spot_px if on_spot[i] else od_px)[loc[i], t]
            progress[i] = ckpt_progress[i]
        else:
            overhead[i] = p.changeover_hours + sc_of[i].transfer_hours(sent)
            overhead_price[i] = np.nan
        running[i] = True
        loc[i], on_spot[i], last_loc[i] = li, market_spot, li
        ckpt_loc[i] = -1

    for t in range(T):
        a_t = avail[:, t]
        model.observe({l_: bool(a_t[k]) for k, l_ in enumerate(m.locations)})
        if t % refresh == 0:
            risks = model.risks()
            version += 1
            rate_c[0::2] = [risks[l_].preemptions_per_hour for l_ in m.locations]
            near_c[0::2] = [risks[l_].near_term_preemptions for l_ in m.locations]
            near_h_c[0::2] = [risks[l_].near_term_hours for l_ in m.locations]
            outage_max = max(r.mean_outage_hours for r in risks.values())
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
        slack = time_left - remaining
        ep = m.epoch[t]
        todo = active.copy()
        if screen:
            cand_price = np.empty(2 * L)
            cand_price[0::2] = np.where(a_t, spot_px[:, t], np.nan)
            cand_price[1::2] = od_px[:, t]
            cand_price = np.where(np.isnan(cand_price), np.inf, cand_price)
            cand_price = np.where(np.isinf(cand_price), np.nan, cand_price)
            ri = np.flatnonzero(running & active)
            if len(ri):
                data_miss = ~data_at[ri]
                ckpt_miss = has_ckpt[ri, None] & ~ckpt_cur[ri]
                e_loc = (data_miss * data_gb[ri, None] + ckpt_miss * ckpt_lb_gb[ri, None]) * rate_in[None, :]
                skip = stay_is_certain(
                    price=price[ri],
                    spot=on_spot[ri],
                    cur_loc=loc[ri],
                    remaining=remaining[ri],
                    slack=slack[ri],
                    reserve_max=reserve_max[ri],
                    reserve_min=reserve_min[ri],
                    expected_preemptions=expected_preemptions_array(
                        rate_c[None, :], near_c[None, :], near_h_c[None, :], remaining[ri, None]
                    ),
                    per_preemption_hours=p.changeover_hours
                    + interval[ri] / 2
                    + np.where(has_ckpt[ri], restore_h[ri], 0.0),
                    ckpt_age=progress[ri] - ckpt_progress[ri],
                    egress_lb=np.repeat(e_loc, 2, axis=1),
                    cand_price=cand_price,
                    params=p,
                )
                todo[ri[skip]] = False
                res.screened_stays += int(skip.sum())
            qi = np.flatnonzero(active & ~running & q_valid)
            if len(qi):
                ok = (
                    (q_epoch[qi] == ep)
                    & (q_version[qi] == version)
                    & ~(a_t[None, :] & ~q_avail[qi]).any(axis=1)
                    & (slack[qi] > reserve_max[qi] + 1e-9)
                    & (remaining[qi] <= work[qi] * (time_left[qi] - outage_max) / window[qi] - 1e-9)
                )
                todo[qi[ok]] = False
                res.screened_stays += int(ok.sum())
        idx = np.flatnonzero(todo)
        if len(idx):
            quotes = quotes_cache.get(ep)
            if quotes is None:
                quotes_cache.clear()
                quotes = quotes_cache[ep] = m.quotes(t)
            no_spot = {l_: NO_SPOT_REASON for k, l_ in enumerate(m.locations) if not a_t[k]}
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
                q_valid[i] = d.action == "queue" and not running[i]
                if q_valid[i]:
                    q_epoch[i], q_version[i] = ep, version
                    q_avail[i] = a_t
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
            has_ckpt[i] = True
            ckpt_cur[i] = False
            ckpt_cur[i, loc[i]] = True
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
