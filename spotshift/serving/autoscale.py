"""The inference autoscaler: how many replicas of which market in which location, and why.

:func:`decide_scaling` is the one scaling decision function of spotshift: the live loop
(``inference_autoscale_sensor``) and ``spotshift simulate-inference`` both call it, as
``price_change_sensor`` and ``spotshift simulate`` share :func:`spotshift.placement.economics.decide`.
It takes plain typed values (replica states, per-location quotes, demand and its forecast per
user region, the serving profile with its SLO) plus the :class:`ScalerMemory` the previous call
returned, and returns a :class:`ScalingDecision` with the launches and terminations, every term and
human-readable reasons.

The rules, per user region ``u``, then per location:

1. **Target** (seed 000, issue 14): ``headroom x max(forecast 10 min ahead, demand now)`` in
   tokens/s, in whole replicas of ``capacity_tokens_s`` (the capacity measured at the SLO).
2. **Hysteresis** (SkyServe's published delays): the granted target moves up only after the wanted
   one stayed above it for ``upscale_delay_s`` (300 s), down after ``downscale_delay_s`` (1200 s)
   below. Demand *now* above the granted capacity (an overload, not a forecast) lifts the target at
   once. Replacing lost replicas is never delayed: the target did not change.
3. **Where users can be served**: a location is eligible for ``u`` when some pool there keeps
   ``slo_target`` of ``u``'s requests within the SLO (network round trip from
   :mod:`spotshift.serving.latency`, queueing and inference from :mod:`spotshift.serving.slo`;
   :class:`~spotshift.serving.slo.PoolSizer`). Pools are planned in nominal capacity: they are
   shared by every user region the router sends there, and the router fills each only as far as
   its users' SLO allows. None eligible: the lowest round trip, and the reasons say so.
4. **Spot or not** (seed 000): spot in a location only when ``spot < 0.6 x reserved`` there
   (reserved price from :mod:`spotshift.pricing.reserved` unless quoted), the location has not
   lost spot capacity recently (``no_spot``), and spot is an allowed market.
5. **Floor and placement**: losing every spot replica of any one location must leave capacity for
   ``floor_share`` of ``u``'s traffic (the forecast level, i.e. the target without headroom). In
   whole replicas, with spot priced with its learned risk ``spot x (1 + preemptions_per_hour x
   preemption_penalty_hours)``: spot fills the cheapest eligible locations up to ``m`` replicas
   each, so one loss costs at most ``m``; every ``m`` and every count of reserved/on-demand
   replicas is tried and the cheapest mix meeting both the target and the floor wins
   (:func:`_cheapest_mix`). Spot therefore spreads over the cheapest regions not already used
   (SpotHedge's placement) exactly as far as the floor makes it pay, and a user region with a
   single spot-eligible location gets its floor on reserved/on-demand. A preempted location drops
   out of the spot candidates, so replacements go to the next-cheapest place.
6. **Reserved vs on-demand**: committed reserved replicas run all the time (they are paid for
   anyway) and serve first. The non-spot replicas planned in a location every hour of the last
   ``commit_window_s`` (24 h) are the steady base worth a commitment: that minimum becomes
   reserved (1-year term, never released within it), the rest stays on-demand.
7. **Reconcile**: launch what the plan lacks; terminate what it has too many of (provisioning
   first, most expensive first), but never committed reserved replicas, and never ready replicas
   while that would leave fewer ready replicas than the plan has (its replacements must be ready
   first) or less ready capacity than the demand now (make before break: a replacement that never
   comes, such as a spot launch into a region without capacity, costs nothing but the launch).
8. **Budget** (``ScalingInputs.budget``): when the planned fleet for the rest of the month would
   take the endpoint's team past its monthly limit, launches are withheld and the decision is
   ``hold`` (:func:`gate_scaling`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from spotshift.errors import ConfigError
from spotshift.pricing.regions import provider_of
from spotshift.pricing.reserved import reserved_price_usd_hour
from spotshift.serving.latency import rtt_ms
from spotshift.serving.slo import ServingProfile, pool_sizer

MARKETS = ("spot", "on_demand", "reserved")
REPLICA_STATES = ("provisioning", "ready", "draining")
ACTIONS = ("scale_up", "scale_down", "replace", "rebalance", "hold")


@dataclass(frozen=True)
class ReplicaState:
    """One replica as the control plane sees it. Draining replicas no longer count as capacity."""

    replica_id: str
    location: str
    market: str
    state: str

    def __post_init__(self) -> None:
        if self.market not in MARKETS:
            raise ConfigError(f"replica {self.replica_id}: market {self.market!r} is not one of {MARKETS}")
        if self.state not in REPLICA_STATES:
            raise ConfigError(
                f"replica {self.replica_id}: state {self.state!r} is not one of {REPLICA_STATES}"
            )

    @property
    def active(self) -> bool:
        """Provisioning or ready: counts against the plan."""
        return self.state in ("provisioning", "ready")


@dataclass(frozen=True)
class LocationQuote:
    """Prices of one replica (one instance) in one location, USD per hour; ``None``: not offered."""

    location: str
    on_demand_usd_hour: float | None
    spot_usd_hour: float | None = None
    reserved_usd_hour: float | None = None

    def reserved_price(self) -> float | None:
        """The quoted reserved price, else on-demand x (1 - the provider's 1-year discount)."""
        if self.reserved_usd_hour is not None:
            return self.reserved_usd_hour
        if self.on_demand_usd_hour is None:
            return None
        return reserved_price_usd_hour(provider_of(self.location), self.on_demand_usd_hour)

    def price(self, market: str) -> float | None:
        """Price in ``market``."""
        if market == "spot":
            return self.spot_usd_hour
        if market == "on_demand":
            return self.on_demand_usd_hour
        return self.reserved_price()


def location_quotes(quotes: Iterable[Any], instance_type: str) -> list[LocationQuote]:
    """Per-location quotes of one instance type from :class:`~spotshift.pricing.quote.NormalizedGPUQuote`
    rows (the cheapest zone of each market)."""
    best: dict[str, dict[str, float]] = {}
    for q in quotes:
        if q.instance_type != instance_type:
            continue
        cur = best.setdefault(q.location, {})
        cur[q.market] = min(cur.get(q.market, math.inf), q.price_usd_hour)
    return [LocationQuote(loc, p.get("on_demand"), p.get("spot")) for loc, p in sorted(best.items()) if p]


@dataclass(frozen=True)
class ScalingParams:
    """Knobs of the autoscaler; the defaults are the published figures (see the module docstring)."""

    headroom: float = 1.2
    spot_reserved_ratio: float = 0.6
    floor_share: float = 0.8
    upscale_delay_s: float = 300.0
    downscale_delay_s: float = 1200.0
    slo_target: float = 0.999
    commit_window_s: float = 86_400.0
    preemption_penalty_hours: float = 1.0
    risk_step: float = 0.05
    markets: tuple[str, ...] = MARKETS
    use_forecast: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.headroom >= 1.0, "headroom must be >= 1"),
            (0 < self.spot_reserved_ratio <= 1, "spot_reserved_ratio must be within (0, 1]"),
            (0 <= self.floor_share <= 1, "floor_share must be within [0, 1]"),
            (self.upscale_delay_s >= 0 and self.downscale_delay_s >= 0, "delays must be >= 0"),
            (0 < self.slo_target < 1, "slo_target must be within (0, 1)"),
            (self.commit_window_s >= 3600, "commit_window_s must be >= 3600"),
            (self.preemption_penalty_hours >= 0, "preemption_penalty_hours must be >= 0"),
            (self.risk_step > 0, "risk_step must be > 0"),
            (bool(self.markets) and set(self.markets) <= set(MARKETS), f"markets must be within {MARKETS}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"scaling params: {msg}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict."""
        return {**self.__dict__, "markets": list(self.markets)}


@dataclass
class ScalerMemory:
    """What the autoscaler carries from one call to the next (JSON-ready: a sensor cursor).

    ``granted``: target replicas per user region; ``up_since``/``down_since``: epoch seconds the
    wanted target has been above/below it; ``committed``: reserved replicas under commitment per
    location; ``nonspot_hourly``: per location, ``[hour, min non-spot replicas planned that hour]``
    for the commitment window.
    """

    granted: dict[str, int] = field(default_factory=dict)
    up_since: dict[str, float] = field(default_factory=dict)
    down_since: dict[str, float] = field(default_factory=dict)
    committed: dict[str, int] = field(default_factory=dict)
    nonspot_hourly: dict[str, list[list[int]]] = field(default_factory=dict)

    def copy(self) -> ScalerMemory:
        """An independent copy (decisions never mutate the memory they were given)."""
        return ScalerMemory(
            dict(self.granted),
            dict(self.up_since),
            dict(self.down_since),
            dict(self.committed),
            {k: [list(b) for b in v] for k, v in self.nonspot_hourly.items()},
        )

    def next_change_s(self, p: ScalingParams) -> float:
        """Epoch second at which a running hysteresis timer expires (inf when none runs): before
        then, the same inputs give the same launches and terminations."""
        times = [t + p.upscale_delay_s for t in self.up_since.values()]
        times += [t + p.downscale_delay_s for t in self.down_since.values()]
        return min(times, default=math.inf)

    def to_json(self) -> str:
        """Serialize (sorted keys: equal memories give equal strings)."""
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> ScalerMemory:
        """Parse :meth:`to_json`; empty -> a fresh memory; malformed -> :class:`ConfigError`."""
        if not text:
            return cls()
        try:
            raw = json.loads(text)
            return cls(**{k: raw.get(k, {}) for k in cls.__dataclass_fields__})
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"scaler memory: not a valid cursor ({exc})") from None


@dataclass(frozen=True)
class ScalingInputs:
    """Everything :func:`decide_scaling` looks at; the caller gathers it.

    ``demand_tokens_s``/``forecast_tokens_s``: per user region, now and the peak expected within
    the forecast horizon (:mod:`spotshift.serving.forecast`). ``spot_risk``: spot preemptions per
    hour per location (:mod:`spotshift.placement.risk`, the estimates training placement uses;
    missing: no penalty). ``no_spot``: locations that lost spot
    capacity recently (preemption notice, failed launch) with the reason. ``allowed``: locations
    the endpoint may use (None: every quoted one). ``rtt_ms``: round trip per (user region,
    location); None: :func:`spotshift.serving.latency.rtt_ms`.
    """

    endpoint: str
    now: datetime
    profile: ServingProfile
    demand_tokens_s: Mapping[str, float]
    forecast_tokens_s: Mapping[str, float]
    replicas: Sequence[ReplicaState]
    quotes: Sequence[LocationQuote]
    no_spot: Mapping[str, str] = field(default_factory=dict)
    allowed: Sequence[str] | None = None
    rtt_ms: Mapping[tuple[str, str], float] | None = None
    spot_risk: Mapping[str, float] = field(default_factory=dict)
    snapshot_id: str = ""
    #: the endpoint's team budget this month (:class:`spotshift.budgets.BudgetStatus`); None: no cap
    budget: Any = None


@dataclass(frozen=True)
class Launch:
    """Start ``count`` replicas in ``location`` on ``market``."""

    location: str
    market: str
    count: int
    reason: str


@dataclass(frozen=True)
class Termination:
    """Stop one replica (drain first)."""

    replica_id: str
    location: str
    market: str
    reason: str


@dataclass(frozen=True)
class UserRegionTerms:
    """The terms of one user region's part of the plan."""

    user_region: str
    demand_tokens_s: float
    forecast_tokens_s: float
    wanted_replicas: int
    granted_replicas: int
    target_tokens_s: float
    floor_tokens_s: float
    eligible: tuple[str, ...]
    spot_locations: tuple[str, ...]
    plan: tuple[tuple[str, str, float], ...]  # (location, market, tokens/s)
    hysteresis: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        d = dict(self.__dict__)
        d["plan"] = [list(p) for p in self.plan]
        d["eligible"], d["spot_locations"] = list(self.eligible), list(self.spot_locations)
        return d


@dataclass(frozen=True)
class SpotRule:
    """Seed 000's rule in one location: spot only when ``spot < ratio x reserved``."""

    location: str
    spot_usd_hour: float | None
    reserved_usd_hour: float | None
    allowed: bool
    reason: str


@dataclass(frozen=True)
class ScalingDecision:
    """The outcome of :func:`decide_scaling`: what to launch and stop, with every term and reason."""

    endpoint: str
    decided_at: datetime
    snapshot_id: str
    action: str
    launches: tuple[Launch, ...]
    terminations: tuple[Termination, ...]
    current: tuple[tuple[str, str, int], ...]  # (location, market, active replicas)
    planned: tuple[tuple[str, str, int], ...]
    user_regions: tuple[UserRegionTerms, ...]
    spot_rules: tuple[SpotRule, ...]
    demand_tokens_s: float
    target_tokens_s: float
    planned_capacity_tokens_s: float
    current_usd_hour: float
    planned_usd_hour: float
    reasons: tuple[str, ...]
    memory: ScalerMemory

    @property
    def decision_id(self) -> str:
        """Deterministic id: endpoint, decision time (the sensor's tick) and action."""
        return f"{self.endpoint}:{self.decided_at.isoformat()}:{self.action}"

    def to_row(self) -> dict[str, Any]:
        """The ``raw.scaling_decisions`` row (columns of :data:`spotshift.warehouse_schema.RAW_TABLES`)."""

        def by_market(rows: tuple[tuple[str, str, int], ...], market: str) -> int:
            return sum(n for _, m, n in rows if m == market)

        return {
            "decision_id": self.decision_id,
            "decided_at": self.decided_at,
            "endpoint": self.endpoint,
            "snapshot_id": self.snapshot_id,
            "action": self.action,
            "demand_tokens_s": self.demand_tokens_s,
            "forecast_tokens_s": sum(u.forecast_tokens_s for u in self.user_regions),
            "target_tokens_s": self.target_tokens_s,
            "planned_capacity_tokens_s": self.planned_capacity_tokens_s,
            "spot_replicas": by_market(self.planned, "spot"),
            "on_demand_replicas": by_market(self.planned, "on_demand"),
            "reserved_replicas": by_market(self.planned, "reserved"),
            "launches": sum(x.count for x in self.launches),
            "terminations": len(self.terminations),
            "current_usd_hour": self.current_usd_hour,
            "planned_usd_hour": self.planned_usd_hour,
            "terms": json.dumps(
                {
                    "user_regions": [u.to_dict() for u in self.user_regions],
                    "planned": [list(p) for p in self.planned],
                    "spot_rules": [r.__dict__ for r in self.spot_rules],
                },
                sort_keys=True,
            ),
            "reasons": json.dumps(list(self.reasons)),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "decision_id": self.decision_id,
            "endpoint": self.endpoint,
            "action": self.action,
            "decided_at": self.decided_at.isoformat(),
            "launches": [x.__dict__ for x in self.launches],
            "terminations": [x.__dict__ for x in self.terminations],
            "planned": [list(p) for p in self.planned],
            "user_regions": [u.to_dict() for u in self.user_regions],
            "spot_rules": [r.__dict__ for r in self.spot_rules],
            "current_usd_hour": self.current_usd_hour,
            "planned_usd_hour": self.planned_usd_hour,
            "reasons": list(self.reasons),
        }


def wanted_replicas(
    demand_tokens_s: float, forecast_tokens_s: float, capacity_tokens_s: float, p: ScalingParams
) -> int:
    """Rule 1: whole replicas for ``headroom x max(forecast, demand now)`` (forecast ignored when
    ``use_forecast`` is off)."""
    level = max(demand_tokens_s, forecast_tokens_s if p.use_forecast else 0.0)
    return math.ceil(p.headroom * max(0.0, level) / capacity_tokens_s - 1e-9)


def _rtt_lookup(inputs: ScalingInputs) -> Callable[[str, str], float]:
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


_PLAN_CACHE: dict[Any, Any] = {}


def _plan(
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
    cap = prof.capacity_tokens_s
    reasons: list[str] = []
    # spot priced with its expected preemption cost: a location preempted r times an hour costs
    # spot x (1 + r x preemption_penalty_hours); the 0.6 rule still compares raw prices
    spot_eff = {
        loc: (q.spot_usd_hour or 0.0) * (1.0 + risk.get(loc, 0.0) * p.preemption_penalty_hours)
        for loc, q in quotes.items()
    }
    spot_ok = "spot" in p.markets
    nonspot_market = (
        "on_demand" if "on_demand" in p.markets else ("reserved" if "reserved" in p.markets else None)
    )

    # seed 000's rule, once per location
    rules: dict[str, SpotRule] = {}
    for loc, q in sorted(quotes.items()):
        res = q.reserved_price()
        if not spot_ok:
            rules[loc] = SpotRule(loc, q.spot_usd_hour, res, False, "spot is not an allowed market")
        elif q.spot_usd_hour is None:
            rules[loc] = SpotRule(loc, None, res, False, "no spot price")
        elif loc in no_spot:
            rules[loc] = SpotRule(loc, q.spot_usd_hour, res, False, f"no spot capacity: {no_spot[loc]}")
        elif res is None:
            rules[loc] = SpotRule(loc, q.spot_usd_hour, None, False, "no reserved price to compare with")
        elif q.spot_usd_hour < p.spot_reserved_ratio * res:
            rules[loc] = SpotRule(
                loc,
                q.spot_usd_hour,
                res,
                True,
                f"spot {q.spot_usd_hour:.4g} < {p.spot_reserved_ratio:g} x reserved {res:.4g}",
            )
        else:
            rules[loc] = SpotRule(
                loc,
                q.spot_usd_hour,
                res,
                False,
                f"spot {q.spot_usd_hour:.4g} >= {p.spot_reserved_ratio:g} x reserved {res:.4g}",
            )

    def nonspot_price(loc: str) -> float | None:
        if nonspot_market is None:
            return None
        return quotes[loc].price(nonspot_market)

    # committed reserved replicas serve first (they are paid for either way)
    free_reserved = {loc: committed.get(loc, 0) for loc in quotes if "reserved" in p.markets}
    plan_counts: dict[tuple[str, str], int] = {}
    per_u: dict[str, Any] = {}
    nonspot_of = {loc: nonspot_price(loc) for loc in quotes}
    sizer = pool_sizer(prof, p.slo_target)
    for u, granted in granted_items:
        r_u = {loc: rtt(u, loc) for loc in quotes}
        # whole replicas: the target, and the floor kept after losing the biggest spot location
        need_target = granted
        need_floor = math.ceil(p.floor_share * granted / p.headroom - 1e-9)
        eligible = [loc for loc in quotes if sizer.reachable(r_u[loc])]
        if not eligible and granted > 0:
            fastest = min(quotes, key=lambda loc: (r_u[loc], loc))
            eligible = [fastest]
            reasons.append(
                f"{u}: no location keeps {p.slo_target:.1%} within {prof.slo_ms:g} ms; using the fastest, {fastest}"
            )
        counts: dict[tuple[str, str], int] = {}
        robust = 0  # replicas no spot loss takes away
        for loc in sorted(eligible, key=lambda x: (r_u[x], x)):
            while free_reserved.get(loc, 0) > 0 and robust < need_target:
                free_reserved[loc] -= 1
                robust += 1
                counts[(loc, "reserved")] = counts.get((loc, "reserved"), 0) + 1
        spot_opts = sorted(
            (loc for loc in eligible if rules[loc].allowed), key=lambda x: (spot_eff[x], r_u[x], x)
        )
        other = None
        if nonspot_market is not None:
            other = min(
                (loc for loc in eligible if nonspot_of[loc] is not None),
                key=lambda x: (nonspot_of[x], r_u[x], x),
                default=None,
            )
        choice = _cheapest_mix(
            max(0, need_target - robust),
            max(0, need_floor - robust),
            [spot_eff[x] for x in spot_opts],
            nonspot_of[other] if other is not None else None,
        )
        spot_n: dict[str, int] = {}
        if choice is None:
            reasons.append(
                f"{u}: the floor of {p.floor_share:.0%} cannot be kept with {', '.join(p.markets)}; "
                "serving the target on spot alone"
            )
            choice = (0, max(1, need_target - robust), need_target - robust)
        n_other, per_loc, n_spot = choice
        for loc in spot_opts:
            if n_spot <= 0:
                break
            take = min(per_loc, n_spot)
            spot_n[loc] = take
            counts[(loc, "spot")] = take
            n_spot -= take
        if n_other and other is not None and nonspot_market is not None:
            counts[(other, nonspot_market)] = counts.get((other, nonspot_market), 0) + n_other
        plan = tuple((loc, market, n * cap) for (loc, market), n in sorted(counts.items()))
        for key, n in counts.items():
            plan_counts[key] = plan_counts.get(key, 0) + n
        per_u[u] = (tuple(sorted(eligible)), tuple(sorted(spot_n)), plan)
    return rules, per_u, plan_counts, reasons


def decide_scaling(
    inputs: ScalingInputs, memory: ScalerMemory | None = None, params: ScalingParams | None = None
) -> ScalingDecision:
    """Plan replicas for ``inputs`` (rules in the module docstring); pure: the new memory is in the result."""
    p = params or ScalingParams()
    prof = inputs.profile
    cap = prof.capacity_tokens_s
    mem = memory.copy() if memory is not None else ScalerMemory()
    now_s = inputs.now.timestamp()
    lookup = _rtt_lookup(inputs)
    rtt_cache: dict[tuple[str, str], float] = {}

    def rtt(u: str, loc: str) -> float:
        key = (u, loc)
        if key not in rtt_cache:
            rtt_cache[key] = round(lookup(u, loc), 1)
        return rtt_cache[key]

    reasons: list[str] = []
    allowed = set(inputs.allowed) if inputs.allowed is not None else None
    quotes = {q.location: q for q in inputs.quotes if allowed is None or q.location in allowed}
    if not quotes:
        raise ConfigError(f"endpoint {inputs.endpoint}: no quoted location to place replicas in")
    nonspot_market = (
        "on_demand" if "on_demand" in p.markets else ("reserved" if "reserved" in p.markets else None)
    )
    regions = sorted(set(inputs.demand_tokens_s) | set(inputs.forecast_tokens_s))
    terms_in: list[tuple[str, float, float, int, int, str]] = []
    total_demand = 0.0
    for u in regions:
        demand = max(0.0, float(inputs.demand_tokens_s.get(u, 0.0)))
        forecast = max(0.0, float(inputs.forecast_tokens_s.get(u, 0.0))) if p.use_forecast else 0.0
        total_demand += demand
        wanted = wanted_replicas(demand, forecast, cap, p)
        overload = demand > mem.granted.get(u, 0) * cap
        granted, hyst = hysteresis_step(u, wanted, overload, now_s, mem, p)
        terms_in.append((u, demand, forecast, wanted, granted, hyst))
    granted_items = tuple((u, g) for u, _, _, _, g, _ in terms_in)
    committed_items = tuple(sorted((k, v) for k, v in mem.committed.items() if v))
    # risk quantized to risk_step: estimates drift every tick, decisions should not
    risk_items = tuple(
        sorted(
            (loc, round(r / p.risk_step) * p.risk_step)
            for loc, r in inputs.spot_risk.items()
            if loc in quotes
        )
    )
    if inputs.rtt_ms is None:  # the default table: the plan is a function of hashable inputs only
        key = (
            # a quote snapshot id names its quotes (as in training decisions): no need to hash them
            (inputs.snapshot_id, inputs.allowed and tuple(inputs.allowed))
            if inputs.snapshot_id
            else tuple(sorted(quotes.values(), key=lambda q: q.location)),
            granted_items,
            tuple(sorted(inputs.no_spot.items())),
            committed_items,
            risk_items,
            prof,
            p,
        )
        cached = _PLAN_CACHE.get(key)
        if cached is None:
            if len(_PLAN_CACHE) >= 512:
                _PLAN_CACHE.clear()
            cached = _PLAN_CACHE[key] = _plan(
                quotes, granted_items, inputs.no_spot, dict(committed_items), dict(risk_items), rtt, prof, p
            )
    else:
        cached = _plan(
            quotes, granted_items, inputs.no_spot, dict(committed_items), dict(risk_items), rtt, prof, p
        )
    rules, per_u, plan_counts, plan_reasons = cached
    reasons.extend(plan_reasons)
    terms: list[UserRegionTerms] = []
    for u, demand, forecast, wanted, granted, hyst in terms_in:
        eligible, used_spot, plan = per_u[u]
        target = granted * cap
        terms.append(
            UserRegionTerms(
                user_region=u,
                demand_tokens_s=demand,
                forecast_tokens_s=forecast,
                wanted_replicas=wanted,
                granted_replicas=granted,
                target_tokens_s=target,
                floor_tokens_s=p.floor_share * target / p.headroom,
                eligible=eligible,
                spot_locations=used_spot,
                plan=plan,
                hysteresis=hyst,
            )
        )
        if hyst != "steady":
            reasons.append(f"{u}: {hyst}")

    # whole replicas per location and market; non-spot split into committed reserved + on-demand
    counts: dict[tuple[str, str], int] = {}
    nonspot: dict[str, int] = {}
    for (loc, market), n in plan_counts.items():
        if market == "spot":
            counts[(loc, "spot")] = n
        else:
            nonspot[loc] = nonspot.get(loc, 0) + n
    _commit(mem, nonspot, now_s, p, reasons)
    for loc in sorted(set(nonspot) | {x for x, n in mem.committed.items() if n > 0}):
        need = nonspot.get(loc, 0)
        committed = mem.committed.get(loc, 0)
        if "reserved" in p.markets and committed:
            counts[(loc, "reserved")] = committed
        if need > committed:
            counts[(loc, nonspot_market or "on_demand")] = (
                counts.get((loc, nonspot_market or "on_demand"), 0) + need - committed
            )
    counts = {k: v for k, v in counts.items() if v > 0}

    launches, terminations = _reconcile(inputs, counts, mem, total_demand, cap, quotes, reasons)
    current: dict[tuple[str, str], int] = {}
    for r in inputs.replicas:
        if r.active:
            current[(r.location, r.market)] = current.get((r.location, r.market), 0) + 1

    def usd(rows: Mapping[tuple[str, str], int]) -> float:
        total = 0.0
        for (loc, market), n in rows.items():
            q = quotes.get(loc)
            price = q.price(market) if q else None
            total += n * (price or 0.0)
        return total

    granted_changed = any(t.hysteresis.startswith(("up ", "down ", "initial")) for t in terms)
    if launches and terminations:
        action = "rebalance"
    elif launches:
        action = "scale_up" if granted_changed else "replace"
    elif terminations:
        action = "scale_down"
    else:
        action = "hold"
    decision = ScalingDecision(
        endpoint=inputs.endpoint,
        decided_at=inputs.now,
        snapshot_id=inputs.snapshot_id,
        action=action,
        launches=tuple(launches),
        terminations=tuple(terminations),
        current=tuple((loc, m, n) for (loc, m), n in sorted(current.items())),
        planned=tuple((loc, m, n) for (loc, m), n in sorted(counts.items())),
        user_regions=tuple(terms),
        spot_rules=tuple(rules.values()),
        demand_tokens_s=total_demand,
        target_tokens_s=sum(t.target_tokens_s for t in terms),
        planned_capacity_tokens_s=sum(counts.values()) * cap,
        current_usd_hour=usd(current),
        planned_usd_hour=usd(counts),
        reasons=tuple(reasons),
        memory=mem,
    )
    if inputs.budget is not None:  # 8. never start spend that would cross the team's monthly limit
        decision = gate_scaling(decision, inputs.budget)
    return decision


def _commit(
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


def _reconcile(
    inputs: ScalingInputs,
    counts: Mapping[tuple[str, str], int],
    mem: ScalerMemory,
    demand_now: float,
    cap: float,
    quotes: Mapping[str, LocationQuote],
    reasons: list[str],
) -> tuple[list[Launch], list[Termination]]:
    by_key: dict[tuple[str, str], list[ReplicaState]] = {}
    for r in inputs.replicas:
        if r.active:
            by_key.setdefault((r.location, r.market), []).append(r)
    launches: list[Launch] = []
    excess: list[ReplicaState] = []
    for key in sorted(set(counts) | set(by_key)):
        have = by_key.get(key, [])
        want = counts.get(key, 0)
        if want > len(have):
            loc, market = key
            launches.append(Launch(loc, market, want - len(have), f"plan wants {want}, {len(have)} active"))
        elif want < len(have):
            # provisioning first (nothing served yet), then the newest ids
            ordered = sorted(have, key=lambda r: (r.state != "provisioning", r.replica_id), reverse=False)
            excess.extend(ordered[: len(have) - want])
    if not excess:
        return launches, []

    def price(r: ReplicaState) -> float:
        q = quotes.get(r.location)
        return (q.price(r.market) if q else None) or 0.0

    ready_cap = sum(1 for r in inputs.replicas if r.state == "ready") * cap
    # make before break: a ready replica is stopped only while the ready replicas left still number
    # at least the plan's; replicas the plan adds (launched now or provisioning) must be ready first.
    # The replacement may never come (a spot launch into a region without capacity fails):
    # stopping the old replica first would leave its users without capacity for a cold start and
    # relaunch it at the next decision.
    ready_n = sum(1 for r in inputs.replicas if r.state == "ready")
    planned_n = sum(counts.values())
    terminations: list[Termination] = []
    for r in sorted(excess, key=lambda r: (r.state != "provisioning", -price(r), r.replica_id)):
        if r.market == "reserved" and mem.committed.get(r.location, 0) >= len(
            by_key.get((r.location, "reserved"), [])
        ):
            continue  # committed: paid for anyway, keep serving
        if r.state == "ready":
            if ready_n - 1 < planned_n or ready_cap - cap < demand_now:
                reasons.append(f"keeping {r.replica_id} until replacements are ready (make before break)")
                continue
            ready_cap -= cap
            ready_n -= 1
        terminations.append(Termination(r.replica_id, r.location, r.market, "not in the plan"))
    return launches, terminations


def record_scaling_decision(con: Any, decision: ScalingDecision) -> bool:
    """Record ``decision`` in ``raw.scaling_decisions`` (once per id); whether it was new.

    Through :func:`spotshift.warehouse.record_facts`, the one path facts take; ``con`` is a write
    connection the caller holds (``None``: open the warehouse, or land the row in its fact lake).
    """
    from spotshift.warehouse import record_facts

    outcome = record_facts({"raw.scaling_decisions": [decision.to_row()]}, con=con)
    return bool(outcome.written.get("raw.scaling_decisions"))


def gate_scaling(decision: ScalingDecision, status: Any) -> ScalingDecision:
    """``decision`` with its launches withheld when the planned fleet for the rest of the month would
    take the team past its cap (``status``: a :class:`spotshift.budgets.BudgetStatus`)."""
    if not decision.launches:
        return decision
    fleet = max(decision.planned_usd_hour, decision.current_usd_hour) * status.hours_left
    if status.fits(fleet):
        return decision
    b = status.budget
    return replace(
        decision,
        action="hold",
        launches=(),
        terminations=(),
        planned=decision.current,
        planned_usd_hour=decision.current_usd_hour,
        reasons=(
            *decision.reasons,
            f"budget: the planned fleet at {decision.planned_usd_hour:.2f} USD/h for the {status.hours_left:.0f} h left "
            f"this month would take team {b.name} past its {b.monthly_usd:,.2f} USD monthly limit "
            f"({status.used_usd:,.2f} USD spent): launches withheld",
        ),
    )
