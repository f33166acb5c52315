"""The ``gcp`` feed: Cloud Billing Catalog SKUs of Compute Engine, combined into GPU instance prices.

``GET {base_url}/services/6F81-5844-456A/skus`` (Compute Engine), paged with ``nextPageToken``.
Google bills an accelerator-optimized VM as its parts, so an instance price is built from three
SKUs of the same region and usage type (``OnDemand`` -> on_demand, ``Preemptible`` -> spot)::

    price = gpu_count x GPU SKU + vcpus x family Core SKU + ram_gib x family Ram SKU

with vCPU and RAM counts from the catalog, and each SKU's price ``units + nanos / 1e9`` of the
marginal (highest-threshold) tier of ``pricingInfo[0].pricingExpression.tieredRates``. Bundled
Local SSD (a2-ultragpu, a3) is billed separately and not included. Commitment, reservation and
DWS SKUs are ignored (their ``usageType`` is neither OnDemand nor Preemptible, or their
description does not match the rules below).

Description rules, written from the Compute Engine pricing pages' SKU names:

* GPU (``resourceGroup`` GPU): ``Nvidia [Tesla ]<MODEL>[ <N>GB][ Mega] GPU running in <geo>`` and
  ``... GPU attached to Spot Preemptible VMs running in <geo>``; ``<MODEL> <N>GB Mega`` becomes the
  key ``model-ngb-mega`` (``a100``, ``a100-80gb``, ``h100-80gb``, ``h100-80gb-mega``, ``l4``),
  matched against the catalog's ``provider_gpu``;
* vCPU/RAM (``resourceGroup`` CPU / RAM): ``[Spot Preemptible ]<FAMILY>[ <VARIANT>] Instance
  Core|Ram running in <geo>`` (``A2``, ``A3``, ``G2``; variant ``Mega``/``Ultra``/``Edge``/``High``).

Credentials: an API key (``api_key=``, or ``SPOTSHIFT_GCP_API_KEY``) or Application Default
Credentials (``GOOGLE_APPLICATION_CREDENTIALS``, gcloud, metadata server) via google-auth; none ->
:class:`CredentialsError` naming this feed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from spotshift.cloud_errors import redact_url
from spotshift.errors import CredentialsError, InputError
from spotshift.pricing.catalog import load_catalog
from spotshift.pricing.feeds._native import Record, list_field, load_json_document, to_number
from spotshift.pricing.feeds.base import PriceFeed
from spotshift.pricing.feeds.http import get_json
from spotshift.pricing.normalize import raw_price_frame

DEFAULT_BASE_URL = "https://cloudbilling.googleapis.com/v1"
COMPUTE_SERVICE = "services/6F81-5844-456A"
BILLING_SCOPE = "https://www.googleapis.com/auth/cloud-billing.readonly"
SKUS_SHAPE = "a Cloud Billing Catalog skus.list response (skus)"
USAGE_MARKETS = {"OnDemand": "on_demand", "Preemptible": "spot"}
MAX_PAGES = 10_000

_GPU_SKU = re.compile(
    r"^Nvidia (?:Tesla )?(?P<model>[A-Z]\d+[A-Z]?)(?: (?P<mem>\d+GB))?(?: (?P<variant>Mega|Plus))? GPU "
    r"(?:running in|attached to Spot)"
)
_FAMILY_SKU = re.compile(
    r"^(?:Spot Preemptible )?(?P<family>[A-Z]\d+)(?: (?P<variant>Mega|Ultra|Edge|High))? Instance "
    r"(?P<kind>Core|Ram)\b"
)
_FAMILY_VARIANT = re.compile(r"^(?P<family>[a-z]\d+)-(?P<variant>[a-z]+?)gpu-")


def gpu_key(description: str) -> str | None:
    """GPU SKU description -> accelerator key (``Nvidia Tesla A100 80GB GPU running in ...`` -> ``a100-80gb``)."""
    m = _GPU_SKU.match(description)
    if not m:
        return None
    parts = [m["model"], m["mem"], m["variant"]]
    return "-".join(p.lower() for p in parts if p)


def family_component(description: str) -> tuple[str, str] | None:
    """vCPU/RAM SKU description -> (``cpu``|``ram``, family key such as ``a2`` or ``a3-mega``)."""
    m = _FAMILY_SKU.match(description)
    if not m:
        return None
    key = m["family"].lower() + (f"-{m['variant'].lower()}" if m["variant"] else "")
    return ("cpu" if m["kind"] == "Core" else "ram"), key


def family_keys(instance_type: str) -> list[str]:
    """Family keys to try for a machine type, most specific first (``a3-megagpu-8g`` -> a3-mega, a3)."""
    family = instance_type.split("-", 1)[0]
    m = _FAMILY_VARIANT.match(instance_type)
    return [f"{family}-{m['variant']}", family] if m else [family]


def _unit_price(rec: Record) -> tuple[float, str, datetime | None]:
    infos = rec.get("pricingInfo")
    if not isinstance(infos, list) or not infos:
        raise rec.fail("missing field pricingInfo")
    info = Record(infos[0], rec.origin, rec.index, rec.label)
    expression = info.obj("pricingExpression")
    rates = expression.get("tieredRates")
    if not isinstance(rates, list) or not rates:
        raise rec.fail("pricingExpression.tieredRates is missing or empty")
    tiers = [Record(r, rec.origin, rec.index, rec.label) for r in rates]
    start = [t.number("startUsageAmount", t.get("startUsageAmount", 0)) for t in tiers]
    tier = tiers[max(range(len(tiers)), key=lambda k: start[k])]  # the marginal price
    unit = Record(tier.obj("unitPrice"), rec.origin, rec.index, rec.label)
    currency = unit.text("currencyCode")
    units = unit.get("units", "0")
    if isinstance(units, float) or (isinstance(units, str) and not re.fullmatch(r"-?\d+", units.strip())):
        raise rec.fail(f"unitPrice.units {units!r} is not an integer")
    whole = to_number(units, lambda: rec.fail(f"unitPrice.units {units!r} is not an integer"))
    nanos = unit.get("nanos", 0)
    if not isinstance(nanos, int) or isinstance(nanos, bool):
        raise rec.fail(f"unitPrice.nanos {nanos!r} is not an integer")
    effective = info.time("effectiveTime") if info.get("effectiveTime") is not None else None
    return whole + nanos / 1e9, currency, effective


def parse_skus(
    skus: Iterable[Any], origin: str, *, observed_at: datetime | None = None, source: str = "gcp"
) -> Any:
    """Compute Engine SKUs -> raw price frame of the catalog's GCP instance types per region and market.

    A (machine type, region, market) is priced only when its GPU, Core and Ram SKUs are all
    present. ``observed_at`` is the newest ``effectiveTime`` of the three (``observed_at`` when
    the SKUs carry none).
    """
    parts: dict[tuple[str, str, str, str], tuple[float, str, datetime | None]] = {}
    for i, sku in enumerate(skus):
        label = str(sku.get("skuId") or sku.get("description") or "") if isinstance(sku, dict) else ""
        rec = Record(sku, origin, i, label)
        description = rec.text("description")
        category = rec.obj("category")
        market = USAGE_MARKETS.get(category.get("usageType", ""))
        group = category.get("resourceGroup", "")
        if market is None:
            continue
        if group == "GPU":
            key = gpu_key(description)
            component = ("gpu", key) if key else None
        else:
            component = family_component(description)
            if component and group in ("CPU", "RAM") and component[0] != group.lower():
                component = None  # description and category disagree: not a SKU we understand
        if component is None:
            continue
        regions = rec.get("serviceRegions")
        if not isinstance(regions, list) or not all(isinstance(r, str) for r in regions):
            raise rec.fail("serviceRegions is missing or not a list of region names")
        price = _unit_price(rec)
        for region in regions:
            parts[(region, market, component[0], component[1])] = price

    rows = []
    regions_markets = sorted({(r, m) for r, m, kind, _ in parts if kind == "gpu"})
    for entry in load_catalog():
        if entry.provider != "gcp":
            continue
        for region, market in regions_markets:
            gpu = parts.get((region, market, "gpu", entry.provider_gpu))
            keys = family_keys(entry.instance_type)
            cpu = next((parts[k] for k in ((region, market, "cpu", f) for f in keys) if k in parts), None)
            ram = next((parts[k] for k in ((region, market, "ram", f) for f in keys) if k in parts), None)
            if gpu is None or cpu is None or ram is None:
                continue
            currencies = {gpu[1], cpu[1], ram[1]}
            times = [t for t in (gpu[2], cpu[2], ram[2]) if t is not None]
            rows.append(
                {
                    "provider": "gcp",
                    "region": region,
                    "zone": "",
                    "instance_type": entry.instance_type,
                    "market": market,
                    "price_per_hour": entry.gpu_count * gpu[0]
                    + entry.vcpus * cpu[0]
                    + entry.ram_gib * ram[0],
                    "currency": currencies.pop() if len(currencies) == 1 else "MIXED",
                    "observed_at": max(times) if times else observed_at,
                    "source": source,
                    "gpu_model_hint": entry.provider_gpu,
                }
            )
    for row in rows:
        if row["observed_at"] is None:
            raise InputError(f"{origin}: SKUs carry no effectiveTime and no observation time was given")
    return raw_price_frame(rows)


def parse_gcp_document(doc: Any, origin: str, *, observed_at: datetime | None = None) -> Any:
    """A saved skus.list response, or a JSON list of such pages -> raw price frame."""
    pages = doc if isinstance(doc, list) else [doc]
    skus: list[Any] = []
    for n, page in enumerate(pages):
        where = origin if len(pages) == 1 else f"{origin} page {n}"
        skus.extend(list_field(page, "skus", where, SKUS_SHAPE))
    return parse_skus(skus, origin, observed_at=observed_at)


def read_gcp_file(path: str) -> Any:
    """``spotshift quotes normalize --provider gcp FILE``: parse a saved skus.list response."""
    from datetime import UTC
    from pathlib import Path

    doc = load_json_document(path, SKUS_SHAPE)
    mtime = datetime.fromtimestamp(Path(path).stat().st_mtime, UTC)
    return parse_gcp_document(doc, str(path), observed_at=mtime)


class GcpFeed(PriceFeed):
    """Live GCP prices from the Cloud Billing Catalog API."""

    name = "gcp"

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        currency: str = "USD",
        page_size: int = 5000,
        timeout_s: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key or os.environ.get("SPOTSHIFT_GCP_API_KEY") or None
        self.currency = currency
        self.page_size = page_size
        self.timeout_s = timeout_s

    def _auth(self) -> tuple[dict[str, str], dict[str, str]]:
        """(query params, headers) that authenticate the request."""
        if self.api_key:
            return {"key": self.api_key}, {}
        try:
            import google.auth
            import google.auth.transport.requests
            from google.auth.exceptions import DefaultCredentialsError, RefreshError

            credentials, _ = google.auth.default(scopes=[BILLING_SCOPE])
            credentials.refresh(google.auth.transport.requests.Request())
        except DefaultCredentialsError:
            raise CredentialsError(
                "gcp feed: no Google credentials (set an API key in SPOTSHIFT_GCP_API_KEY, "
                "GOOGLE_APPLICATION_CREDENTIALS, or run `gcloud auth application-default login`)"
            ) from None
        except RefreshError as exc:
            raise CredentialsError(
                f"gcp feed: Google credentials were refused ({type(exc).__name__})"
            ) from None
        return {}, {"Authorization": f"Bearer {credentials.token}"}

    def list_skus(self) -> list[Any]:
        """Every Compute Engine SKU, following ``nextPageToken``."""
        params, headers = self._auth()
        url = f"{self.base_url}/{COMPUTE_SERVICE}/skus"
        skus: list[Any] = []
        token: str | None = None
        seen: set[str] = set()
        for n in range(MAX_PAGES):
            page = get_json(
                url,
                feed="gcp",
                params={
                    **params,
                    "currencyCode": self.currency,
                    "pageSize": self.page_size,
                    "pageToken": token,
                },
                headers=headers,
                timeout_s=self.timeout_s,
            )
            skus.extend(list_field(page, "skus", f"{redact_url(url)} page {n}", SKUS_SHAPE))
            token = page.get("nextPageToken") or None
            if not token:
                return skus
            if token in seen:
                raise InputError(f"gcp feed: {redact_url(url)} repeated a page token (paging loop)")
            seen.add(token)
        raise InputError(f"gcp feed: {redact_url(url)} returned more than {MAX_PAGES} pages")

    def fetch(self, now: datetime) -> Any:
        """Instance prices built from the current SKUs."""
        return parse_skus(
            self.list_skus(), f"{redact_url(self.base_url)}/{COMPUTE_SERVICE}/skus", observed_at=now
        )
