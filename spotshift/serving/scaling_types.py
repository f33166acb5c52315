"""The autoscaler's typed values: replica states, quotes, knobs, memory, inputs and decisions.

:func:`spotshift.serving.autoscale.decide_scaling` takes and returns these; the live loop and the
simulator build them (the rules are in :mod:`spotshift.serving.autoscale`'s docstring).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from spotshift.errors import ConfigError
from spotshift.pricing.regions import provider_of
from spotshift.pricing.reserved import reserved_price_usd_hour
from spotshift.serving.slo import ServingProfile

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
    # a preemption costs ~1.5 h of the replica: its replacement's cold start billed, late requests
    # meanwhile, the location's spot lost for the cooldown (chosen on the benchmark windows, README)
    preemption_penalty_hours: float = 1.5
    risk_step: float = 0.05
    markets: tuple[str, ...] = MARKETS
    use_forecast: bool = True
    pool_rounding: bool = True  # rule 1: round the endpoint's replicas once, not per user region
    pooled_floor: bool = True  # rule 5: other regions' surplus after a spot loss counts towards a floor

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
