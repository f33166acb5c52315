"""The fleet simulator's screen: which jobs need no :func:`~spotshift.placement.economics.decide`
call at a tick because its answer is certain (see :mod:`spotshift.simulate.fleet`).

:func:`stay_is_certain` bounds every term of the move economics for running jobs;
:func:`screen_queued` keeps a queued job's last decision while nothing it depends on changed.
"""

from __future__ import annotations

import numpy as np

from spotshift.placement.horizon import expected_preemptions_array
from spotshift.placement.params import PlacementParams
from spotshift.simulate.fleet_state import FleetRisk, FleetState


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


def screen_running(
    st: FleetState,
    risk: FleetRisk,
    t: int,
    todo: np.ndarray,
    price: np.ndarray,
    remaining: np.ndarray,
    slack: np.ndarray,
) -> int:
    """Clear ``todo`` for the running jobs :func:`stay_is_certain` proves would stay at tick ``t``;
    returns how many."""
    p, L, a_t = st.p, st.L, st.avail[:, t]
    cand_price = np.empty(2 * L)
    cand_price[0::2] = np.where(a_t, st.spot_px[:, t], np.nan)
    cand_price[1::2] = st.od_px[:, t]
    cand_price = np.where(np.isnan(cand_price), np.inf, cand_price)
    cand_price = np.where(np.isinf(cand_price), np.nan, cand_price)
    ri = np.flatnonzero(st.running & todo)
    if not len(ri):
        return 0
    data_miss = ~st.data_at[ri]
    ckpt_miss = st.has_ckpt[ri, None] & ~st.ckpt_cur[ri]
    e_loc = (data_miss * st.data_gb[ri, None] + ckpt_miss * st.ckpt_lb_gb[ri, None]) * st.rate_in[None, :]
    skip = stay_is_certain(
        price=price[ri],
        spot=st.on_spot[ri],
        cur_loc=st.loc[ri],
        remaining=remaining[ri],
        slack=slack[ri],
        reserve_max=st.reserve_max[ri],
        reserve_min=st.reserve_min[ri],
        expected_preemptions=expected_preemptions_array(
            risk.rate_c[None, :], risk.near_c[None, :], risk.near_h_c[None, :], remaining[ri, None]
        ),
        per_preemption_hours=p.changeover_hours
        + st.interval[ri] / 2
        + np.where(st.has_ckpt[ri], st.restore_h[ri], 0.0),
        ckpt_age=st.progress[ri] - st.ckpt_progress[ri],
        egress_lb=np.repeat(e_loc, 2, axis=1),
        cand_price=cand_price,
        params=p,
    )
    todo[ri[skip]] = False
    return int(skip.sum())


def screen_queued(
    st: FleetState,
    risk: FleetRisk,
    t: int,
    todo: np.ndarray,
    remaining: np.ndarray,
    time_left: np.ndarray,
    slack: np.ndarray,
) -> int:
    """Clear ``todo`` for the queued jobs whose last ``queue`` decision still holds: same price epoch
    and risk publication, no location gained capacity, the safety net cannot fire and the job is
    ahead of uniform progress by the longest mean outage. Returns how many."""
    a_t = st.avail[:, t]
    qi = np.flatnonzero(todo & ~st.running & st.q_valid)
    if not len(qi):
        return 0
    ok = (
        (st.q_epoch[qi] == st.m.epoch[t])
        & (st.q_version[qi] == risk.version)
        & ~(a_t[None, :] & ~st.q_avail[qi]).any(axis=1)
        & (slack[qi] > st.reserve_max[qi] + 1e-9)
        & (remaining[qi] <= st.work[qi] * (time_left[qi] - risk.outage_max) / st.window[qi] - 1e-9)
    )
    todo[qi[ok]] = False
    return int(ok.sum())
