"""Egress prices: what moving one GB from one provider/region to another costs.

List prices (USD per GB, first pricing tier), as published by the providers in 2024-2025:

* AWS — inter-region $0.02/GB, internet $0.09/GB (first 10 TB), cross-AZ $0.01/GB each way.
  https://aws.amazon.com/ec2/pricing/on-demand/#Data_Transfer
* GCP — inter-region within a continent $0.02/GB, between continents $0.05/GB (NA<->EU) up to
  $0.08/GB (to/from APAC), internet (premium tier, 0-1 TB) $0.12/GB.
  https://cloud.google.com/vpc/network-pricing
* Azure — inter-region within a continent $0.02/GB, between continents $0.05/GB, internet
  $0.087/GB (Microsoft network, after the first 100 GB). https://azure.microsoft.com/pricing/details/bandwidth/
* Cross-AZ inside one region: $0.01/GB (seed 002's playbook).

Leaving a cloud for another cloud, or for a private pool's site, is billed by the source as internet
egress; leaving a private site costs the pool's own rate (:mod:`spotshift.pools.site`, default an
assumption stated there). The table is a
default: users with negotiated rates pass their own table to :func:`egress_usd_per_gb`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from spotshift.errors import ConfigError
from spotshift.pools.site import PRIVATE_PROVIDER, site_egress_usd_per_gb
from spotshift.pricing.regions import split_location


@dataclass(frozen=True)
class EgressRates:
    """One provider's egress list prices, USD per GB."""

    cross_az: float
    inter_region_same_continent: float
    inter_region_cross_continent: float
    internet: float
    source: str


DEFAULT_EGRESS: dict[str, EgressRates] = {
    "aws": EgressRates(0.01, 0.02, 0.02, 0.09, "https://aws.amazon.com/ec2/pricing/on-demand/#Data_Transfer"),
    "gcp": EgressRates(0.01, 0.02, 0.08, 0.12, "https://cloud.google.com/vpc/network-pricing"),
    "azure": EgressRates(0.01, 0.02, 0.05, 0.087, "https://azure.microsoft.com/pricing/details/bandwidth/"),
}

_CONTINENT_PREFIXES: tuple[tuple[str, str], ...] = (
    ("us-", "na"),
    ("ca-", "na"),
    ("northamerica-", "na"),
    ("mx-", "na"),
    ("eu-", "eu"),
    ("europe-", "eu"),
    ("uk", "eu"),
    ("france", "eu"),
    ("germany", "eu"),
    ("norway", "eu"),
    ("switzerland", "eu"),
    ("sweden", "eu"),
    ("poland", "eu"),
    ("italy", "eu"),
    ("spain", "eu"),
    ("westeurope", "eu"),
    ("northeurope", "eu"),
    ("ap-", "apac"),
    ("asia-", "apac"),
    ("australia", "apac"),
    ("japan", "apac"),
    ("korea", "apac"),
    ("southeastasia", "apac"),
    ("eastasia", "apac"),
    ("centralindia", "apac"),
    ("southindia", "apac"),
    ("westindia", "apac"),
    ("jioindia", "apac"),
    ("newzealand", "apac"),
    ("sa-", "sa"),
    ("southamerica-", "sa"),
    ("brazil", "sa"),
    ("chile", "sa"),
    ("me-", "me"),
    ("il-", "me"),
    ("uae", "me"),
    ("qatar", "me"),
    ("israel", "me"),
    ("af-", "af"),
    ("africa-", "af"),
    ("southafrica", "af"),
)
_AZURE_NA = ("eastus", "westus", "centralus", "northcentralus", "southcentralus", "westcentralus", "canada")


def continent_of(region: str) -> str:
    """Continent code (na, eu, apac, sa, me, af) of a region name of any of the three providers."""
    r = region.lower()
    if r.startswith(_AZURE_NA):
        return "na"
    for prefix, continent in _CONTINENT_PREFIXES:
        if r.startswith(prefix):
            return continent
    if r.endswith(("us", "us2", "us3")):
        return "na"
    return "other"


def egress_usd_per_gb(
    src: str,
    dst: str,
    *,
    src_zone: str = "",
    dst_zone: str = "",
    table: Mapping[str, EgressRates] | None = None,
) -> float:
    """Price of moving one GB from location ``src`` to ``dst`` (``provider/region`` strings).

    Same region and zone (or zones unknown): 0. Same region, different zones: cross-AZ rate.
    Same provider, other region: inter-region rate of the source (same or cross continent).
    Other provider: the source's internet egress rate. Out of a private site (``onprem/<site>``):
    the rate of the pool declared there (:mod:`spotshift.pools.site`); into one: the source's
    internet egress rate.
    """
    rates = table or DEFAULT_EGRESS
    sp, sr = split_location(src, zone=True)
    dp, dr = split_location(dst, zone=True)
    if sp == PRIVATE_PROVIDER and sp not in rates:  # out of a private pool's site: its own rate
        return 0.0 if (dp, dr) == (sp, sr) else site_egress_usd_per_gb(f"{sp}/{sr}")
    if sp not in rates:
        raise ConfigError(f"no egress prices for provider {sp!r} (location {src!r})")
    r = rates[sp]
    if sp != dp:
        return r.internet
    if sr == dr:
        return r.cross_az if (src_zone and dst_zone and src_zone != dst_zone) else 0.0
    if continent_of(sr) == continent_of(dr):
        return r.inter_region_same_continent
    return r.inter_region_cross_continent


def egress_usd(src: str, dst: str, nbytes: int, **kwargs: object) -> float:
    """Cost in USD of moving ``nbytes`` from ``src`` to ``dst`` (GB = 1e9 bytes, as providers bill)."""
    return egress_usd_per_gb(src, dst, **kwargs) * nbytes / 1e9  # type: ignore[arg-type]
