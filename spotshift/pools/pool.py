"""A private GPU pool as a declared entity (section ``pools`` of the declarations file).

Standard library only (the command line validates declarations before heavy imports).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from spotshift import registry
from spotshift.errors import ConfigError, SpotshiftError, build_record, check_range
from spotshift.pricing.catalog import canonical_gpu_model

SECTION = "pools"

#: Assumption (no seed gives a figure): a private site buys committed IP transit, billed per Mbps
#: at the 95th percentile, not per GB. At ~$0.50 per Mbps-month (2024 list prices of large transit
#: carriers in US/EU metros) a link averaging 30 % of its 95th percentile carries about
#: 0.3 x 324 GB = 97 GB per Mbps-month, i.e. ~$0.005 per GB sent. Set the pool's own rate with
#: ``spotshift pools add --egress-usd-per-gb``.
DEFAULT_SITE_EGRESS_USD_PER_GB = 0.005

#: seed 000, benchmark table: on-prem DGX, cost per training hour of an 8x A100 node including
#: power, cooling and amortised hardware ("$14.20*")
SEED_NODE_USD_HOUR = 14.20
SEED_NODE_GPUS = 8
DEFAULT_USD_PER_GPU_HOUR = SEED_NODE_USD_HOUR / SEED_NODE_GPUS  # 1.775
#: seed 000: "that 15% on-prem advantage is real—if you can achieve >70% utilization"
BREAKEVEN_UTILISATION = 0.70
_SITE = re.compile(r"^onprem/[a-z0-9][a-z0-9-]{0,62}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class PrivatePool:
    """Owned GPUs: ``gpus`` of ``gpu_model`` at ``location`` (``onprem/<site>``), priced per GPU-hour."""

    name: str
    gpu_model: str
    gpus: int
    usd_per_gpu_hour: float = DEFAULT_USD_PER_GPU_HOUR
    location: str = ""
    egress_usd_per_gb: float = DEFAULT_SITE_EGRESS_USD_PER_GB
    """What the site pays to send a GB out (its transit; default: the stated assumption of
    :data:`DEFAULT_SITE_EGRESS_USD_PER_GB`); cloud ingress is free. The return trip of a
    burst (checkpoint back) is priced at the cloud's internet egress rate."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigError(f"pool {self.name!r}: name must use only a-z, 0-9, '-', '_' and '.'")
        try:
            if not isinstance(self.gpu_model, str) or canonical_gpu_model(self.gpu_model) is None:
                raise ConfigError(f"gpu_model {self.gpu_model!r} is not a known GPU model (e.g. A100, H100)")
            check_range(self.gpus, "gpus", low=0, high=1_000_000, integer=True)
            check_range(self.usd_per_gpu_hour, "usd_per_gpu_hour", low=0, high=1000)
            check_range(self.egress_usd_per_gb, "egress_usd_per_gb", low=0, high=10, low_inclusive=True)
            if self.location and not _SITE.match(self.location):
                raise ConfigError(f"location {self.location!r} is not onprem/<site> (a-z, 0-9, '-')")
        except SpotshiftError as exc:
            raise ConfigError(f"pool {self.name!r}: {exc}") from None
        if not self.location:
            object.__setattr__(self, "location", f"onprem/{self.name.replace('_', '-').replace('.', '-')}")
        object.__setattr__(self, "gpu_model", canonical_gpu_model(self.gpu_model))

    @property
    def usd_per_node_hour(self) -> float:
        """The price of 8 GPUs for an hour (the seed's unit)."""
        return self.usd_per_gpu_hour * SEED_NODE_GPUS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PrivatePool:
        return build_record(cls, raw, f"pool {raw.get('name', '?')!r}")


def add_pool(pool: PrivatePool, *, replace: bool = False) -> None:
    """Declare ``pool`` (atomically; an existing name is an error unless ``replace``)."""
    registry.upsert(SECTION, pool.to_dict(), replace=replace)


def get_pool(name: str) -> PrivatePool:
    """One declared pool; :class:`ConfigError` when it is not declared."""
    return PrivatePool.from_dict(registry.get(SECTION, name))


def load_pools() -> list[PrivatePool]:
    """Every declared pool."""
    return [PrivatePool.from_dict(e) for e in registry.entries(SECTION)]
