"""Tunable parameters of placement scoring and migration economics, with their defaults and why."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from spotshift.errors import ConfigError


@dataclass(frozen=True)
class PlacementParams:
    """Knobs shared by :func:`spotshift.placement.scoring.score_candidates` and
    :func:`spotshift.placement.economics.decide` (the simulator passes the same object).

    Hours are wall-clock hours; money is USD.
    """

    #: seed 000 amortizes the data-transfer penalty over one week when the duration is unknown
    default_amortization_hours: float = 168.0
    #: never amortize over less than this (a job about to finish would make any penalty infinite)
    min_amortization_hours: float = 1.0
    #: sustained cross-region copy throughput used to turn missing bytes into waiting time, Gbit/s
    transfer_gbps: float = 10.0
    #: provisioning + restore + warm-up of a new instance: time the job makes no progress
    changeover_hours: float = 0.25
    #: the move must beat its cost by max(margin_min_usd, margin_fraction x remaining spend)
    margin_fraction: float = 0.02
    margin_min_usd: float = 1.0
    #: after a move, stay put this long unless forced (preemption, deadline, price cap)
    cooldown_hours: float = 6.0
    #: how often the decision is re-evaluated (sensor interval, simulator tick); the deadline
    #: safety net must trigger one interval early
    decision_interval_hours: float = 1.0 / 60.0
    #: when no spot capacity exists, wait for it (queue) instead of paying on-demand while the job
    #: is ahead of uniform progress (Can't Be Late's rule); the safety net still guarantees the deadline
    wait_for_spot_when_ahead: bool = True
    #: expected spot outage when no risk estimate says otherwise (published preemption spells 1.4-3.1 h)
    default_outage_hours: float = 2.0
    #: weigh "move later" (to a cheaper placement whose spot capacity is gone now, once it is
    #: expected back) against moving now: stay and move once instead of twice when later pays more.
    #: Off by default: on the policy benchmark it changed 5 of 18 cases, 4 for the worse (-0.1 to
    #: -0.4 points) and 1 for the better (+0.1), +64 USD over all 18 (outages outlast their mean)
    move_later: bool = False
    #: evaluate the move economics for this many best-ranked alternatives
    max_alternatives: int = 25

    def __post_init__(self) -> None:
        for name in (
            "default_amortization_hours",
            "min_amortization_hours",
            "transfer_gbps",
            "decision_interval_hours",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"placement parameter {name} must be > 0, got {getattr(self, name)}")
        for name in ("changeover_hours", "margin_fraction", "margin_min_usd", "cooldown_hours"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"placement parameter {name} must be >= 0, got {getattr(self, name)}")
        if self.max_alternatives < 1:
            raise ConfigError("placement parameter max_alternatives must be >= 1")

    def transfer_hours(self, nbytes: float) -> float:
        """Hours to copy ``nbytes`` across regions at :attr:`transfer_gbps`."""
        return nbytes * 8.0 / (self.transfer_gbps * 1e9) / 3600.0

    def with_(self, **changes: Any) -> PlacementParams:
        """A copy with some fields changed (validated)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (recorded next to decisions so a choice can be replayed)."""
        return asdict(self)
