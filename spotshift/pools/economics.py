"""Wait for the pool or burst to a cloud; stay in the cloud or come back. Both choices costed.

Burst (a queued job): waiting costs the pool's price for the work (``work_hours x gpus x
usd_per_gpu_hour``) and finishes at ``now + wait + work``; bursting costs the cloud's all-in hourly
price for the work plus the data's egress out of the site (``dataset bytes x site egress``) and the
checkpoint's return trip (``checkpoint bytes x the cloud's internet egress rate``: data gravity).
The job bursts when waiting would miss its deadline (with the changeover as reserve), or when the
burst is cheaper than waiting by more than the placement margin (``margin_fraction`` of the
waiting cost, at least ``margin_min_usd``: the same hysteresis as a price move).

Repatriation (a burst job, once the pool has room for it and the cooldown since the burst has
passed): staying costs the cloud price for the work left; coming back costs the pool price for it
plus the checkpoint's trip home and the changeover hours at the cloud price. It comes back when
that saves more than the margin and the deadline still holds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from spotshift.placement.params import PlacementParams


@dataclass(frozen=True)
class PoolChoice:
    """One decision and what each side of it costs (USD)."""

    action: str  # wait | burst | stay | repatriate
    cost_pool_usd: float
    """Running the work (left) on the pool."""
    cost_cloud_usd: float
    """Running it in the cloud, egress included."""
    egress_usd: float
    wait_hours: float
    reason: str

    @property
    def saving_usd(self) -> float:
        """What the chosen side saves over the other (negative: paid for the deadline)."""
        if self.action in ("burst", "stay"):
            return self.cost_pool_usd - self.cost_cloud_usd
        return self.cost_cloud_usd - self.cost_pool_usd

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "saving_usd": self.saving_usd}


def _margin(cost: float, params: PlacementParams) -> float:
    return max(params.margin_min_usd, params.margin_fraction * cost)


def burst_or_wait(
    *,
    work_hours: float,
    gpus: int,
    pool_usd_per_gpu_hour: float,
    wait_hours: float,
    deadline_hours_left: float | None,
    cloud_usd_hour: float | None,
    egress_out_usd: float,
    egress_back_usd: float,
    params: PlacementParams | None = None,
) -> PoolChoice:
    """The choice for a job waiting in a full pool's queue (see the module docstring).
    ``cloud_usd_hour`` None: no feasible cloud offer, the job waits whatever the deadline says."""
    p = params or PlacementParams()
    pool_cost = work_hours * gpus * pool_usd_per_gpu_hour
    egress = egress_out_usd + egress_back_usd
    if cloud_usd_hour is None:
        return PoolChoice("wait", pool_cost, float("inf"), 0.0, wait_hours, "no feasible cloud offer")
    cloud_cost = (work_hours + p.changeover_hours) * cloud_usd_hour + egress
    late = (
        deadline_hours_left is not None and wait_hours + work_hours + p.changeover_hours > deadline_hours_left
    )
    if late:
        return PoolChoice(
            "burst",
            pool_cost,
            cloud_cost,
            egress,
            wait_hours,
            f"waiting {wait_hours:.2f} h + {work_hours:.2f} h of work misses the deadline in "
            f"{deadline_hours_left:.2f} h",
        )
    if pool_cost - cloud_cost > _margin(pool_cost, p):
        return PoolChoice(
            "burst",
            pool_cost,
            cloud_cost,
            egress,
            wait_hours,
            f"cloud ${cloud_cost:,.2f} (egress ${egress:,.2f}) is cheaper than the pool's ${pool_cost:,.2f}",
        )
    return PoolChoice(
        "wait",
        pool_cost,
        cloud_cost,
        egress,
        wait_hours,
        f"waiting {wait_hours:.2f} h for the pool (${pool_cost:,.2f}) beats the cloud "
        f"(${cloud_cost:,.2f} incl. ${egress:,.2f} egress)",
    )


def stay_or_repatriate(
    *,
    work_hours_left: float,
    gpus: int,
    pool_usd_per_gpu_hour: float,
    cloud_usd_hour: float,
    egress_back_usd: float,
    deadline_hours_left: float | None,
    hours_since_burst: float,
    params: PlacementParams | None = None,
) -> PoolChoice:
    """The choice for a burst job once the pool has room for it (see the module docstring)."""
    p = params or PlacementParams()
    stay = work_hours_left * cloud_usd_hour
    back = (
        work_hours_left * gpus * pool_usd_per_gpu_hour + egress_back_usd + p.changeover_hours * cloud_usd_hour
    )

    def choice(action: str, reason: str) -> PoolChoice:
        return PoolChoice(action, back, stay, egress_back_usd, 0.0, reason)

    if hours_since_burst < p.cooldown_hours:
        return choice("stay", f"cooldown: burst {hours_since_burst:.2f} h ago (< {p.cooldown_hours:g} h)")
    if deadline_hours_left is not None and work_hours_left + p.changeover_hours > deadline_hours_left:
        return choice("stay", "coming back would miss the deadline")
    if stay - back > _margin(stay, p):
        return choice(
            "repatriate",
            f"the pool's ${back:,.2f} (incl. ${egress_back_usd:,.2f} egress home) beats ${stay:,.2f} more in the cloud",
        )
    return choice("stay", f"coming back (${back:,.2f}) does not save the margin over staying (${stay:,.2f})")
