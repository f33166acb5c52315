"""Network round trip (ms) from a user region to a cloud location.

Where the figures come from
---------------------------

1. **Measured anchors.** :data:`ANCHOR_RTT_MS` holds median round trips between nine AWS regions
   that stand for the nine user regions (:data:`USER_REGIONS`), as the public inter-region ping
   matrices publish them: cloudping (https://www.cloudping.co/grid, p50 over a day, AWS region to
   AWS region over the AWS backbone; the same matrix is mirrored by latency.bluegoat.net and drawn
   in https://www.xkyle.com/Measuring-AWS-Region-and-AZ-Latency/). The figures were transcribed
   rounded to 5 ms and without network access to re-check them when this table was written: take
   them as +-10 %. A user region means users whose traffic enters the cloud at that metro, so the
   anchor-to-anchor figure is the user-to-region round trip.
2. **Near an anchor.** A cloud region of any provider whose nearest anchor is another user
   region's anchor, within :data:`SCALE_RADIUS_KM`, takes that anchor's measured figure stretched
   by the fibre model's distance ratio (``measured(u, A) x model(u, L) / model(u, A)``). It keeps
   the real route's detours (Tokyo-Frankfurt is 225 ms measured, 140 ms on the great circle) and
   equals the measured figure inside the anchor's own metro (:data:`METRO_RADIUS_KM`: Ashburn hosts
   aws/us-east-1 and gcp/us-east4, Frankfurt aws/eu-central-1, gcp/europe-west3 and
   azure/germanywestcentral): the long-haul path from a metro does not depend on which provider's
   building the packet ends in, to within a few ms.
3. **Fibre model** everywhere else (stated as a model, not a measurement):
   ``rtt = 2 x great_circle_km / FIBRE_KM_PER_MS x ROUTE_FACTOR + METRO_RTT_MS``, light in fibre
   at 2/3 c (~200 km per ms, refractive index ~1.5) and a route factor for cables that do not
   follow great circles (1.5 = the median over the 36 measured anchor pairs, which range from 1.1
   across the Pacific to 2.4 Tokyo-Frankfurt). It is used for users in the location's own
   neighbourhood and for locations far from every anchor (Johannesburg, Santiago, Tel Aviv...). Cross-check: Azure's published "network round-trip
   latency statistics" (https://learn.microsoft.com/azure/networking/azure-network-latency,
   ThousandEyes probes between Azure regions, monthly averages) give 5-72 ms within North America,
   3-28 ms within Europe and 4-134 ms within Asia (October 2019); GCP publishes inter-region
   medians in the Network Intelligence Center performance dashboard
   (https://cloud.google.com/network-intelligence-center/docs/performance-dashboard) of the same
   magnitudes. ``tests/unit/serving/test_latency.py`` holds the model to those ranges and to the
   anchors.

Locations are ``provider/region`` or ``provider/region/zone`` (a zone has its region's figure);
:data:`LOCATION_SITES` names the metro of every region of aws, gcp and azure that sells GPU
capacity in the price feeds, the generated market and the GCP history. Unknown names raise
:class:`~spotshift.errors.ConfigError` with one line.
"""

from __future__ import annotations

import functools
import math

from spotshift.errors import ConfigError
from spotshift.pricing.regions import region_of

FIBRE_KM_PER_MS = 199.86  # c / 1.5: light in silica fibre, km per millisecond (one way)
ROUTE_FACTOR = 1.5  # cable path length / great-circle distance (see the module docstring)
METRO_RTT_MS = 2.0  # users to a data centre in their own metro: access + metro fibre
METRO_RADIUS_KM = 160.0  # a cloud region this close to an anchor shares its measured figures
SCALE_RADIUS_KM = 3000.0  # farther than this from every anchor: the fibre model alone
EARTH_RADIUS_KM = 6371.0

ANCHOR_SOURCE = "https://www.cloudping.co/grid (AWS inter-region p50, rounded to 5 ms)"
AZURE_SOURCE = "https://learn.microsoft.com/azure/networking/azure-network-latency"
GCP_SOURCE = "https://cloud.google.com/network-intelligence-center/docs/performance-dashboard"

#: metro -> (latitude, longitude) of the data-centre site (public region locations of each provider)
METROS: dict[str, tuple[float, float]] = {
    "ashburn": (39.04, -77.49),
    "boydton": (36.67, -78.39),
    "moncks-corner": (33.20, -80.01),
    "columbus": (39.96, -83.00),
    "chicago": (41.88, -87.63),
    "council-bluffs": (41.26, -95.86),
    "des-moines": (41.59, -93.62),
    "dallas": (32.78, -96.80),
    "san-antonio": (29.42, -98.49),
    "cheyenne": (41.14, -104.82),
    "phoenix": (33.45, -112.07),
    "salt-lake-city": (40.76, -111.89),
    "las-vegas": (36.17, -115.14),
    "los-angeles": (34.05, -118.24),
    "san-jose": (37.34, -121.89),
    "the-dalles": (45.60, -121.18),
    "boardman": (45.84, -119.70),
    "quincy": (47.23, -119.85),
    "calgary": (51.05, -114.07),
    "toronto": (43.65, -79.38),
    "montreal": (45.50, -73.57),
    "quebec-city": (46.81, -71.21),
    "queretaro": (20.59, -100.39),
    "sao-paulo": (-23.55, -46.63),
    "santiago": (-33.45, -70.67),
    "dublin": (53.35, -6.26),
    "london": (51.51, -0.13),
    "cardiff": (51.48, -3.18),
    "paris": (48.86, 2.35),
    "st-ghislain": (50.45, 3.82),
    "amsterdam": (52.37, 4.90),
    "eemshaven": (53.44, 6.83),
    "frankfurt": (50.11, 8.68),
    "berlin": (52.52, 13.40),
    "zurich": (47.37, 8.54),
    "milan": (45.46, 9.19),
    "turin": (45.07, 7.69),
    "madrid": (40.42, -3.70),
    "zaragoza": (41.65, -0.88),
    "stockholm": (59.33, 18.07),
    "gavle": (60.67, 17.14),
    "oslo": (59.91, 10.75),
    "hamina": (60.57, 27.20),
    "warsaw": (52.23, 21.01),
    "tel-aviv": (32.09, 34.78),
    "bahrain": (26.07, 50.56),
    "dammam": (26.43, 50.10),
    "doha": (25.29, 51.53),
    "dubai": (25.20, 55.27),
    "johannesburg": (-26.20, 28.05),
    "cape-town": (-33.92, 18.42),
    "mumbai": (19.08, 72.88),
    "pune": (18.52, 73.86),
    "hyderabad": (17.39, 78.49),
    "chennai": (13.08, 80.27),
    "delhi": (28.61, 77.21),
    "singapore": (1.35, 103.82),
    "kuala-lumpur": (3.14, 101.69),
    "jakarta": (-6.21, 106.85),
    "hong-kong": (22.32, 114.17),
    "changhua": (24.08, 120.54),
    "tokyo": (35.68, 139.69),
    "osaka": (34.69, 135.50),
    "seoul": (37.57, 126.98),
    "sydney": (-33.87, 151.21),
    "melbourne": (-37.81, 144.96),
    "auckland": (-36.85, 174.76),
}

#: user region -> (anchor AWS region, its metro). The anchor's measured row is the region's row.
USER_REGIONS: dict[str, tuple[str, str]] = {
    "us-east": ("aws/us-east-1", "ashburn"),
    "us-west": ("aws/us-west-2", "boardman"),
    "sa-east": ("aws/sa-east-1", "sao-paulo"),
    "eu-west": ("aws/eu-west-1", "dublin"),
    "eu-central": ("aws/eu-central-1", "frankfurt"),
    "ap-south": ("aws/ap-south-1", "mumbai"),
    "ap-southeast": ("aws/ap-southeast-1", "singapore"),
    "ap-northeast": ("aws/ap-northeast-1", "tokyo"),
    "au-east": ("aws/ap-southeast-2", "sydney"),
}

#: measured median round trips (ms) between the anchors, keyed by the user-region pair
#: (symmetric; see :data:`ANCHOR_SOURCE`)
ANCHOR_RTT_MS: dict[frozenset[str], float] = {
    frozenset(k.split(" ")): v
    for k, v in {
        "us-east us-west": 65,
        "us-east sa-east": 115,
        "us-east eu-west": 70,
        "us-east eu-central": 90,
        "us-east ap-south": 190,
        "us-east ap-southeast": 215,
        "us-east ap-northeast": 150,
        "us-east au-east": 200,
        "us-west sa-east": 175,
        "us-west eu-west": 125,
        "us-west eu-central": 145,
        "us-west ap-south": 215,
        "us-west ap-southeast": 165,
        "us-west ap-northeast": 100,
        "us-west au-east": 140,
        "sa-east eu-west": 180,
        "sa-east eu-central": 205,
        "sa-east ap-south": 300,
        "sa-east ap-southeast": 325,
        "sa-east ap-northeast": 255,
        "sa-east au-east": 310,
        "eu-west eu-central": 25,
        "eu-west ap-south": 120,
        "eu-west ap-southeast": 175,
        "eu-west ap-northeast": 210,
        "eu-west au-east": 255,
        "eu-central ap-south": 110,
        "eu-central ap-southeast": 160,
        "eu-central ap-northeast": 225,
        "eu-central au-east": 245,
        "ap-south ap-southeast": 60,
        "ap-south ap-northeast": 130,
        "ap-south au-east": 150,
        "ap-southeast ap-northeast": 70,
        "ap-southeast au-east": 90,
        "ap-northeast au-east": 110,
    }.items()
}

_AWS = {
    "us-east-1": "ashburn",
    "us-east-2": "columbus",
    "us-west-1": "san-jose",
    "us-west-2": "boardman",
    "ca-central-1": "montreal",
    "ca-west-1": "calgary",
    "mx-central-1": "queretaro",
    "sa-east-1": "sao-paulo",
    "eu-west-1": "dublin",
    "eu-west-2": "london",
    "eu-west-3": "paris",
    "eu-central-1": "frankfurt",
    "eu-central-2": "zurich",
    "eu-north-1": "stockholm",
    "eu-south-1": "milan",
    "eu-south-2": "zaragoza",
    "il-central-1": "tel-aviv",
    "me-south-1": "bahrain",
    "me-central-1": "dubai",
    "af-south-1": "cape-town",
    "ap-south-1": "mumbai",
    "ap-south-2": "hyderabad",
    "ap-southeast-1": "singapore",
    "ap-southeast-2": "sydney",
    "ap-southeast-3": "jakarta",
    "ap-southeast-4": "melbourne",
    "ap-southeast-5": "kuala-lumpur",
    "ap-east-1": "hong-kong",
    "ap-northeast-1": "tokyo",
    "ap-northeast-2": "seoul",
    "ap-northeast-3": "osaka",
}
_GCP = {
    "us-central1": "council-bluffs",
    "us-east1": "moncks-corner",
    "us-east4": "ashburn",
    "us-east5": "columbus",
    "us-south1": "dallas",
    "us-west1": "the-dalles",
    "us-west2": "los-angeles",
    "us-west3": "salt-lake-city",
    "us-west4": "las-vegas",
    "northamerica-northeast1": "montreal",
    "northamerica-northeast2": "toronto",
    "northamerica-south1": "queretaro",
    "southamerica-east1": "sao-paulo",
    "southamerica-west1": "santiago",
    "europe-west1": "st-ghislain",
    "europe-west2": "london",
    "europe-west3": "frankfurt",
    "europe-west4": "eemshaven",
    "europe-west6": "zurich",
    "europe-west8": "milan",
    "europe-west9": "paris",
    "europe-west10": "berlin",
    "europe-west12": "turin",
    "europe-north1": "hamina",
    "europe-north2": "stockholm",
    "europe-central2": "warsaw",
    "europe-southwest1": "madrid",
    "me-west1": "tel-aviv",
    "me-central1": "doha",
    "me-central2": "dammam",
    "africa-south1": "johannesburg",
    "asia-east1": "changhua",
    "asia-east2": "hong-kong",
    "asia-northeast1": "tokyo",
    "asia-northeast2": "osaka",
    "asia-northeast3": "seoul",
    "asia-south1": "mumbai",
    "asia-south2": "delhi",
    "asia-southeast1": "singapore",
    "asia-southeast2": "jakarta",
    "australia-southeast1": "sydney",
    "australia-southeast2": "melbourne",
}
_AZURE = {
    "eastus": "boydton",
    "eastus2": "boydton",
    "centralus": "des-moines",
    "northcentralus": "chicago",
    "southcentralus": "san-antonio",
    "westcentralus": "cheyenne",
    "westus": "san-jose",
    "westus2": "quincy",
    "westus3": "phoenix",
    "canadacentral": "toronto",
    "canadaeast": "quebec-city",
    "mexicocentral": "queretaro",
    "brazilsouth": "sao-paulo",
    "northeurope": "dublin",
    "westeurope": "amsterdam",
    "uksouth": "london",
    "ukwest": "cardiff",
    "francecentral": "paris",
    "germanywestcentral": "frankfurt",
    "switzerlandnorth": "zurich",
    "italynorth": "milan",
    "spaincentral": "madrid",
    "swedencentral": "gavle",
    "norwayeast": "oslo",
    "polandcentral": "warsaw",
    "israelcentral": "tel-aviv",
    "qatarcentral": "doha",
    "uaenorth": "dubai",
    "southafricanorth": "johannesburg",
    "centralindia": "pune",
    "southindia": "chennai",
    "westindia": "mumbai",
    "southeastasia": "singapore",
    "eastasia": "hong-kong",
    "japaneast": "tokyo",
    "japanwest": "osaka",
    "koreacentral": "seoul",
    "australiaeast": "sydney",
    "australiasoutheast": "melbourne",
    "newzealandnorth": "auckland",
}

#: ``provider/region`` -> metro, for every region known to the feeds, the generated market and the
#: GCP history (sites as the providers publish them)
LOCATION_SITES: dict[str, str] = {
    **{f"aws/{r}": m for r, m in _AWS.items()},
    **{f"gcp/{r}": m for r, m in _GCP.items()},
    **{f"azure/{r}": m for r, m in _AZURE.items()},
}


def great_circle_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Haversine distance in km between two (latitude, longitude) points in degrees."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def fibre_rtt_ms(km: float) -> float:
    """The fibre model: round trip over ``km`` of great-circle distance, plus the metro access RTT."""
    return 2.0 * km / FIBRE_KM_PER_MS * ROUTE_FACTOR + METRO_RTT_MS


def user_regions() -> tuple[str, ...]:
    """The user regions :func:`rtt_ms` knows, in table order."""
    return tuple(USER_REGIONS)


def locations() -> tuple[str, ...]:
    """Every ``provider/region`` :func:`rtt_ms` knows, sorted."""
    return tuple(sorted(LOCATION_SITES))


def region_of_location(location: str) -> str:
    """``provider/region[/zone]`` -> ``provider/region`` (lower-case provider); ConfigError if unknown."""
    key = region_of(location)
    if key not in LOCATION_SITES:
        raise ConfigError(
            f"location {location!r} is not in the latency table (spotshift.serving.latency.LOCATION_SITES)"
        )
    return key


@functools.cache
def _estimate(user_region: str, key: str) -> tuple[float, str]:
    user_metro = METROS[USER_REGIONS[user_region][1]]
    site = METROS[LOCATION_SITES[key]]
    anchor, residual = min(
        ((r, great_circle_km(METROS[m], site)) for r, (_, m) in USER_REGIONS.items()),
        key=lambda t: (t[1], t[0]),
    )
    if anchor == user_region or residual > SCALE_RADIUS_KM:
        how = "same metro" if anchor == user_region and residual <= METRO_RADIUS_KM else "fibre model"
        return round(fibre_rtt_ms(great_circle_km(user_metro, site)), 1), how
    # the measured path to the nearest anchor, stretched by the fibre model's distance ratio: keeps
    # the real route's detours (Tokyo-Frankfurt is 225 ms, not the great circle's 140) for
    # neighbours of an anchor, and is exactly the measured figure at the anchor's own metro
    measured = ANCHOR_RTT_MS[frozenset((user_region, anchor))]
    to_anchor = fibre_rtt_ms(great_circle_km(user_metro, METROS[USER_REGIONS[anchor][1]]))
    ratio = fibre_rtt_ms(great_circle_km(user_metro, site)) / to_anchor
    how = "measured" if residual <= METRO_RADIUS_KM else "measured, distance-scaled"
    return round(measured * ratio, 1), how


@functools.lru_cache(maxsize=65_536)  # asked per replica on every routed request
def rtt_ms(user_region: str, location: str) -> float:
    """Round trip in ms from users in ``user_region`` to a replica at ``location``.

    ``location`` is ``provider/region`` or ``provider/region/zone``. Measured where the location
    shares a metro with an anchor, the documented fibre model otherwise (module docstring).
    Raises :class:`ConfigError` naming an unknown user region or location.
    """
    if user_region not in USER_REGIONS:
        raise ConfigError(f"user region {user_region!r} is not one of {', '.join(USER_REGIONS)}")
    return _estimate(user_region, region_of_location(location))[0]


def rtt_source(user_region: str, location: str) -> str:
    """Where :func:`rtt_ms`'s figure comes from: ``same metro``, ``measured``, ``measured,
    distance-scaled`` or ``fibre model``."""
    rtt_ms(user_region, location)  # validates both names
    return _estimate(user_region, region_of_location(location))[1]
