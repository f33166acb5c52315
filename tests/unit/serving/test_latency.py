"""The latency table: every priced location is covered, anchors are the measured figures, the
fibre model stays within the published ranges, unknown names fail with one line."""

from __future__ import annotations

import itertools

import pytest

from spotshift.errors import ConfigError
from spotshift.pricing.synthetic import REGIONS
from spotshift.serving import latency
from spotshift.serving.latency import rtt_ms, rtt_source, user_regions

GCP_HISTORY_REGIONS = [
    "us-central1",
    "us-east1",
    "us-east4",
    "us-east5",
    "us-south1",
    "us-west1",
    "us-west2",
    "us-west3",
    "us-west4",
    "northamerica-northeast1",
    "northamerica-northeast2",
    "southamerica-east1",
    "southamerica-west1",
    "europe-west1",
    "europe-west2",
    "europe-west3",
    "europe-west4",
    "europe-west6",
    "europe-west8",
    "europe-west9",
    "europe-west10",
    "europe-west12",
    "europe-north1",
    "europe-central2",
    "europe-southwest1",
    "me-west1",
    "me-central1",
    "me-central2",
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
    "australia-southeast1",
    "australia-southeast2",
]


def test_every_generated_market_and_gcp_history_location_is_covered() -> None:
    locs = [f"{p}/{r}" for p, regions in REGIONS.items() for r, _ in regions]
    locs += [f"gcp/{r}" for r in GCP_HISTORY_REGIONS]
    for u in user_regions():
        for loc in locs:
            assert 1.0 <= rtt_ms(u, loc) < 400.0, (u, loc)


def test_anchor_locations_return_the_measured_figures() -> None:
    for a, b in itertools.permutations(latency.USER_REGIONS, 2):
        anchor_b = latency.USER_REGIONS[b][0]
        assert rtt_ms(a, anchor_b) == latency.ANCHOR_RTT_MS[frozenset((a, b))]
        assert rtt_source(a, anchor_b) == "measured"
    # another provider's building in the same metro inherits the measured row
    assert rtt_ms("eu-west", "gcp/us-east4") == pytest.approx(70.0, abs=1.0)
    assert rtt_ms("us-east", "aws/us-east-1") == latency.METRO_RTT_MS


def test_measured_matrix_is_complete_and_symmetric() -> None:
    pairs = {frozenset(p) for p in itertools.combinations(latency.USER_REGIONS, 2)}
    assert set(latency.ANCHOR_RTT_MS) == pairs
    for a, b in itertools.combinations(user_regions(), 2):
        assert rtt_ms(a, latency.USER_REGIONS[b][0]) == rtt_ms(b, latency.USER_REGIONS[a][0])


def test_fibre_model_within_published_continental_ranges() -> None:
    # Azure's published statistics (Oct 2019): 5-72 ms within North America, 3-28 ms within Europe
    na = ["us-central1", "us-east1", "us-east4", "us-west1", "us-west2", "us-south1"]
    eu = ["europe-west1", "europe-west2", "europe-west3", "europe-west4", "europe-west9"]
    assert max(rtt_ms("us-east", f"gcp/{r}") for r in na) <= 72
    assert max(rtt_ms("us-west", f"gcp/{r}") for r in na) <= 72
    assert max(rtt_ms("eu-central", f"gcp/{r}") for r in eu) <= 28
    assert max(rtt_ms("eu-west", f"gcp/{r}") for r in eu) <= 28
    # the route factor is the median of the measured anchors' factors (documented)
    factors = []
    for pair, measured in latency.ANCHOR_RTT_MS.items():
        a, b = sorted(pair)
        km = latency.great_circle_km(
            latency.METROS[latency.USER_REGIONS[a][1]], latency.METROS[latency.USER_REGIONS[b][1]]
        )
        factors.append((measured - latency.METRO_RTT_MS) / (2 * km / latency.FIBRE_KM_PER_MS))
    factors.sort()
    assert pytest.approx(factors[len(factors) // 2], abs=0.05) == latency.ROUTE_FACTOR


def test_nearer_is_faster_for_every_user_region() -> None:
    for u in user_regions():
        own = rtt_ms(u, latency.USER_REGIONS[u][0])
        others = [rtt_ms(u, latency.USER_REGIONS[o][0]) for o in user_regions() if o != u]
        assert own < min(others)


def test_zone_suffix_and_case() -> None:
    assert rtt_ms("us-west", "GCP/us-central1/us-central1-a") == rtt_ms("us-west", "gcp/us-central1")


@pytest.mark.parametrize(
    ("user", "loc", "needle"),
    [
        ("mars", "gcp/us-central1", "user region 'mars'"),
        ("us-east", "gcp/moon-1", "location 'gcp/moon-1'"),
        ("us-east", "us-central1", "provider/region"),
        ("us-east", "gcp//a", "provider/region"),
    ],
)
def test_unknown_names_raise_one_line(user: str, loc: str, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        rtt_ms(user, loc)
    assert needle in str(exc.value) and "\n" not in str(exc.value)
