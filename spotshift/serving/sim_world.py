"""The inference simulator's world and outcomes: what every policy faces (:class:`SimInputs`), a
simulated replica, one policy's outcome, and the forecasts the live loop would have made."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from spotshift.errors import ConfigError
from spotshift.serving.forecast import ForecastParams, rolling_forecasts
from spotshift.serving.slo import ServingProfile

POLICIES = ("on_demand", "reserved", "spot_greedy", "spothedge", "spotshift")
POLICY_LABELS = {
    "on_demand": "all on-demand",
    "reserved": "all reserved (1-year)",
    "spot_greedy": "spot greedy (cheapest region)",
    "spothedge": "SpotHedge-like (SkyServe)",
    "spotshift": "spotshift autoscaler + router",
}


@dataclass
class SimReplica:
    """A replica inside the simulator."""

    replica_id: str
    loc: int
    market: str
    launched: int
    ready_at: int
    owner: str = ""

    def state_at(self, t: int) -> str:
        """provisioning or ready at tick ``t``."""
        return "ready" if t >= self.ready_at else "provisioning"


@dataclass
class PolicyOutcome:
    """What one policy did and what it cost (the ``--json`` per-policy object)."""

    name: str
    cost_usd: float
    saving_vs_on_demand: float | None
    slo_attainment: float
    availability: float
    requests: float
    late_requests: float
    failed_requests: float
    cost_by_market_usd: dict[str, float]
    replica_hours: dict[str, float]
    mean_ready_replicas: float
    preemptions: int
    failed_spot_launches: int
    launches: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class SimInputs:
    """The world every policy faces: grid, locations, prices, availability, demand, forecasts."""

    start: datetime
    tick_s: int
    locations: list[str]
    users: list[str]
    spot: Any  # [T, L] USD/h, nan = not offered
    on_demand: Any  # [T, L]
    reserved: Any  # [T, L]
    available: Any  # [T, L] bool
    epoch: Any  # [T] quote snapshot index
    demand: Any  # [T, U] tokens/s
    forecast: Any  # [T, U] tokens/s (what the live loop would have forecast, made before the tick)
    rtt: Any  # [U, L] ms
    profile: ServingProfile

    @property
    def ticks(self) -> int:
        """Ticks in the window."""
        return int(self.demand.shape[0])


def forecasts_for(demand: Any, tick_s: int, params: ForecastParams | None = None) -> Any:
    """Per tick, the forecast made at the end of the last complete forecast step before it.

    Before the first complete step the demand of the previous tick stands in.
    """
    import numpy as np

    p = params or ForecastParams()
    if p.step_s % tick_s:
        raise ConfigError(f"forecast step {p.step_s} s is not a whole number of {tick_s} s ticks")
    k = p.step_s // tick_s
    T, U = demand.shape
    steps = T // k
    out = np.empty_like(demand)
    for j in range(U):
        agg = demand[: steps * k, j].reshape(steps, k).mean(axis=1) if steps else np.empty(0)
        f = rolling_forecasts(agg, p) if steps else np.empty(0)
        step_idx = np.arange(T) // k - 1  # the last complete step before tick t
        prev = np.concatenate([[demand[0, j]], demand[:-1, j]])
        out[:, j] = np.where(
            step_idx >= 0, f[np.clip(step_idx, 0, max(0, steps - 1))] if steps else 0.0, prev
        )
    return out
