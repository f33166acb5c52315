"""The ``aws`` feed: EC2 spot prices per availability zone + on-demand prices from the AWS Price List.

* Spot: ``ec2.describe_spot_price_history`` in every region asked (default: every region
  ``ec2.describe_regions`` reports as enabled), ``ProductDescriptions=["Linux/UNIX"]``, the
  catalog's AWS instance types, ``StartTime = EndTime = now`` — AWS then returns, per AZ, the
  price in effect at ``now`` (its ``Timestamp`` is when that price was set). Paginated.
* On-demand: ``pricing.get_products`` (ServiceCode ``AmazonEC2``; Linux, Shared tenancy, no
  pre-installed software, capacitystatus Used), one paginated query per catalog instance type;
  each ``PriceList`` entry is a JSON *string* holding ``product`` and ``terms.OnDemand``.

Credentials come from boto3's standard chain (environment, shared config/credentials files, SSO,
instance or task role). None found, or rejected by AWS, -> :class:`CredentialsError` naming this
feed. :func:`parse_spot_price_history` and :func:`parse_price_list` are the pure parsers the live
feed and ``spotshift quotes normalize --provider aws`` share; :func:`parse_aws_document` tells
the two response shapes apart.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from spotshift.cloud_errors import botocore_errors, from_botocore, track_status
from spotshift.errors import CredentialsError, InputError
from spotshift.jsondoc import parse_json
from spotshift.pricing.catalog import load_catalog
from spotshift.pricing.feeds._native import Record, list_field, load_json_document
from spotshift.pricing.feeds.base import PriceFeed
from spotshift.pricing.normalize import raw_price_frame

PRICING_REGION = "us-east-1"  # the Price List query API lives in us-east-1 (and ap-south-1, eu-central-1)
LINUX_DESCRIPTIONS = ("Linux/UNIX", "Linux/UNIX (Amazon VPC)")
_REGION_OF_AZ = re.compile(r"^([a-z]{2}(?:-gov|-iso[a-z]*)?-[a-z]+-\d+)")

SPOT_SHAPE = "a describe_spot_price_history response (SpotPriceHistory)"
PRICE_LIST_SHAPE = "a pricing get_products response (PriceList)"


def region_of_zone(zone: str) -> str:
    """``us-east-1a`` -> ``us-east-1``; ``us-west-2-lax-1a`` (Local Zone) -> ``us-west-2``."""
    m = _REGION_OF_AZ.match(zone)
    return m.group(1) if m else zone


def parse_spot_price_history(
    items: Iterable[Any], origin: str, *, region: str | None = None, source: str = "aws"
) -> Any:
    """``SpotPriceHistory`` entries -> raw price frame (spot, per AZ). Non-Linux entries are skipped."""
    rows = []
    for i, item in enumerate(items):
        label = ""
        if isinstance(item, dict):
            label = " ".join(str(item.get(k, "?")) for k in ("InstanceType", "AvailabilityZone"))
        rec = Record(item, origin, i, label)
        instance_type = rec.text("InstanceType")
        zone = rec.text("AvailabilityZone")
        description = rec.text("ProductDescription")
        price = rec.number("SpotPrice")
        observed = rec.time("Timestamp")
        if description not in LINUX_DESCRIPTIONS:
            continue
        rows.append(
            {
                "provider": "aws",
                "region": region or region_of_zone(zone),
                "zone": zone,
                "instance_type": instance_type,
                "market": "spot",
                "price_per_hour": price,
                "currency": "USD",
                "observed_at": observed,
                "source": source,
            }
        )
    return raw_price_frame(rows)


def _price_list_entry(raw: Any, origin: str, index: int) -> dict[str, Any]:
    if isinstance(raw, str):
        raw = parse_json(raw, f"{origin} record {index}: PriceList entry")
    if not isinstance(raw, dict):
        raise InputError(
            f"{origin} record {index}: PriceList entry is {type(raw).__name__}, expected an object"
        )
    return raw


def parse_price_list(
    entries: Iterable[Any], origin: str, *, regions: Sequence[str] | None = None, source: str = "aws"
) -> Any:
    """``PriceList`` entries (JSON strings or objects) -> raw price frame (on-demand, per region).

    Keeps Linux, Shared tenancy, no pre-installed software, capacitystatus Used; every hourly
    on-demand price dimension becomes one row (currency as published, so non-USD is visible).
    """
    keep_regions = set(regions) if regions else None
    rows = []
    for i, raw in enumerate(entries):
        entry = _price_list_entry(raw, origin, i)
        product = entry.get("product")
        sku = product.get("sku", "?") if isinstance(product, dict) else "?"
        rec = Record(entry, origin, i, f"sku {sku}")
        attrs = Record(rec.obj("product"), origin, i, f"sku {sku}").obj("attributes")
        a = Record(attrs, origin, i, f"sku {sku}")
        if (
            a.get("operatingSystem") != "Linux"
            or a.get("tenancy") != "Shared"
            or a.get("preInstalledSw", "NA") != "NA"
            or a.get("capacitystatus", "Used") != "Used"
        ):
            continue
        instance_type = a.text("instanceType")
        region = a.text("regionCode")
        if keep_regions is not None and region not in keep_regions:
            continue
        rec.label = f"{instance_type} {region}"
        terms = rec.obj("terms")
        on_demand = terms.get("OnDemand") or {}
        if not isinstance(on_demand, dict):
            raise rec.fail("terms.OnDemand is not an object")
        for term in on_demand.values():
            t = Record(term, origin, i, rec.label)
            effective = t.time("effectiveDate")
            dims = t.obj("priceDimensions")
            for dim in dims.values():
                d = Record(dim, origin, i, rec.label)
                if d.get("unit") not in ("Hrs", "Hours", "hours"):
                    continue
                per_unit = d.obj("pricePerUnit")
                if not per_unit:
                    raise d.fail("pricePerUnit is empty")
                currency = "USD" if "USD" in per_unit else sorted(per_unit)[0]
                rows.append(
                    {
                        "provider": "aws",
                        "region": region,
                        "zone": "",
                        "instance_type": instance_type,
                        "market": "on_demand",
                        "price_per_hour": d.number(f"pricePerUnit.{currency}", per_unit[currency]),
                        "currency": currency,
                        "observed_at": effective,
                        "source": source,
                    }
                )
    return raw_price_frame(rows)


def parse_aws_document(doc: Any, origin: str) -> Any:
    """A saved AWS response (or a JSON list of pages of one kind) -> raw price frame.

    Detects a ``describe_spot_price_history`` response (``SpotPriceHistory``) versus a pricing
    ``get_products`` response (``PriceList``).
    """
    import polars as pl

    pages = doc if isinstance(doc, list) and doc and all(isinstance(p, dict) for p in doc) else [doc]
    frames = []
    for n, page in enumerate(pages):
        where = origin if len(pages) == 1 else f"{origin} page {n}"
        if isinstance(page, dict) and "SpotPriceHistory" in page:
            items = list_field(page, "SpotPriceHistory", where, SPOT_SHAPE)
            frames.append(parse_spot_price_history(items, where))
        elif isinstance(page, dict) and "PriceList" in page:
            items = list_field(page, "PriceList", where, PRICE_LIST_SHAPE)
            frames.append(parse_price_list(items, where))
        else:
            raise InputError(f"{where}: neither {SPOT_SHAPE} nor {PRICE_LIST_SHAPE}")
    return pl.concat(frames) if frames else raw_price_frame([])


def read_aws_file(path: str) -> Any:
    """``spotshift quotes normalize --provider aws FILE``: parse a saved response file."""
    doc = load_json_document(path, f"{SPOT_SHAPE} or {PRICE_LIST_SHAPE}")
    return parse_aws_document(doc, str(path))


ClientFactory = Callable[[str, str], Any]


class AwsFeed(PriceFeed):
    """Live AWS prices through boto3 (``client_factory(service, region)`` is injectable for tests)."""

    name = "aws"

    def __init__(
        self,
        regions: Sequence[str] | None = None,
        *,
        home_region: str = "us-east-1",
        pricing_region: str = PRICING_REGION,
        client_factory: ClientFactory | None = None,
        instance_types: Sequence[str] | None = None,
    ) -> None:
        self.regions = list(regions) if regions else None
        self.home_region = home_region
        self.pricing_region = pricing_region
        self._factory = client_factory
        self._instance_types = list(instance_types) if instance_types else None

    def _client(self, service: str, region: str) -> Any:
        if self._factory is not None:
            return track_status(self._factory(service, region))
        import boto3

        session = boto3.session.Session()
        if session.get_credentials() is None:
            raise CredentialsError(
                "aws feed: no AWS credentials found (checked environment, ~/.aws config/credentials, "
                "SSO, instance/task role)"
            )
        return track_status(session.client(service, region_name=region))

    def instance_types(self) -> list[str]:
        """The instance types asked about (default: every AWS type of the catalog)."""
        return self._instance_types or load_catalog().instance_types("aws")

    def _call(self, what: str, region: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` with every botocore error as one line naming this feed, the call and the status."""
        try:
            return fn()
        except botocore_errors() as exc:
            raise from_botocore(exc, "aws feed", f"{what} in {region}") from None

    def list_regions(self) -> list[str]:
        """Regions to ask: the configured list, else every enabled region of the account."""
        if self.regions:
            return self.regions
        ec2 = self._client("ec2", self.home_region)
        resp = self._call(
            "describe_regions", self.home_region, lambda: ec2.describe_regions(AllRegions=False)
        )
        return sorted(r["RegionName"] for r in resp.get("Regions", []))

    def fetch_spot(self, now: datetime, regions: Sequence[str]) -> Any:
        """Spot prices in effect at ``now`` in ``regions``, per AZ."""
        import polars as pl

        frames = []
        types = self.instance_types()
        for region in regions:
            ec2 = self._client("ec2", region)

            def pages(ec2: Any = ec2) -> list[Any]:
                paginator = ec2.get_paginator("describe_spot_price_history")
                return list(
                    paginator.paginate(
                        InstanceTypes=types,
                        ProductDescriptions=["Linux/UNIX"],
                        StartTime=now,
                        EndTime=now,
                    )
                )

            for n, page in enumerate(self._call("describe_spot_price_history", region, pages)):
                origin = f"ec2.describe_spot_price_history {region} page {n}"
                items = list_field(page, "SpotPriceHistory", origin, SPOT_SHAPE)
                frames.append(parse_spot_price_history(items, origin, region=region))
        return pl.concat(frames) if frames else raw_price_frame([])

    def fetch_on_demand(self, regions: Sequence[str]) -> Any:
        """On-demand Linux prices of the catalog's types in ``regions`` from the Price List API."""
        import polars as pl

        pricing = self._client("pricing", self.pricing_region)
        frames = []
        for instance_type in self.instance_types():
            filters = [
                {"Type": "TERM_MATCH", "Field": field, "Value": value}
                for field, value in (
                    ("instanceType", instance_type),
                    ("operatingSystem", "Linux"),
                    ("tenancy", "Shared"),
                    ("preInstalledSw", "NA"),
                    ("capacitystatus", "Used"),
                )
            ]

            def pages(filters: list[dict[str, str]] = filters) -> list[Any]:
                paginator = pricing.get_paginator("get_products")
                return list(
                    paginator.paginate(ServiceCode="AmazonEC2", Filters=filters, FormatVersion="aws_v1")
                )

            for n, page in enumerate(self._call("pricing.get_products", self.pricing_region, pages)):
                origin = f"pricing.get_products {instance_type} page {n}"
                items = list_field(page, "PriceList", origin, PRICE_LIST_SHAPE)
                frames.append(parse_price_list(items, origin, regions=regions))
        return pl.concat(frames) if frames else raw_price_frame([])

    def fetch(self, now: datetime) -> Any:
        """Spot (per AZ) and on-demand (per region) prices at ``now``."""
        import polars as pl

        regions = self.list_regions()
        return pl.concat([self.fetch_spot(now, regions), self.fetch_on_demand(regions)])
