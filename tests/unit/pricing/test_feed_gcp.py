"""The gcp feed against a local HTTP server serving recorded-shape Cloud Billing Catalog pages."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from spotshift.errors import CredentialsError, InputError
from spotshift.pricing.feeds.gcp import (
    COMPUTE_SERVICE,
    GcpFeed,
    family_component,
    family_keys,
    gpu_key,
    parse_gcp_document,
    read_gcp_file,
)
from tests.conftest import shared_data
from tests.unit.pricing.conftest import FIXTURES, fixture_json

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
PAGES = {
    None: "gcp_skus_page1.json",
    "CgRwYWdlMg": "gcp_skus_page2.json",
    "CgRwYWdlMw": "gcp_skus_page3.json",
}


def catalog_route(path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
    if path != f"/v1/{COMPUTE_SERVICE}/skus":
        return 404, {"error": {"code": 404}}
    if query.get("key") != ["test-key"]:
        return 403, {"error": {"code": 403, "message": "API key not valid"}}
    token = query.get("pageToken", [None])[0]
    return 200, fixture_json(PAGES[token])


def test_feed_pages_and_builds_instance_prices(json_server: Any) -> None:
    server = json_server(catalog_route)
    feed = GcpFeed(base_url=server.base + "/v1", api_key="test-key")
    quotes, report = feed.poll(NOW)
    assert [q.get("pageToken", [None])[0] for _, q, _ in server.requests] == [
        None,
        "CgRwYWdlMg",
        "CgRwYWdlMw",
    ]
    assert all(q["currencyCode"] == ["USD"] for _, q, _ in server.requests)

    def price(instance_type: str, region: str, market: str) -> float:
        row = quotes.filter(
            (pl.col("instance_type") == instance_type)
            & (pl.col("region") == region)
            & (pl.col("market") == market)
        )
        assert row.height == 1, (instance_type, region, market)
        return row["price_usd_hour"][0]

    # GPU + 12 vCPU + 85 GiB: the published a2-highgpu-1g price
    assert price("a2-highgpu-1g", "us-central1", "on_demand") == pytest.approx(3.673385, abs=1e-6)
    assert price("a2-highgpu-1g", "us-east4", "on_demand") == pytest.approx(3.673385, abs=1e-6)
    assert price("a2-megagpu-16g", "us-central1", "on_demand") == pytest.approx(
        16 * 2.933908 + 96 * 0.031611 + 1360 * 0.004237
    )
    assert price("a2-highgpu-8g", "us-central1", "spot") == pytest.approx(
        8 * 1.1736 + 96 * 0.012645 + 680 * 0.001695
    )
    assert price("g2-standard-4", "us-central1", "on_demand") == pytest.approx(
        0.56004 + 4 * 0.024988 + 16 * 0.002927
    )
    assert price("a3-highgpu-8g", "us-central1", "on_demand") == pytest.approx(
        8 * 9.796243 + 208 * 0.024648 + 1872 * 0.00216
    )
    # a2-ultragpu needs the A100 80GB SKU and a3-megagpu the H100 Mega SKU: absent, so not priced
    assert quotes.filter(pl.col("instance_type").str.starts_with("a2-ultragpu")).height == 0
    assert quotes.filter(pl.col("instance_type") == "a3-megagpu-8g").height == 0
    # europe-west4 is priced in EUR: every a2 instance there is rejected, not converted
    assert quotes.filter(pl.col("region") == "europe-west4").height == 0
    assert report.rejected == {"non_usd": 5}
    assert set(quotes["observed_at"]) == {datetime(2026, 11, 20, 10, 3, 7, 585000, tzinfo=UTC)}


def test_missing_and_rejected_credentials(
    json_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server = json_server(catalog_route)
    with pytest.raises(CredentialsError, match=r"gcp feed: GET .*/skus refused the credentials \(HTTP 403\)"):
        GcpFeed(base_url=server.base + "/v1", api_key="wrong").poll(NOW)
    monkeypatch.delenv("SPOTSHIFT_GCP_API_KEY", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    with pytest.raises(CredentialsError, match="^gcp feed: no Google credentials"):
        GcpFeed(base_url=server.base + "/v1").poll(NOW)


def test_paging_loop_and_non_json_are_refused(json_server: Any) -> None:
    server = json_server(lambda path, q: (200, {"skus": [], "nextPageToken": "same"}))
    with pytest.raises(InputError, match="repeated a page token"):
        GcpFeed(base_url=server.base, api_key="k").poll(NOW)
    server = json_server(lambda path, q: (200, {"unexpected": True}))
    with pytest.raises(InputError, match="no 'skus' list"):
        GcpFeed(base_url=server.base, api_key="k").poll(NOW)


def test_saved_pages_file(tmp_path: Path) -> None:
    raw = read_gcp_file(str(FIXTURES / "gcp_skus_page1.json"))
    assert raw.height == 0  # page 1 alone has no RAM SKU: nothing can be priced yet
    pages = [fixture_json(f"gcp_skus_page{n}.json") for n in (1, 2, 3)]
    raw = parse_gcp_document(pages, "pages.json")
    assert raw.height > 0 and set(raw["provider"]) == {"gcp"}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.pop("description"), "missing field description"),
        (lambda s: s.pop("serviceRegions"), "serviceRegions is missing"),
        (
            lambda s: s["pricingInfo"][0]["pricingExpression"]["tieredRates"][0]["unitPrice"].update(
                units="2.5"
            ),
            "unitPrice.units '2.5' is not an integer",
        ),
        (
            lambda s: s["pricingInfo"][0]["pricingExpression"]["tieredRates"][0]["unitPrice"].update(
                nanos="5"
            ),
            "unitPrice.nanos '5' is not an integer",
        ),
        (lambda s: s.update(pricingInfo=[]), "missing field pricingInfo"),
    ],
)
def test_malformed_sku_names_the_record(mutate: Any, message: str) -> None:
    page = fixture_json("gcp_skus_page1.json")
    mutate(page["skus"][1])
    with pytest.raises(InputError, match=f"skus.json record 1 \\(6C5B-5B76-A3F3\\): {message}"):
        parse_gcp_document(page, "skus.json")


def test_description_rules() -> None:
    assert gpu_key("Nvidia Tesla A100 GPU running in Americas") == "a100"
    assert (
        gpu_key("Nvidia Tesla A100 80GB GPU attached to Spot Preemptible VMs running in EMEA") == "a100-80gb"
    )
    assert gpu_key("Nvidia H100 80GB Mega GPU running in Americas") == "h100-80gb-mega"
    assert gpu_key("Nvidia L4 GPU attached to Spot Preemptible VMs running in APAC") == "l4"
    assert gpu_key("Commitment v1: Nvidia Tesla A100 GPU in Americas for 1 Year") is None
    assert family_component("Spot Preemptible A2 Instance Core running in Americas") == ("cpu", "a2")
    assert family_component("A3 Mega Instance Ram running in Americas") == ("ram", "a3-mega")
    assert family_component("Commitment v1: A2 Cpu in Americas for 1 Year") is None
    assert family_keys("a3-megagpu-8g") == ["a3-mega", "a3"]
    assert family_keys("g2-standard-4") == ["g2"]


def test_rules_agree_with_the_reference_mapping() -> None:
    """Our own rules classify the reference SKU description patterns (when present) the same way."""
    path = shared_data("gcp_sku_description_patterns.csv")
    with path.open() as f:
        rows = [
            r for r in csv.DictReader(f) if r["SKU_DESCRIPTION"] and r["MAPPING"].startswith("gce.compute.")
        ]
    checked = 0
    for r in rows:
        mapping, pattern = r["MAPPING"], r["SKU_DESCRIPTION"]
        parts = mapping.split(".")
        if parts[-1] in ("1y", "3y", "reserved"):
            assert gpu_key(pattern.replace("%", " in Americas")) is None
            continue
        spot = parts[-1] == "spot"
        body = parts[3:-1] if spot else parts[3:]
        if parts[2] == "gpu" and body[0] in ("a100", "l4", "h100", "t4"):
            text = pattern.replace("running%", "running in Americas").replace("attached%", "attached to Spot")
            text = text.replace("Spot%", "Spot Preemptible VMs running in Americas")
            assert gpu_key(text) == "-".join(body), (mapping, text)
            checked += 1
        elif parts[2] in ("cpu", "ram") and body == [body[0]] and body[0] in ("a2", "a3", "g2"):
            kind = "Core" if parts[2] == "cpu" else "Ram"
            text = pattern.replace("Instance%", f"Instance {kind} running in Americas")
            assert family_component(text) == (parts[2], body[0]), (mapping, text)
            checked += 1
    assert checked >= 20
