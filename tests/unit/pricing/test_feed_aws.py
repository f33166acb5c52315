"""The aws feed against botocore's Stubber (moto's spot prices are fake): paging, regions, both APIs."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import polars as pl
import pytest
from botocore.stub import Stubber

from spotshift.errors import CredentialsError, InputError
from spotshift.pricing.feeds.aws import AwsFeed, parse_aws_document, read_aws_file, region_of_zone
from tests.unit.pricing.conftest import FIXTURES, fixture_json

NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
TYPES = ["p4d.24xlarge", "g6.xlarge"]


@pytest.fixture(autouse=True)
def fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-example")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def spot_response(name: str) -> dict[str, Any]:
    """A recorded page with timestamps as boto3 returns them (datetime)."""
    page = fixture_json(name)
    for item in page["SpotPriceHistory"]:
        item["Timestamp"] = datetime.fromisoformat(item["Timestamp"])
    return page


class Stubs:
    """One stubbed client per (service, region), handed to the feed as its client factory."""

    def __init__(self) -> None:
        self.stubbers: dict[tuple[str, str], Stubber] = {}
        self.clients: dict[tuple[str, str], Any] = {}

    def __call__(self, service: str, region: str) -> Any:
        return self.client(service, region)

    def client(self, service: str, region: str) -> Any:
        key = (service, region)
        if key not in self.clients:
            self.clients[key] = boto3.session.Session().client(service, region_name=region)
            self.stubbers[key] = Stubber(self.clients[key])
            self.stubbers[key].activate()
        return self.clients[key]

    def stub(self, service: str, region: str) -> Stubber:
        self.client(service, region)
        return self.stubbers[(service, region)]

    def assert_done(self) -> None:
        for s in self.stubbers.values():
            s.assert_no_pending_responses()


def stub_spot(stubs: Stubs, region: str, pages: list[dict[str, Any]]) -> None:
    stubber = stubs.stub("ec2", region)
    params = {"InstanceTypes": TYPES, "ProductDescriptions": ["Linux/UNIX"], "StartTime": NOW, "EndTime": NOW}
    for n, page in enumerate(pages):
        expected = dict(params, **({"NextToken": pages[n - 1]["NextToken"]} if n else {}))
        stubber.add_response("describe_spot_price_history", page, expected)


def stub_products(stubs: Stubs, instance_type: str, pages: list[dict[str, Any]]) -> None:
    stubber = stubs.stub("pricing", "us-east-1")
    filters = [
        {"Type": "TERM_MATCH", "Field": f, "Value": v}
        for f, v in (
            ("instanceType", instance_type),
            ("operatingSystem", "Linux"),
            ("tenancy", "Shared"),
            ("preInstalledSw", "NA"),
            ("capacitystatus", "Used"),
        )
    ]
    params = {"ServiceCode": "AmazonEC2", "Filters": filters, "FormatVersion": "aws_v1"}
    for n, page in enumerate(pages):
        expected = dict(params, **({"NextToken": pages[n - 1]["NextToken"]} if n else {}))
        stubber.add_response("get_products", page, expected)


def test_poll_pages_through_every_region_and_both_apis() -> None:
    stubs = Stubs()
    stubs.stub("ec2", "us-east-1").add_response(
        "describe_regions",
        {"Regions": [{"RegionName": "us-west-2"}, {"RegionName": "us-east-1"}]},
        {"AllRegions": False},
    )
    stub_spot(
        stubs, "us-east-1", [spot_response("aws_spot_page1.json"), spot_response("aws_spot_page2.json")]
    )
    west = {
        "SpotPriceHistory": [
            {
                "AvailabilityZone": "us-west-2b",
                "InstanceType": "p4d.24xlarge",
                "ProductDescription": "Linux/UNIX",
                "SpotPrice": "13.201100",
                "Timestamp": datetime(2026, 11, 20, 5, 0, tzinfo=UTC),
            }
        ],
        "NextToken": "",
    }
    stub_spot(stubs, "us-west-2", [west])
    stub_products(
        stubs,
        "p4d.24xlarge",
        [fixture_json("aws_price_list_page1.json"), fixture_json("aws_price_list_page2.json")],
    )
    stub_products(stubs, "g6.xlarge", [fixture_json("aws_price_list_g6.json")])

    feed = AwsFeed(client_factory=stubs, instance_types=TYPES)
    quotes, report = feed.poll(NOW)
    stubs.assert_done()

    spot = quotes.filter(pl.col("market") == "spot")
    assert sorted(spot["zone"].unique()) == [
        "us-east-1a",
        "us-east-1b",
        "us-east-1c",
        "us-east-1d",
        "us-east-1f",
        "us-west-2b",
    ]
    # the newer of two g6.xlarge prices in us-east-1a wins; the Windows price is ignored
    g6 = spot.filter(pl.col("instance_type") == "g6.xlarge")
    assert g6["price_usd_hour"].to_list() == [0.3482] and report.superseded == 1
    on_demand = quotes.filter(pl.col("market") == "on_demand").sort("region", "instance_type")
    assert on_demand.select("region", "instance_type", "price_usd_hour").rows() == [
        ("us-east-1", "g6.xlarge", 0.8048),
        ("us-east-1", "p4d.24xlarge", 32.7726),
        ("us-west-2", "g6.xlarge", 0.8048),
        ("us-west-2", "p4d.24xlarge", 32.7726),
    ]  # eu-west-1 and cn-north-1 were not asked for; Windows, Dedicated and reservations are filtered
    assert report.unknown_instance_types == {"aws/p3.2xlarge": 1}
    assert set(quotes["source"]) == {"aws"}


def test_saved_files_of_both_shapes_are_detected(tmp_path: Path) -> None:
    spot = read_aws_file(str(FIXTURES / "aws_spot_pages.json"))
    assert set(spot["market"]) == {"spot"} and spot.height == 8  # Windows skipped
    listing = read_aws_file(str(FIXTURES / "aws_price_list_page2.json"))
    assert set(listing["market"]) == {"on_demand"}
    assert dict(zip(listing["region"], listing["currency"], strict=True)) == {
        "eu-west-1": "USD",
        "cn-north-1": "CNY",
    }
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"Reservations": []}))
    with pytest.raises(InputError, match="neither a describe_spot_price_history response"):
        read_aws_file(str(bad))


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (
            {
                "AvailabilityZone": "us-east-1a",
                "InstanceType": "g6.xlarge",
                "ProductDescription": "Linux/UNIX",
                "Timestamp": "2026-11-20T00:00:00Z",
            },
            "missing field SpotPrice",
        ),
        (
            {
                "AvailabilityZone": "us-east-1a",
                "InstanceType": "g6.xlarge",
                "ProductDescription": "Linux/UNIX",
                "SpotPrice": True,
                "Timestamp": "2026-11-20T00:00:00Z",
            },
            "SpotPrice True is not a number",
        ),
        (
            {
                "AvailabilityZone": "us-east-1a",
                "InstanceType": "g6.xlarge",
                "ProductDescription": "Linux/UNIX",
                "SpotPrice": "0.3",
                "Timestamp": "yesterday",
            },
            "Timestamp 'yesterday' is not an ISO-8601",
        ),
        ("not an object", "expected a JSON object"),
    ],
)
def test_malformed_spot_records_name_the_record(item: Any, message: str) -> None:
    with pytest.raises(InputError, match=f"resp.json record 0.*{message}"):
        parse_aws_document({"SpotPriceHistory": [item]}, "resp.json")


def test_price_list_entry_that_is_not_json() -> None:
    with pytest.raises(InputError, match="record 1: PriceList entry: malformed JSON"):
        parse_aws_document(
            {"PriceList": [json.dumps({"product": {"attributes": {}}, "terms": {}}), "{oops"]}, "p.json"
        )


def test_missing_credentials_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(CredentialsError, match="^aws feed: no AWS credentials found"):
        AwsFeed(regions=["us-east-1"]).poll(NOW)


def test_rejected_credentials() -> None:
    stubs = Stubs()
    stubs.stub("ec2", "us-east-1").add_client_error(
        "describe_regions", service_error_code="AuthFailure", http_status_code=401
    )
    with pytest.raises(
        CredentialsError, match="aws feed: describe_regions in us-east-1 refused the credentials"
    ):
        AwsFeed(client_factory=stubs, instance_types=TYPES).poll(NOW)


def test_region_of_zone() -> None:
    assert region_of_zone("us-east-1a") == "us-east-1"
    assert region_of_zone("us-west-2-lax-1a") == "us-west-2"
    assert region_of_zone("us-gov-west-1b") == "us-gov-west-1"
