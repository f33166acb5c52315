"""The offline optimum: the cheapest way to finish the job by its deadline, knowing the future.

:func:`offline_optimum` solves a dynamic programme over the simulator's tick grid. Unlike
:func:`spotshift.simulate.policies.hindsight_bound` (the cheapest hours anywhere, as if moves were free
and spot never preempted), it pays for everything a real plan pays for:

* **compute** at each tick's price of the placement it runs on (spot only while capacity exists;
  a spot placement whose capacity goes away is preempted);
* **moves**: egress of the checkpoint (when one exists) from where the job ran, and of the dataset
  when the target is neither the data's home nor the region the job comes from (from the cheaper of
  the two), at :mod:`spotshift.pricing.egress` rates;
* **downtime**: a planned move (the job still runs) bills the changeover at the source's price; a
  cold start (first start, after a preemption or a stop) waits changeover + copy time at the new
  price; both resume from the last checkpoint, so the work since it is redone;
* **waits**: the job may stop (at no cost, back to its last checkpoint) and wait for cheaper or
  available capacity;
* **the deadline**: only plans that finish by it count.

The state is (tick, placement, work done): placement is running on spot or on-demand in a
location, or stopped with the checkpoint in a location. Work is counted in whole ticks of work.

Where the tick grid cannot represent the simulator exactly the programme is **favourable** to the
optimum, so a policy's ratio to it is not flattered: overheads are rounded *down* to whole ticks, a
checkpoint written inside a tick counts from the next whole tick, a stale checkpoint replica costs
only its delta, and the dataset needs no copy-in time beyond the changeover for a planned move
(it is pre-staged, as in the simulator). One simplification is not favourable: the programme does
not remember which regions already hold a dataset replica, so a return to a region (other than the
one the job comes from and the data's home) copies the dataset again. With the egress rates of
the price history this is small next to the compute bill, and the optimum rarely revisits.

Cost: O(ticks x locations x source groups x work ticks) with numpy over the work axis (source
locations with the same egress rates to every target form one group: a continent of one provider);
only the work counts that can still finish by the deadline are carried. A 700-hour deadline on
10-minute ticks with 9 locations takes about 10 s of CPU.
"""

from __future__ import annotations

import math

import numpy as np

from spotshift.pricing.egress import egress_usd_per_gb
from spotshift.simulate.market import Market
from spotshift.simulate.scenario import PolicyResult, Scenario

NAME = "optimum"


def _checkpoint_index(n_work: int, gap: float, interval: float) -> np.ndarray:
    """For each work count w (ticks), the work count the last checkpoint holds (favourably rounded up
    to a whole tick, never above w)."""
    w = np.arange(n_work + 1)
    hours = np.floor(w * gap / interval + 1e-9) * interval
    c = np.ceil(hours / gap - 1e-9).astype(np.int64)
    return np.minimum(c, w)


class _MinPlus:
    """``out[b] = min over a != b of src[a] + cost[a, b]`` for arrays ``src`` (L, n), using groups of
    sources whose cost to every other target is the same (one top-2 per group instead of L rows)."""

    def __init__(self, cost: np.ndarray) -> None:
        n = cost.shape[0]
        groups: list[list[int]] = []
        for a in range(n):
            for g in groups:
                members = [*g, a]
                if all(len({cost[x, b] for x in members if x != b}) <= 1 for b in range(n)):
                    g.append(a)
                    break
            else:
                groups.append([a])
        self.groups = [np.array(g) for g in groups]
        self.edge = np.full((len(groups), n), np.inf)  # [group, target]
        for gi, g in enumerate(groups):
            for b in range(n):
                others = [x for x in g if x != b]
                if others:
                    self.edge[gi, b] = cost[others[0], b]

    def __call__(self, src: np.ndarray) -> np.ndarray:
        n_t = self.edge.shape[1]
        out = np.full((n_t, src.shape[1]), np.inf)
        targets = np.arange(n_t)[:, None]
        for gi, g in enumerate(self.groups):
            sub = src[g]
            if len(g) == 1:
                m1 = sub[0]
                if not np.isfinite(m1).any():
                    continue
                best = np.broadcast_to(m1, out.shape).copy()
                best[g[0]] = np.inf  # a location is not its own source
            else:
                first = sub.argmin(axis=0)
                m1 = sub.min(axis=0)
                if not np.isfinite(m1).any():
                    continue
                rest = sub.copy()
                rest[first, np.arange(sub.shape[1])] = np.inf
                m2 = rest.min(axis=0)
                best = np.where(g[first][None, :] == targets, m2[None, :], m1[None, :])
            np.minimum(out, best + self.edge[gi][:, None], out=out)
        return out


class _Programme:
    """The dynamic programme of :func:`offline_optimum` over one market and scenario.

    Tables over work counts ``w`` (whole ticks of work done): ``run[j, w]`` the cheapest cost of
    running at placement ``j = 2 l + market`` (0 spot, 1 on-demand) at the current tick, ``idle[l, w]``
    stopped with the checkpoint in location ``l``, ``pending[t % ring, j, w]`` arrivals whose overhead
    ends at tick ``t``. Prices are ``inf`` where a placement cannot run."""

    def __init__(self, m: Market, sc: Scenario, home: str) -> None:
        self.gap = gap = m.gap_hours
        self.L = L = len(m.locations)
        self.n_ticks = n_ticks = m.n_ticks
        spot = np.asarray(m.spot, dtype=np.float64).reshape(L, n_ticks)
        od = np.asarray(m.on_demand, dtype=np.float64).reshape(L, n_ticks)
        avail = np.asarray(m.available, dtype=bool).reshape(L, n_ticks)
        self.D = min(n_ticks, int(math.floor(sc.deadline_hours / gap + 1e-9)))
        self.W = W = max(1, int(math.ceil(sc.work_hours / gap - 1e-9)))
        self.last_frac = sc.work_hours / gap - (W - 1)
        price = self.price = np.empty((2 * L, n_ticks))
        price[0::2] = np.where(avail & ~np.isnan(spot), spot, np.inf)
        price[1::2] = np.where(~np.isnan(od), od, np.inf)
        finite = np.isfinite(price)
        zero = np.zeros((2 * L, 1))
        self.cum = np.concatenate([zero, np.cumsum(np.where(finite, price, 0.0), axis=1)], axis=1)
        self.bad = np.concatenate([zero, np.cumsum(~finite, axis=1)], axis=1)
        h = m.locations.index(home)
        self._moves(m, sc, h)
        self.cidx = _checkpoint_index(W, gap, sc.checkpoint_interval_hours)
        self.starts = np.flatnonzero(np.concatenate([[True], self.cidx[1:] != self.cidx[:-1]]))
        self.run = np.full((2 * L, W + 1), np.inf)
        self.idle = np.full((L, W + 1), np.inf)
        self.idle[h, 0] = 0.0
        self.pending = np.full((self.ring, 2 * L, W + 1), np.inf)

    def _moves(self, m: Market, sc: Scenario, h: int) -> None:
        """Egress [from, to] (from != to) without and with a checkpoint to bring, and the overheads
        (whole ticks) of a start in place and of a cold start elsewhere."""
        L, gap = self.L, self.gap
        names = m.locations
        rate = np.array([[egress_usd_per_gb(a, b) if a != b else 0.0 for b in names] for a in names])
        ckpt_gb = sc.ckpt_gb * min(1.0, sc.checkpoint_delta_fraction)
        data_to = np.ones(L, dtype=bool)  # the target needs the dataset (from home or the source)
        data_to[h] = False
        e0 = np.where(data_to[None, :], np.minimum(rate[h][None, :], rate) * sc.data_gb, 0.0)
        e1 = e0 + rate * ckpt_gb
        self.mp0, self.mp1 = _MinPlus(e0), _MinPlus(e1)

        def ticks(hours: float) -> int:
            return int(math.floor(hours / gap + 1e-9))

        self.k_chg = ticks(sc.changeover_hours)
        self.k_other = [
            [
                ticks(
                    sc.changeover_hours
                    + sc.transfer_hours(data_to[b] * sc.data_gb * 1e9 + has * ckpt_gb * 1e9)
                )
                for b in range(L)
            ]
            for has in (0, 1)
        ]
        self.ring = max(self.k_chg, max(max(r) for r in self.k_other)) + 1

    def window_cost(self, a: int, k: int) -> np.ndarray:
        """(2L,) cost of overhead ticks [a, a + k) per placement (inf when unusable or past the grid)."""
        if k == 0:
            return np.zeros(2 * self.L)
        if a + k > self.n_ticks:
            return np.full(2 * self.L, np.inf)
        c = (self.cum[:, a + k] - self.cum[:, a]) * self.gap
        return np.where(self.bad[:, a + k] - self.bad[:, a] > 0, np.inf, c)

    def rollback_into(self, dst: np.ndarray, vals: np.ndarray, lo: int, hi: int) -> None:
        """dst[:, c(w)] = min(dst, min of vals[:, w] over each checkpoint group) for w in [lo, hi]."""
        starts = self.starts
        seg = starts[(starts > lo) & (starts <= hi)]
        seg = np.concatenate([[lo], seg])
        mins = np.minimum.reduceat(vals, seg - lo, axis=1)
        tg = self.cidx[seg]
        dst[:, tg] = np.minimum(dst[:, tg], mins)

    def land(
        self, arrive: np.ndarray, t: int, k: int, rows: np.ndarray, lo: int, hi: int, ok: np.ndarray
    ) -> None:
        """Arrivals (len(rows), hi - lo + 1) running at placements ``rows`` from tick t + k."""
        if k == 0:
            tgt = self.run
            arrive = np.where(ok[rows][:, None], arrive, np.inf)
        else:
            if t + k >= self.n_ticks:
                return
            tgt = self.pending[(t + k) % self.ring]
        tgt[rows, lo : hi + 1] = np.minimum(tgt[rows, lo : hi + 1], arrive)

    def cold_starts(self, t: int, lo: int, hi: int, ok: np.ndarray) -> None:
        """Starts from a stopped state; overhead ticks [t, t + k) billed at the target's price."""
        L = self.L
        for has, (a, b) in ((0, (0, 0)), (1, (max(1, lo), hi))):
            if a > b or (has == 0 and lo > 0):
                continue
            src = self.idle[:, a : b + 1]
            if not np.isfinite(src).any():
                continue
            other = (self.mp1 if has else self.mp0)(src)
            # same location (no copy, changeover only), or from another location (copies)
            for tgt_loc_k, reach in (([self.k_chg] * L, src), (self.k_other[has], other)):
                for k in sorted(set(tgt_loc_k)):
                    locs = np.array([b_ for b_ in range(L) if tgt_loc_k[b_] == k])
                    oc = self.window_cost(t, k)
                    for mk in (0, 1):
                        rows = 2 * locs + mk
                        self.land(reach[locs] + oc[rows][:, None], t, k, rows, a, b, ok)

    def planned_moves(self, t: int, lo: int, hi: int, ok: np.ndarray, p_t: np.ndarray) -> None:
        """Moves from a running placement: changeover billed at the source's price, copies pre-staged;
        the target must have capacity from now on."""
        k_chg, gap, L, run, inf = self.k_chg, self.gap, self.L, self.run, np.inf
        if not (t + k_chg < self.n_ticks or k_chg == 0):
            return
        sl = slice(lo, hi + 1)
        down = np.where(ok, np.where(ok, p_t, 0.0) * gap * k_chg, inf)
        src = np.full((L, self.W + 1), inf)
        self.rollback_into(
            src, np.minimum(run[0::2, sl] + down[0::2, None], run[1::2, sl] + down[1::2, None]), lo, hi
        )
        lo2 = int(self.cidx[lo])
        if not np.isfinite(src[:, lo2 : hi + 1]).any():
            return
        reach = np.full((L, hi + 1 - lo2), inf)
        if lo2 == 0:
            reach[:, :1] = self.mp0(src[:, :1])
        a = max(1, lo2)
        if a <= hi:
            reach[:, a - lo2 :] = self.mp1(src[:, a : hi + 1])
        reach = np.minimum(reach, src[:, lo2 : hi + 1])  # change of market in place
        feasible = np.isfinite(self.window_cost(t, k_chg)) if k_chg else ok
        for mk in (0, 1):
            rows = np.arange(L) * 2 + mk
            arr = np.where(feasible[rows][:, None], reach, inf)
            self.land(arr, t, k_chg, rows, lo2, hi, ok)

    def solve(self) -> tuple[float, int]:
        """(cheapest cost of finishing by the deadline, the tick the work ends in); inf and -1 when
        no plan finishes in time."""
        run, W, D, gap, inf = self.run, self.W, self.D, self.gap, np.inf
        best, best_t = inf, -1
        for t in range(D):
            lo, hi = max(0, W - (D - t)), min(W - 1, t)
            sl = slice(lo, hi + 1)
            slot = self.pending[t % self.ring]
            run[:, sl] = np.minimum(run[:, sl], slot[:, sl])
            slot[:] = inf
            p_t = self.price[:, t]
            ok = np.isfinite(p_t)
            # stops (voluntary, or forced by lost capacity): back to the last checkpoint, where it ran
            self.rollback_into(self.idle, np.minimum(run[0::2, sl], run[1::2, sl]), lo, hi)
            run[~ok] = inf
            self.cold_starts(t, lo, hi, ok)
            self.planned_moves(t, lo, hi, ok, p_t)
            # one tick of work
            cost_t = (p_t * gap)[:, None]
            done = run[:, W - 1] + p_t * gap * self.last_frac
            f = float(done.min())
            if f < best:
                best, best_t = f, t
            run[:, lo + 1 : hi + 2] = run[:, sl] + cost_t
            run[:, lo] = inf
            run[:, W] = inf
        return best, best_t


def offline_optimum(m: Market, sc: Scenario, home: str) -> PolicyResult:
    """The cheapest plan that finishes ``sc`` by its deadline on ``m`` with perfect foresight.

    Returns a :class:`PolicyResult` named ``optimum`` (``lower_bound`` True: it is not a policy) with
    the total cost and the finish time; the split between compute and egress is not tracked (NaN).
    When no plan can finish in time the result has ``deadline_met`` False and an infinite cost.
    """
    res = PolicyResult(NAME, lower_bound=True)
    dp = _Programme(m, sc, home)
    best, best_t = dp.solve()
    if math.isfinite(best):
        res.cost_usd = best
        res.finish_hours = best_t * dp.gap + dp.last_frac * dp.gap
        res.deadline_met = res.finish_hours <= sc.deadline_hours + 1e-9
    else:
        res.cost_usd = math.inf
    res.compute_usd = math.nan
    res.egress_usd = math.nan
    return res
