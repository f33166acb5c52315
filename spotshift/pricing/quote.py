"""``NormalizedGPUQuote``: one price of one instance type in one place and market, in USD.

Every feed (replay, aws, gcp, azure) produces these; placement, the simulator and the warehouse
consume them. Field names are a contract (``spotshift quotes normalize`` prints exactly these).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any

MARKETS = ("spot", "on_demand")


def effective_gpu_hour_usd(
    price_usd_hour: float, gpu_count: int, net_gbps: float, storage_gbps: float
) -> float:
    """DESIGN §3 (seed 000): the price of one GPU-hour once slow network and storage are priced in.

    ``price * (1 + max(0, (200 - net_gbps) * 0.05) + max(0, (10 - storage_gbps) * 0.08)) / gpu_count``
    """
    if gpu_count <= 0:
        raise ValueError(f"gpu_count must be positive, got {gpu_count}")
    penalty = max(0.0, (200.0 - net_gbps) * 0.05) + max(0.0, (10.0 - storage_gbps) * 0.08)
    return price_usd_hour * (1.0 + penalty) / gpu_count


@dataclass(frozen=True)
class NormalizedGPUQuote:
    """A validated GPU instance price. ``location`` is ``provider/region``."""

    provider: str
    region: str
    zone: str
    instance_type: str
    gpu_model: str
    gpu_count: int
    market: str
    price_usd_hour: float
    effective_gpu_hour_usd: float
    net_gbps: float
    storage_gbps: float
    topology_score: float
    observed_at: datetime
    source: str

    @property
    def location(self) -> str:
        """``provider/region``: the unit placement and stores work in."""
        return f"{self.provider}/{self.region}"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with exactly the contract field names (``observed_at`` as ISO-8601)."""
        d = asdict(self)
        d["observed_at"] = self.observed_at.isoformat()
        return d


QUOTE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(NormalizedGPUQuote))


def is_finite_positive(x: float) -> bool:
    """True for a finite number > 0 (rejects NaN, inf, zero and negatives)."""
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0
