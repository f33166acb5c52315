"""The ``azure`` feed: the Azure Retail Prices API for the catalog's Azure VM sizes.

``GET {base_url}?$filter=serviceName eq 'Virtual Machines' and priceType eq 'Consumption' and
(armSkuName eq '...' or ...)``, paged by following ``NextPageLink`` until it is null. Per item:

* kept: ``type`` Consumption, ``unitOfMeasure`` ``1 Hour``, Linux (``productName`` without
  ``Windows``); skipped: ``Low Priority`` SKUs (retired in favour of Spot) and Windows;
* spot: ``skuName`` ends in `` Spot``; everything else on-demand;
* price ``retailPrice`` in ``currencyCode``, region ``armRegionName``, instance ``armSkuName``,
  observed at ``effectiveStartDate``.

The Retail Prices API is public and unauthenticated, so this feed needs no credentials.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from spotshift.cloud_errors import redact_url
from spotshift.errors import InputError
from spotshift.pricing.catalog import load_catalog
from spotshift.pricing.feeds._native import Record, list_field, load_json_document
from spotshift.pricing.feeds.base import PriceFeed
from spotshift.pricing.feeds.http import get_json
from spotshift.pricing.normalize import raw_price_frame

DEFAULT_BASE_URL = "https://prices.azure.com/api/retail/prices"
API_VERSION = "2023-01-01-preview"
ITEMS_SHAPE = "an Azure Retail Prices response (Items)"
MAX_PAGES = 10_000


def parse_retail_prices(items: Iterable[Any], origin: str, *, source: str = "azure") -> Any:
    """Retail Prices ``Items`` -> raw price frame (Linux consumption VM prices, spot and on-demand)."""
    rows = []
    for i, item in enumerate(items):
        label = ""
        if isinstance(item, dict):
            label = " ".join(str(item[k]) for k in ("armSkuName", "armRegionName") if k in item)
        rec = Record(item, origin, i, label)
        service = rec.text("serviceName")
        sku_name = rec.text("skuName")
        product = rec.text("productName")
        kind = rec.text("type")
        unit = rec.text("unitOfMeasure")
        instance_type = rec.text("armSkuName")
        region = rec.text("armRegionName")
        currency = rec.text("currencyCode")
        price = rec.number("retailPrice")
        observed = rec.time("effectiveStartDate")
        if (
            service != "Virtual Machines"
            or kind != "Consumption"
            or unit != "1 Hour"
            or "Windows" in product
            or "Low Priority" in sku_name
        ):
            continue
        rows.append(
            {
                "provider": "azure",
                "region": region,
                "zone": "",
                "instance_type": instance_type,
                "market": "spot" if sku_name.endswith(" Spot") else "on_demand",
                "price_per_hour": price,
                "currency": currency,
                "observed_at": observed,
                "source": source,
            }
        )
    return raw_price_frame(rows)


def parse_azure_document(doc: Any, origin: str) -> Any:
    """A saved Retail Prices response, or a JSON list of such pages -> raw price frame."""
    import polars as pl

    pages = doc if isinstance(doc, list) else [doc]
    frames = []
    for n, page in enumerate(pages):
        where = origin if len(pages) == 1 else f"{origin} page {n}"
        frames.append(parse_retail_prices(list_field(page, "Items", where, ITEMS_SHAPE), where))
    return pl.concat(frames) if frames else raw_price_frame([])


def read_azure_file(path: str) -> Any:
    """``spotshift quotes normalize --provider azure FILE``: parse a saved response."""
    return parse_azure_document(load_json_document(path, ITEMS_SHAPE), str(path))


def catalog_filter(instance_types: Sequence[str]) -> str:
    """The OData ``$filter`` asking for Linux-or-not consumption prices of ``instance_types``."""
    skus = " or ".join(f"armSkuName eq '{t}'" for t in instance_types)
    return f"serviceName eq 'Virtual Machines' and priceType eq 'Consumption' and ({skus})"


class AzureFeed(PriceFeed):
    """Live Azure prices from the Retail Prices API."""

    name = "azure"

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_BASE_URL,
        instance_types: Sequence[str] | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.base_url = base_url
        self._instance_types = list(instance_types) if instance_types else None
        self.timeout_s = timeout_s

    def instance_types(self) -> list[str]:
        """VM sizes asked about (default: every Azure size of the catalog)."""
        return self._instance_types or load_catalog().instance_types("azure")

    def list_items(self) -> list[Any]:
        """Every matching price item, following ``NextPageLink``."""
        url: str | None = self.base_url
        params: dict[str, Any] | None = {
            "api-version": API_VERSION,
            "$filter": catalog_filter(self.instance_types()),
        }
        items: list[Any] = []
        seen: set[str] = set()
        for n in range(MAX_PAGES):
            assert url is not None
            page = get_json(url, feed="azure", params=params, timeout_s=self.timeout_s)
            items.extend(list_field(page, "Items", f"{redact_url(url)} page {n}", ITEMS_SHAPE))
            url = page.get("NextPageLink") or None
            params = None  # NextPageLink carries the whole query
            if not url:
                return items
            if url in seen:
                raise InputError(f"azure feed: NextPageLink {redact_url(url)} repeated (paging loop)")
            seen.add(url)
        raise InputError(f"azure feed: more than {MAX_PAGES} pages from {redact_url(self.base_url)}")

    def fetch(self, now: datetime) -> Any:
        """Current consumption prices of the catalog's sizes."""
        return parse_retail_prices(self.list_items(), redact_url(self.base_url))
