"""The azure feed against a local HTTP server serving recorded-shape Retail Prices pages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import polars as pl
import pytest

from spotshift.errors import InputError
from spotshift.pricing.feeds.azure import AzureFeed, catalog_filter, parse_azure_document, read_azure_file
from tests.unit.pricing.conftest import FIXTURES, fixture_json

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def retail_route(path: str, query: dict[str, list[str]]) -> tuple[int, Any]:
    if path != "/api/retail/prices":
        return 404, {"Error": "not found"}
    if query.get("$skip") == ["5"]:
        return 200, fixture_json("azure_prices_page2.json")
    return 200, fixture_json("azure_prices_page1.json")


def test_feed_follows_next_page_link(json_server: Any) -> None:
    server = json_server(retail_route)
    feed = AzureFeed(base_url=server.base + "/api/retail/prices")
    quotes, report = feed.poll(NOW)
    first, second = server.requests
    assert "armSkuName eq 'Standard_ND96asr_v4'" in first[1]["$filter"][0]
    assert first[1]["api-version"] == ["2023-01-01-preview"]
    assert second[1]["$skip"] == ["5"]
    rows = (
        quotes.sort("instance_type", "region", "market")
        .select("instance_type", "region", "market", "price_usd_hour")
        .rows()
    )
    assert rows == [
        ("Standard_NC4as_T4_v3", "westeurope", "on_demand", 0.578),
        ("Standard_NC4as_T4_v3", "westeurope", "spot", 0.1561),
        ("Standard_ND96asr_v4", "eastus", "on_demand", 27.197),
        ("Standard_ND96asr_v4", "eastus", "spot", 10.8788),
        ("Standard_ND96isr_H100_v5", "eastus", "on_demand", 98.32),
    ]  # Low Priority, Windows and DevTest items are skipped
    assert report.unknown_instance_types == {"azure/Standard_NV36ads_A10_v5": 1}
    assert set(quotes["observed_at"]) == {datetime(2026, 10, 1, tzinfo=UTC)}
    assert quotes.filter(pl.col("gpu_model") == "T4-16GB").height == 2


def test_paging_loop_is_refused(json_server: Any) -> None:
    server = json_server(
        lambda p, q: (200, {"Items": [], "NextPageLink": "https://prices.azure.com/api/retail/prices?x=1"})
    )
    with pytest.raises(InputError, match="NextPageLink .* repeated"):
        AzureFeed(base_url=server.base + "/api/retail/prices").poll(NOW)


def test_server_error_is_one_line(json_server: Any) -> None:
    server = json_server(lambda p, q: (500, {"Error": "boom"}))
    with pytest.raises(InputError, match=r"azure feed: GET .* failed \(HTTP 500\)"):
        AzureFeed(base_url=server.base + "/x").poll(NOW)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda i: i.pop("armSkuName"), "missing field armSkuName"),
        (lambda i: i.update(retailPrice="cheap"), "retailPrice 'cheap' is not a number"),
        (lambda i: i.update(effectiveStartDate=17), "effectiveStartDate 17 is not an ISO-8601"),
        (lambda i: i.update(skuName=None), "missing field skuName"),
    ],
)
def test_malformed_items_name_the_record(mutate: Any, message: str) -> None:
    page = fixture_json("azure_prices_page2.json")
    mutate(page["Items"][1])
    with pytest.raises(InputError, match=f"prices.json record 1 .*{message}"):
        parse_azure_document(page, "prices.json")


def test_saved_file_and_filter() -> None:
    raw = read_azure_file(str(FIXTURES / "azure_prices_page1.json"))
    assert sorted(raw["market"].to_list()) == ["on_demand", "spot"]
    assert catalog_filter(["A", "B"]).endswith("(armSkuName eq 'A' or armSkuName eq 'B')")
