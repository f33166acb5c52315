"""The accounting every policy of the one-job simulator shares (see :mod:`spotshift.simulate.engine`).

:class:`Copies` knows where the dataset and the latest checkpoint are and what a start somewhere must
copy; :class:`PolicyRun` is one policy's job on the market (placement, progress, checkpoints,
money), advanced one tick at a time; :func:`run_loop` drives it through the market with a policy's
per-tick decision. The fleet simulator (:mod:`spotshift.simulate.fleet`) reuses :class:`Copies`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from spotshift.placement.deadline import deadline_requires_on_demand, safety_reserve_hours
from spotshift.placement.scoring import DataFootprint
from spotshift.pricing.egress import egress_usd_per_gb
from spotshift.simulate.market import Market
from spotshift.simulate.scenario import PolicyResult, Scenario

#: the reason a simulated decision sees for a location without spot capacity (the sensor's wording)
NO_SPOT_REASON = "no spot capacity (preempted)"


class Copies:
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


class PolicyRun:
    """One policy's job on the market: placement, progress, checkpoints, money."""

    def __init__(self, name: str, market: Market, sc: Scenario, home: str, delta: bool) -> None:
        self.m = market
        self.sc = sc
        self.res = PolicyResult(name)
        self.copies = Copies(sc, home, delta)
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


def run_loop(run: PolicyRun, decide_tick: Callable[[int], None], *, net: bool) -> PolicyResult:
    """Drive ``run`` through the market: preempt where spot capacity is gone, apply the deadline
    safety net when ``net``, else ``decide_tick(t)``, then bill and progress the tick."""
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
