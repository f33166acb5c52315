"""The Great Expectations suites fail on bad snapshots and pass on good ones."""

from __future__ import annotations

from datetime import timedelta

import polars as pl
import pytest

from spotshift.pricing.expectations import CHECKS, spot_vs_on_demand, validate_snapshot
from spotshift.pricing.feeds.replay import ReplayFeed
from spotshift.pricing.snapshots import take_snapshot
from spotshift.pricing.synthetic import synthetic_history


@pytest.fixture(scope="module")
def good() -> tuple[pl.DataFrame, object]:
    history = synthetic_history(weeks=3)
    now = history["observed_at"].max() + timedelta(hours=2)
    return take_snapshot(ReplayFeed(history), now).table(), now


def failed(frame: pl.DataFrame, now: object, **kw: object) -> set[str]:
    return {o.name for o in validate_snapshot(frame, now, **kw) if not o.passed}


def test_good_snapshot_passes_every_check(good: tuple) -> None:
    frame, now = good
    outcomes = validate_snapshot(frame, now)
    assert [o.name for o in outcomes] == list(CHECKS)
    assert all(o.passed for o in outcomes), [o.summary() for o in outcomes]


def test_null_key(good: tuple) -> None:
    frame, now = good
    bad = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(None).otherwise(pl.col("region")).alias("region")
    )
    assert failed(bad, now) == {"quotes_keys_not_null"}


def test_empty_snapshot(good: tuple) -> None:
    frame, now = good
    assert "quotes_keys_not_null" in failed(frame.head(0), now)


def test_duplicate_key(good: tuple) -> None:
    frame, now = good
    outcome = {o.name: o for o in validate_snapshot(pl.concat([frame, frame.tail(1)]), now)}
    assert not outcome["quotes_unique_per_snapshot"].passed
    assert outcome["quotes_unique_per_snapshot"].failures[0]["unexpected_count"] == 2
    assert all(o.passed for n, o in outcome.items() if n != "quotes_unique_per_snapshot")


def test_spot_above_on_demand(good: tuple) -> None:
    frame, now = good
    target = (
        (pl.col("market") == "spot")
        & (pl.col("instance_type") == "p4d.24xlarge")
        & (pl.col("region") == "us-east-1")
    )
    bad = frame.with_columns(
        pl.when(target)
        .then(pl.col("price_usd_hour") * 3)
        .otherwise(pl.col("price_usd_hour"))
        .alias("price_usd_hour")
    )
    assert (
        spot_vs_on_demand(bad, 0.01).filter(pl.col("spot_usd_hour") > pl.col("on_demand_usd_hour")).height
        == 1
    )
    assert failed(bad, now) == {"quotes_spot_below_on_demand"}
    # within tolerance is fine
    close = frame.with_columns(
        pl.when(target)
        .then(pl.lit(32.7726 * 1.005))
        .otherwise(pl.col("price_usd_hour"))
        .alias("price_usd_hour")
    )
    assert failed(close, now) == set()


def test_price_out_of_range_for_its_gpu(good: tuple) -> None:
    frame, now = good
    # $50 per A100-40GB GPU-hour passes normalization (< $200) but not the per-model range
    target = (
        (pl.col("market") == "on_demand")
        & (pl.col("instance_type") == "p4d.24xlarge")
        & (pl.col("region") == "us-west-2")
    )
    bad = frame.with_columns(
        pl.when(target).then(pl.lit(8 * 50.0)).otherwise(pl.col("price_usd_hour")).alias("price_usd_hour")
    )
    outcome = {o.name: o for o in validate_snapshot(bad, now)}
    assert not outcome["quotes_price_ranges"].passed
    assert "A100-40GB" in outcome["quotes_price_ranges"].failures[0]["row_condition"]
    unknown = frame.with_columns(pl.lit("V100-16GB").alias("gpu_model"))
    assert "quotes_price_ranges" in failed(unknown, now)


def test_stale_and_future_quotes(good: tuple) -> None:
    frame, now = good
    assert failed(frame, now + timedelta(days=30)) == {"quotes_fresh"}
    assert failed(frame, now + timedelta(days=30), max_quote_age_hours=24 * 40) == set()
    assert failed(frame, now - timedelta(days=2)) == {"quotes_fresh"}  # observed in the future
