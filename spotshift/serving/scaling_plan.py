"""Rules 1-6 of the autoscaler (see :mod:`spotshift.serving.autoscale`): the target in whole
replicas, hysteresis, the 0.6 spot rule per location, and per user region the cheapest mix of spot
and reserved/on-demand replicas that meets both the target and the floor."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from spotshift.errors import ConfigError
from spotshift.serving.latency import rtt_ms
from spotshift.serving.scaling_floor import FloorSurplus, pooled_floor
from spotshift.serving.scaling_types import (
    LocationQuote,
    ScalerMemory,
    ScalingInputs,
    ScalingParams,
    SpotRule,
)
from spotshift.serving.slo import ServingProfile, pool_sizer


def wanted_replicas(
    demand_tokens_s: float, forecast_tokens_s: float, capacity_tokens_s: float, p: ScalingParams
) -> int:
    """Rule 1: whole replicas for ``headroom x max(forecast, demand now)`` (forecast ignored when
    ``use_forecast`` is off)."""
    level = max(demand_tokens_s, forecast_tokens_s if p.use_forecast else 0.0)
    return math.ceil(p.headroom * max(0.0, level) / capacity_tokens_s - 1e-9)


def wanted_by_region(
    demand_tokens_s: Mapping[str, float],
    forecast_tokens_s: Mapping[str, float],
    capacity_tokens_s: float,
    p: ScalingParams,
) -> dict[str, int]:
    """Rule 1 for every user region at once: whole replicas per region.

    Each region's level is ``headroom x max(forecast, demand now) / capacity`` replicas. Rounded
    region by region (:func:`wanted_replicas`), every region pays for its own fraction of a
    replica; with ``pool_rounding`` the endpoint's headroom is counted once: ``ceil`` of the summed
    levels handed out by largest remainder (ties by name), each region keeping at least the whole
    replicas its own forecast needs without headroom (``ceil(max(forecast, demand) / capacity)``). A region whose fraction is not rounded up is served by the pools of the
    others: every pool is shared by the user regions whose round trip to it keeps the SLO (the
    router's rule), and the eligibility of rule 3 is what makes that hold.
    """
    regions = sorted(set(demand_tokens_s) | set(forecast_tokens_s))
    levels = {}
    for u in regions:
        d = max(0.0, float(demand_tokens_s.get(u, 0.0)))
        f = max(0.0, float(forecast_tokens_s.get(u, 0.0))) if p.use_forecast else 0.0
        levels[u] = p.headroom * max(d, f) / capacity_tokens_s
    if not p.pool_rounding or len(regions) < 2:
        return {u: math.ceil(x - 1e-9) for u, x in levels.items()}
    whole = {u: math.floor(x + 1e-9) for u, x in levels.items()}
    spare = math.ceil(sum(levels.values()) - 1e-9) - sum(whole.values())
    for u in sorted(regions, key=lambda u: (-(levels[u] - whole[u]), u))[: max(0, spare)]:
        whole[u] += 1
    # the headroom is what is pooled: each region keeps whole replicas for its own forecast
    return {u: max(n, math.ceil(levels[u] / p.headroom - 1e-9)) for u, n in whole.items()}


def rtt_lookup(inputs: ScalingInputs) -> Callable[[str, str], float]:
    if inputs.rtt_ms is not None:
        table = inputs.rtt_ms

        def from_table(u: str, loc: str) -> float:
            try:
                return float(table[(u, loc)])
            except KeyError:
                raise ConfigError(f"no round trip for user region {u!r} to {loc!r}") from None

        return from_table
    return rtt_ms


def hysteresis_step(
    u: str, wanted: int, overload: bool, now_s: float, mem: ScalerMemory, p: ScalingParams
) -> tuple[int, str]:
    """Rule 2 for user region ``u``: the granted target and what happened; updates ``mem`` in place."""
    granted = mem.granted.get(u)
    if granted is None:
        mem.granted[u] = wanted
        return wanted, "initial target"
    if wanted > granted:
        mem.down_since.pop(u, None)
        since = mem.up_since.setdefault(u, now_s)
        if overload or now_s - since >= p.upscale_delay_s:
            mem.granted[u] = wanted
            mem.up_since.pop(u, None)
            why = "overload now" if overload and now_s - since < p.upscale_delay_s else "upscale delay passed"
            return wanted, f"up {granted}->{wanted} ({why})"
        return granted, f"upscale pending {now_s - since:.0f}/{p.upscale_delay_s:.0f} s"
    if wanted < granted:
        mem.up_since.pop(u, None)
        since = mem.down_since.setdefault(u, now_s)
        if now_s - since >= p.downscale_delay_s:
            mem.granted[u] = wanted
            mem.down_since.pop(u, None)
            return wanted, f"down {granted}->{wanted} (downscale delay passed)"
        return granted, f"downscale pending {now_s - since:.0f}/{p.downscale_delay_s:.0f} s"
    mem.up_since.pop(u, None)
    mem.down_since.pop(u, None)
    return granted, "steady"


def _cheapest_mix(
    need: int, floor: int, spot_prices: Sequence[float], other_price: float | None
) -> tuple[int, int, int] | None:
    """Cheapest ``(non-spot replicas, spot replicas per location at most, spot replicas)`` with
    ``non-spot + spot >= need`` and ``non-spot + spot - biggest spot location >= floor``.

    Spot fills the cheapest locations (``spot_prices`` ascending) up to ``m`` each, so losing one
    loses at most ``m``: spot total ``S = max(need', floor' + m)``. Every non-spot count and every
    ``m`` is tried (prefix sums keep each try O(1)); ``None`` when nothing is feasible.
    """
    prefix = [0.0]
    for x in spot_prices:
        prefix.append(prefix[-1] + x)
    n_locs = len(spot_prices)
    best: tuple[float, int, int, int] | None = None
    max_other = need if other_price is not None else 0
    for o in range(0, max_other + 1):
        a, b = max(0, need - o), max(0, floor - o)
        if a == 0 and b == 0:
            cand = (o * (other_price or 0.0), o, 0, 0)
            best = cand if best is None or cand < best else best
            break
        for m in range(1, max(a, 1) + 1):
            total = max(a, b + m)
            full, rest = divmod(total, m)
            if full > n_locs or (full == n_locs and rest):
                continue
            cost = m * prefix[full] + (rest * spot_prices[full] if rest else 0.0)
            cost += o * (other_price or 0.0)
            cand = (cost, o, m, total)
            if best is None or cand < best:
                best = cand
    return None if best is None else (best[1], best[2], best[3])


PLAN_CACHE: dict[Any, Any] = {}


def spot_rules(
    quotes: Mapping[str, LocationQuote], no_spot: Mapping[str, str], p: ScalingParams
) -> dict[str, SpotRule]:
    """Seed 000's rule, once per location: spot only when ``spot < ratio x reserved`` there, the
    location has spot capacity and spot is an allowed market."""
    rules: dict[str, SpotRule] = {}
    for loc, q in sorted(quotes.items()):
        res = q.reserved_price()
        spot = q.spot_usd_hour
        if "spot" not in p.markets:
            rules[loc] = SpotRule(loc, spot, res, False, "spot is not an allowed market")
        elif spot is None:
            rules[loc] = SpotRule(loc, None, res, False, "no spot price")
        elif loc in no_spot:
            rules[loc] = SpotRule(loc, spot, res, False, f"no spot capacity: {no_spot[loc]}")
        elif res is None:
            rules[loc] = SpotRule(loc, spot, None, False, "no reserved price to compare with")
        else:
            allowed = spot < p.spot_reserved_ratio * res
            why = f"spot {spot:.4g} {'<' if allowed else '>='} {p.spot_reserved_ratio:g} x reserved {res:.4g}"
            rules[loc] = SpotRule(loc, spot, res, allowed, why)
    return rules


def nonspot_market(p: ScalingParams) -> str | None:
    """The market non-spot replicas are planned on: on-demand when allowed, else reserved."""
    return "on_demand" if "on_demand" in p.markets else ("reserved" if "reserved" in p.markets else None)


@dataclass
class _World:
    """What every user region's plan shares within one :func:`plan_user_regions` call."""

    quotes: Mapping[str, LocationQuote]
    rules: Mapping[str, SpotRule]
    spot_eff: Mapping[str, float]
    nonspot_of: Mapping[str, float | None]
    free_reserved: dict[str, int]
    sizer: Any
    rtt: Callable[[str, str], float]
    prof: ServingProfile
    p: ScalingParams


def plan_user_regions(
    quotes: Mapping[str, LocationQuote],
    granted_items: tuple[tuple[str, int], ...],
    no_spot: Mapping[str, str],
    committed: Mapping[str, int],
    risk: Mapping[str, float],
    rtt: Callable[[str, str], float],
    prof: ServingProfile,
    p: ScalingParams,
) -> tuple[dict[str, SpotRule], dict[str, Any], dict[tuple[str, str], float], list[str]]:
    """Rules 3-6 for every user region (the memoizable part of :func:`decide_scaling`)."""
    market = nonspot_market(p)
    world = _World(
        quotes,
        spot_rules(quotes, no_spot, p),
        # spot priced with its expected preemption cost: a location preempted r times an hour costs
        # spot x (1 + r x preemption_penalty_hours); the 0.6 rule still compares raw prices
        {
            loc: (q.spot_usd_hour or 0.0) * (1.0 + risk.get(loc, 0.0) * p.preemption_penalty_hours)
            for loc, q in quotes.items()
        },
        {loc: (quotes[loc].price(market) if market else None) for loc in quotes},
        # committed reserved replicas serve first (they are paid for either way)
        {loc: committed.get(loc, 0) for loc in quotes if "reserved" in p.markets},
        pool_sizer(prof, p.slo_target),
        rtt,
        prof,
        p,
    )
    reasons: list[str] = []
    plan_counts: dict[tuple[str, str], int] = {}
    per_u: dict[str, Any] = {}
    # pooled floor: the biggest regions plan first, the capacity they keep beyond their own floor
    # after their worst spot loss counts towards the floors of the regions planned after them
    surplus: list[FloorSurplus] | None = [] if p.pooled_floor else None
    order = sorted(granted_items, key=lambda ug: (-ug[1], ug[0])) if p.pooled_floor else granted_items
    for u, granted in order:
        counts, per_u[u] = _plan_user_region(world, u, granted, reasons, surplus)
        for key, n in counts.items():
            plan_counts[key] = plan_counts.get(key, 0) + n
    return dict(world.rules), per_u, plan_counts, reasons


def _plan_user_region(  # long: rules 3-6 in order, with the pooled floor's bookkeeping
    w: _World, u: str, granted: int, reasons: list[str], surplus: list[FloorSurplus] | None = None
) -> tuple[dict[tuple[str, str], int], tuple[Any, ...]]:
    """Rules 3-6 for user region ``u``: replicas per (location, market) and ``(eligible, spot
    locations, plan in tokens/s)``; consumes ``w.free_reserved`` and, with the pooled floor, takes
    from and adds to ``surplus``."""
    p, prof, quotes = w.p, w.prof, w.quotes
    market = nonspot_market(p)
    r_u = {loc: w.rtt(u, loc) for loc in quotes}
    # whole replicas: the target, and the floor kept after losing the biggest spot location
    need_target = granted
    floor = p.floor_share * granted / p.headroom
    eligible = [loc for loc in quotes if w.sizer.reachable(r_u[loc])]
    if not eligible and granted > 0:
        fastest = min(quotes, key=lambda loc: (r_u[loc], loc))
        eligible = [fastest]
        reasons.append(
            f"{u}: no location keeps {p.slo_target:.1%} within {prof.slo_ms:g} ms; using the fastest, {fastest}"
        )
    counts: dict[tuple[str, str], int] = {}
    robust = 0  # replicas no spot loss takes away
    for loc in sorted(eligible, key=lambda x: (r_u[x], x)):
        while w.free_reserved.get(loc, 0) > 0 and robust < need_target:
            w.free_reserved[loc] -= 1
            robust += 1
            counts[(loc, "reserved")] = counts.get((loc, "reserved"), 0) + 1
    spot_opts = sorted(
        (loc for loc in eligible if w.rules[loc].allowed), key=lambda x: (w.spot_eff[x], r_u[x], x)
    )
    other = None
    if market is not None:
        other = min(
            (loc for loc in eligible if w.nonspot_of[loc] is not None),
            key=lambda x: (w.nonspot_of[x], r_u[x], x),
            default=None,
        )
    need_floor, covered = pooled_floor(floor - robust, eligible, surplus)
    if covered:
        reasons.append(
            f"{u}: {covered:.2f} replicas of its floor kept by other regions' surplus (pooled floor)"
        )
    choice = _cheapest_mix(
        max(0, need_target - robust),
        need_floor,
        [w.spot_eff[x] for x in spot_opts],
        w.nonspot_of[other] if other is not None else None,
    )
    if choice is None:
        reasons.append(
            f"{u}: the floor of {p.floor_share:.0%} cannot be kept with {', '.join(p.markets)}; "
            "serving the target on spot alone"
        )
        choice = (0, max(1, need_target - robust), need_target - robust)
    n_other, per_loc, n_spot = choice
    spot_n: dict[str, int] = {}
    for loc in spot_opts:
        if n_spot <= 0:
            break
        take = min(per_loc, n_spot)
        spot_n[loc] = take
        counts[(loc, "spot")] = take
        n_spot -= take
    if n_other and other is not None and market is not None:
        counts[(other, market)] = counts.get((other, market), 0) + n_other
    if surplus is not None:
        survivors = sum(counts.values()) - max(spot_n.values(), default=0)
        surplus.append(FloorSurplus(counts, max(0.0, survivors - (floor - covered))))
    cap = prof.capacity_tokens_s
    plan = tuple((loc, mk, n * cap) for (loc, mk), n in sorted(counts.items()))
    return counts, (tuple(sorted(eligible)), tuple(sorted(spot_n)), plan)


def market_counts(
    plan_counts: Mapping[tuple[str, str], int],
    mem: ScalerMemory,
    now_s: float,
    p: ScalingParams,
    reasons: list[str],
) -> dict[tuple[str, str], int]:
    """Whole replicas per location and market: spot as planned, non-spot split into committed
    reserved + on-demand (rule 6; updates the commitments in ``mem``)."""
    market = nonspot_market(p) or "on_demand"
    counts: dict[tuple[str, str], int] = {}
    nonspot: dict[str, int] = {}
    for (loc, mk), n in plan_counts.items():
        if mk == "spot":
            counts[(loc, "spot")] = n
        else:
            nonspot[loc] = nonspot.get(loc, 0) + n
    commit_reserved(mem, nonspot, now_s, p, reasons)
    for loc in sorted(set(nonspot) | {x for x, n in mem.committed.items() if n > 0}):
        need = nonspot.get(loc, 0)
        committed = mem.committed.get(loc, 0)
        if "reserved" in p.markets and committed:
            counts[(loc, "reserved")] = committed
        if need > committed:
            counts[(loc, market)] = counts.get((loc, market), 0) + need - committed
    return {k: v for k, v in counts.items() if v > 0}


def commit_reserved(
    mem: ScalerMemory, nonspot: Mapping[str, int], now_s: float, p: ScalingParams, reasons: list[str]
) -> None:
    """Track hourly minima of the non-spot replicas planned; commit the window's minimum as reserved."""
    if "reserved" not in p.markets:
        return
    if "on_demand" not in p.markets:  # reserved is the only non-spot market: buy what is needed
        for loc, n in nonspot.items():
            if n > mem.committed.get(loc, 0):
                reasons.append(f"{loc}: commit {n - mem.committed.get(loc, 0)} more reserved (only market)")
                mem.committed[loc] = n
        return
    hour = int(now_s // 3600)
    hours = int(p.commit_window_s // 3600)
    for loc in sorted(set(nonspot) | set(mem.nonspot_hourly)):
        n = nonspot.get(loc, 0)
        buckets = mem.nonspot_hourly.setdefault(loc, [])
        if buckets and buckets[-1][0] == hour:
            buckets[-1][1] = min(buckets[-1][1], n)
        else:
            buckets.append([hour, n])
        while buckets and buckets[0][0] <= hour - hours:
            buckets.pop(0)
        full = len(buckets) >= hours and buckets[0][0] == hour - hours + 1
        steady = min(b[1] for b in buckets) if full else 0
        if steady > mem.committed.get(loc, 0):
            reasons.append(
                f"{loc}: {steady} non-spot replicas needed every hour of the last {hours} h: commit them as reserved"
            )
            mem.committed[loc] = steady
        if not any(b[1] for b in buckets) and not mem.committed.get(loc):
            del mem.nonspot_hourly[loc]
