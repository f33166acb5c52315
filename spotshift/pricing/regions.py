"""The known locations: every public region of the three clouds spotshift prices.

A location is ``provider/region`` (``gcp/us-central1``), or ``provider/region/zone`` where a
zone matters (cross-AZ egress). Declarations (datasets, jobs) and location options are checked
here, with the reason, so a typo such as ``mars/olympus`` is refused when it is declared instead
of becoming a store directory nobody prices.

Region lists as the providers publish them (2025):

* AWS — https://docs.aws.amazon.com/global-infrastructure/latest/regions/aws-regions.html
* GCP — https://cloud.google.com/compute/docs/regions-zones
* Azure — https://learn.microsoft.com/azure/reliability/regions-list (``az account list-locations``)

Standard library only: the command line checks locations before it imports anything heavy.
"""

from __future__ import annotations

import fnmatch

from spotshift.errors import ConfigError
from spotshift.locations import provider_of as provider_of
from spotshift.locations import region_of as region_of
from spotshift.locations import split_location as split_location
from spotshift.locations import zone_of as zone_of
from spotshift.pools.site import site_pool

KNOWN_REGIONS: dict[str, frozenset[str]] = {
    "aws": frozenset(
        [
            "us-east-1",
            "us-east-2",
            "us-west-1",
            "us-west-2",
            "af-south-1",
            "ap-east-1",
            "ap-east-2",
            "ap-south-1",
            "ap-south-2",
            "ap-southeast-1",
            "ap-southeast-2",
            "ap-southeast-3",
            "ap-southeast-4",
            "ap-southeast-5",
            "ap-southeast-6",
            "ap-southeast-7",
            "ap-northeast-1",
            "ap-northeast-2",
            "ap-northeast-3",
            "ca-central-1",
            "ca-west-1",
            "eu-central-1",
            "eu-central-2",
            "eu-west-1",
            "eu-west-2",
            "eu-west-3",
            "eu-south-1",
            "eu-south-2",
            "eu-north-1",
            "il-central-1",
            "me-south-1",
            "me-central-1",
            "mx-central-1",
            "sa-east-1",
            "us-gov-east-1",
            "us-gov-west-1",
            "cn-north-1",
            "cn-northwest-1",
        ]
    ),
    "gcp": frozenset(
        [
            "africa-south1",
            "asia-east1",
            "asia-east2",
            "asia-northeast1",
            "asia-northeast2",
            "asia-northeast3",
            "asia-south1",
            "asia-south2",
            "asia-southeast1",
            "asia-southeast2",
            "asia-southeast3",
            "australia-southeast1",
            "australia-southeast2",
            "europe-central2",
            "europe-north1",
            "europe-north2",
            "europe-southwest1",
            "europe-west1",
            "europe-west2",
            "europe-west3",
            "europe-west4",
            "europe-west6",
            "europe-west8",
            "europe-west9",
            "europe-west10",
            "europe-west12",
            "me-central1",
            "me-central2",
            "me-west1",
            "northamerica-northeast1",
            "northamerica-northeast2",
            "northamerica-south1",
            "southamerica-east1",
            "southamerica-west1",
            "us-central1",
            "us-east1",
            "us-east4",
            "us-east5",
            "us-south1",
            "us-west1",
            "us-west2",
            "us-west3",
            "us-west4",
        ]
    ),
    "azure": frozenset(
        [
            "eastus",
            "eastus2",
            "southcentralus",
            "westus2",
            "westus3",
            "australiaeast",
            "southeastasia",
            "northeurope",
            "swedencentral",
            "uksouth",
            "westeurope",
            "centralus",
            "southafricanorth",
            "centralindia",
            "eastasia",
            "indonesiacentral",
            "japaneast",
            "japanwest",
            "koreacentral",
            "koreasouth",
            "malaysiawest",
            "newzealandnorth",
            "canadacentral",
            "canadaeast",
            "francecentral",
            "francesouth",
            "germanywestcentral",
            "germanynorth",
            "italynorth",
            "norwayeast",
            "norwaywest",
            "polandcentral",
            "spaincentral",
            "switzerlandnorth",
            "switzerlandwest",
            "mexicocentral",
            "uaenorth",
            "uaecentral",
            "brazilsouth",
            "brazilsoutheast",
            "israelcentral",
            "qatarcentral",
            "chilecentral",
            "austriaeast",
            "northcentralus",
            "westus",
            "westcentralus",
            "jioindiawest",
            "jioindiacentral",
            "southindia",
            "westindia",
            "ukwest",
            "australiacentral",
            "australiacentral2",
            "australiasoutheast",
            "southafricawest",
            "swedensouth",
        ]
    ),
}

_GLOB_CHARS = set("*?[")


def check_location(location: str, what: str = "location", *, zone: bool = False) -> str:
    """``location`` if it is ``provider/region`` of a known region (``provider/region/zone`` with
    ``zone``, the zone named after its region as the clouds do) or ``onprem/<site>`` of a declared
    private pool; else :class:`ConfigError` naming
    ``what`` and the reason."""
    parts = location.split("/") if isinstance(location, str) else []
    if len(parts) not in ((2, 3) if zone else (2,)) or not all(p.strip() for p in parts):
        shape = "provider/region or provider/region/zone" if zone else "provider/region"
        raise ConfigError(f"{what} {location!r} is not of the form {shape}")
    provider, region = parts[0], parts[1]
    if provider == "onprem" and len(parts) == 2:  # a private pool's site (spotshift.pools.site)
        try:
            site_pool(location)
        except ConfigError:
            raise ConfigError(
                f"{what} {location!r}: no private pool is declared there (spotshift pools add)"
            ) from None
        return location
    _check_provider(provider, what, location)
    if region not in KNOWN_REGIONS[provider]:
        raise ConfigError(
            f"{what} {location!r}: {region!r} is not a known {provider} region{_hint(provider, region)}"
        )
    if len(parts) == 3 and not (parts[2].startswith(region) or provider == "azure"):
        raise ConfigError(f"{what} {location!r}: zone {parts[2]!r} is not in region {region}")
    return location


def check_location_pattern(pattern: str, what: str = "location pattern") -> str:
    """``pattern`` if it is ``*``, or ``provider/region`` where either part may be a shell pattern
    (``aws/*``, ``gcp/us-*``) that matches at least one known location; else :class:`ConfigError`."""
    if pattern == "*":
        return pattern
    if not isinstance(pattern, str) or not (_GLOB_CHARS & set(pattern)):
        return check_location(pattern, what)
    provider, sep, region = pattern.partition("/")
    if not sep or not provider or not region or "/" in region:
        raise ConfigError(f"{what} {pattern!r} is not provider/region (or a pattern such as aws/*)")
    if not any(
        fnmatch.fnmatchcase(f"{p}/{r}", pattern) for p, regions in KNOWN_REGIONS.items() for r in regions
    ):
        if not (_GLOB_CHARS & set(provider)):
            _check_provider(provider, what, pattern)
        raise ConfigError(f"{what} {pattern!r} matches no known location")
    return pattern


def _check_provider(provider: str, what: str, location: str) -> None:
    if provider not in KNOWN_REGIONS:
        raise ConfigError(
            f"{what} {location!r}: unknown provider {provider!r} (known: {', '.join(sorted(KNOWN_REGIONS))})"
        )


def _hint(provider: str, region: str) -> str:
    import difflib

    close = difflib.get_close_matches(region, sorted(KNOWN_REGIONS[provider]), n=1)
    return f" (did you mean {provider}/{close[0]}?)" if close else ""
