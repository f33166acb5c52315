"""Normalization: catalog join, the effective GPU-hour, counted rejections, unknown types."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from spotshift.pricing.catalog import load_catalog
from spotshift.pricing.normalize import normalize_frame, quotes_from_frame, raw_price_frame
from spotshift.pricing.quote import QUOTE_FIELDS, NormalizedGPUQuote, effective_gpu_hour_usd

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
T1 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def row(instance_type: str = "p4d.24xlarge", price: float = 12.0, **kw: object) -> dict:
    base = {
        "provider": "aws",
        "region": "us-east-1",
        "zone": "us-east-1a",
        "instance_type": instance_type,
        "market": "spot",
        "price_per_hour": price,
        "currency": "USD",
        "observed_at": T0,
        "source": "aws",
    }
    base.update(kw)
    return base


def test_accepted_quote_has_contract_fields_and_formula() -> None:
    quotes, report = normalize_frame(raw_price_frame([row()]))
    assert report.accepted == 1 and report.rejected_total == 0
    assert tuple(quotes.columns) == QUOTE_FIELDS
    (q,) = quotes_from_frame(quotes)
    assert isinstance(q, NormalizedGPUQuote)
    e = load_catalog().get("aws", "p4d.24xlarge")
    assert (q.gpu_model, q.gpu_count, q.net_gbps, q.storage_gbps) == (
        "A100-40GB",
        8,
        e.net_gbps,
        e.storage_gbps,
    )
    assert q.effective_gpu_hour_usd == pytest.approx(
        effective_gpu_hour_usd(12.0, 8, e.net_gbps, e.storage_gbps)
    )
    assert q.topology_score == e.topology_score >= 7
    assert q.observed_at == T0 and q.location == "aws/us-east-1"


def test_rejections_are_counted_by_reason() -> None:
    rows = [
        row(price=1.0, currency="EUR"),
        row(price=-1.0, zone="us-east-1b"),
        row(price=0.0, zone="us-east-1c"),
        row(price=math.nan, zone="us-east-1d"),
        row(price=math.inf, zone="us-east-1e"),
        row(price=8 * 250.0, zone="us-east-1f"),  # $250 per GPU-hour
        row("p3.2xlarge", 0.9),
        row("p3.2xlarge", 0.95, zone="us-east-1b"),
        row("x9.huge", 1.0),
        row(market="reserved"),
        row(price=None, zone="us-east-1f"),
        row(zone="us-east-1z"),  # the one good price
    ]
    quotes, report = normalize_frame(raw_price_frame(rows))
    assert quotes.height == 1 and report.accepted == 1
    assert report.rejected == {
        "non_usd": 1,
        "negative": 1,
        "zero": 1,
        "not_a_number": 3,
        "absurd": 1,
        "unknown_instance_type": 3,
        "unknown_market": 1,
    }
    assert report.unknown_instance_types == {"aws/p3.2xlarge": 2, "aws/x9.huge": 1}
    assert "3 unknown" not in report.summary() and "2 unknown instance type(s)" in report.summary()


def test_latest_price_per_key_wins_in_a_poll_but_not_in_a_history() -> None:
    rows = [row(price=11.0, observed_at=T1), row(price=10.0, observed_at=T0)]
    quotes, report = normalize_frame(raw_price_frame(rows))
    assert quotes["price_usd_hour"].to_list() == [11.0] and report.superseded == 1
    quotes, report = normalize_frame(raw_price_frame(rows), latest_only=False)
    assert sorted(quotes["price_usd_hour"].to_list()) == [10.0, 11.0] and report.superseded == 0


def test_feed_gpu_spelling_that_disagrees_with_the_catalog_is_counted() -> None:
    rows = [
        row("a2-ultragpu-1g", 2.0, provider="gcp", region="us-central1", zone="", gpu_model_hint="a100"),
        row("a2-highgpu-1g", 1.4, provider="gcp", region="us-central1", zone="", gpu_model_hint="a100"),
    ]
    quotes, report = normalize_frame(raw_price_frame(rows))
    assert set(quotes["gpu_model"]) == {"A100-80GB", "A100-40GB"}
    assert report.gpu_model_disagreements == {"gcp/a2-ultragpu-1g: a100 -> A100-80GB": 1}


def test_reports_merge() -> None:
    _, a = normalize_frame(raw_price_frame([row("p3.2xlarge")]))
    _, b = normalize_frame(raw_price_frame([row(), row(price=0.0, zone="b")]))
    m = a.merge(b)
    assert m.accepted == 1 and m.rejected == {"unknown_instance_type": 1, "zero": 1}
    assert m.to_dict()["rejected_total"] == 2


def test_empty_input() -> None:
    quotes, report = normalize_frame(raw_price_frame([]))
    assert quotes.height == 0 and report.accepted == 0 and tuple(quotes.columns) == QUOTE_FIELDS
