"""Reserved (committed-use) GPU prices derived from on-demand: ``on_demand x (1 - discount)``.

No feed publishes reserved prices next to spot and on-demand in one shape, and the commitment
discount for GPU instances is close to a per-provider constant for a given term, so spotshift
derives the reserved price from the on-demand quote with the provider's documented 1-year
discount (:data:`RESERVED_DISCOUNTS`):

* **AWS** — 1-year, no upfront: EC2 Instance Savings Plans / Standard Reserved Instances. The
  pricing pages show 31-41 % off on-demand for the GPU families in us-east-1 (g5, g6, p4d, p5);
  we take 0.36. https://aws.amazon.com/savingsplans/compute-pricing/ and
  https://aws.amazon.com/ec2/pricing/reserved-instances/pricing/
* **GCP** — 1-year resource-based committed use discount for GPUs and accelerator-optimized
  machine types: 37 % (55 % for 3 years), as the CUD documentation states.
  https://cloud.google.com/compute/docs/instances/committed-use-discounts-overview
* **Azure** — 1-year Reserved VM Instances: the pricing calculator shows ~35-41 % off
  pay-as-you-go for the NC/ND GPU series ("up to 72 %" is the 3-year figure); we take 0.38.
  https://azure.microsoft.com/pricing/reserved-vm-instances/

The AWS and Azure figures were read off the providers' pages for the instance types in
``catalog.csv`` and are typical, not exact per instance type: users with negotiated commitments
pass their own table. A reserved instance is paid for every hour of its term whether it serves or
not; callers that compare it with spot must bill it that way (the inference simulator does).

Seed 000's autoscaling rule compares spot with this price: add spot capacity when
``spot < 0.6 x reserved``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from spotshift.errors import ConfigError

TERM = "1y"


@dataclass(frozen=True)
class ReservedDiscount:
    """A provider's commitment discount off on-demand for GPU instances."""

    provider: str
    term: str
    discount: float
    instrument: str
    source: str


RESERVED_DISCOUNTS: dict[str, ReservedDiscount] = {
    "aws": ReservedDiscount(
        "aws",
        TERM,
        0.36,
        "EC2 Instance Savings Plan / Standard RI, 1 year, no upfront",
        "https://aws.amazon.com/ec2/pricing/reserved-instances/pricing/",
    ),
    "gcp": ReservedDiscount(
        "gcp",
        TERM,
        0.37,
        "resource-based committed use discount, 1 year (GPUs, accelerator-optimized)",
        "https://cloud.google.com/compute/docs/instances/committed-use-discounts-overview",
    ),
    "azure": ReservedDiscount(
        "azure",
        TERM,
        0.38,
        "Reserved VM Instance, 1 year",
        "https://azure.microsoft.com/pricing/reserved-vm-instances/",
    ),
}


def reserved_discount(provider: str, table: Mapping[str, ReservedDiscount] | None = None) -> float:
    """The 1-year commitment discount of ``provider`` (fraction off on-demand)."""
    rates = RESERVED_DISCOUNTS if table is None else table
    key = provider.strip().lower()
    if key not in rates:
        raise ConfigError(f"no reserved discount for provider {provider!r} (known: {', '.join(rates)})")
    d = rates[key].discount
    if not (0.0 <= d < 1.0):
        raise ConfigError(f"reserved discount for {key} must be in [0, 1), got {d}")
    return d


def reserved_price_usd_hour(
    provider: str, ondemand_usd_hour: float, table: Mapping[str, ReservedDiscount] | None = None
) -> float:
    """Effective hourly price of a 1-year commitment: ``ondemand_usd_hour x (1 - discount)``."""
    if not (isinstance(ondemand_usd_hour, (int, float)) and math.isfinite(ondemand_usd_hour)):
        raise ConfigError(f"on-demand price must be a finite number, got {ondemand_usd_hour!r}")
    if ondemand_usd_hour < 0:
        raise ConfigError(f"on-demand price must be >= 0, got {ondemand_usd_hour}")
    return ondemand_usd_hour * (1.0 - reserved_discount(provider, table))
