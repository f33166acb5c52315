"""The replay feed: snapshots on the virtual clock, history resolution, the real GCP history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from spotshift.clock import VirtualClock, virtual_now
from spotshift.errors import InputError
from spotshift.pricing.feeds import open_feed
from spotshift.pricing.feeds.replay import ReplayFeed, history_to_raw, resolve_history, snapshot_at
from spotshift.pricing.synthetic import synthetic_history, write_synthetic_history

T = datetime(2024, 3, 1, tzinfo=UTC)


def hist(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "observed_at": pl.Series([r[0] for r in rows], dtype=pl.Datetime("us", "UTC")),
            "provider": ["gcp"] * len(rows),
            "region": [r[1] for r in rows],
            "zone": [""] * len(rows),
            "instance_type": [r[2] for r in rows],
            "gpu_model": ["a100"] * len(rows),
            "gpu_count": pl.Series([1] * len(rows), dtype=pl.Int32),
            "ondemand_hour": [r[3] for r in rows],
            "spot_hour": pl.Series([r[4] for r in rows], dtype=pl.Float64),
            "source": ["replay"] * len(rows),
        }
    )


def test_snapshot_is_latest_row_per_key_at_or_before_now() -> None:
    h = hist(
        [
            (T, "us-central1", "a2-highgpu-1g", 3.6, 1.4),
            (T + timedelta(days=7), "us-central1", "a2-highgpu-1g", 3.6, 1.2),
            (T + timedelta(days=14), "us-central1", "a2-highgpu-1g", 3.6, 1.1),
            (T - timedelta(days=1), "us-east4", "a2-highgpu-1g", 3.7, None),
        ]
    )
    snap = snapshot_at(h, T + timedelta(days=10))
    assert snap.height == 1  # us-east4's row is older than the 7-day delisting window
    assert snap["spot_hour"].to_list() == [1.2]
    assert snapshot_at(h, T + timedelta(days=3)).height == 2
    assert snapshot_at(h, T - timedelta(days=2)).height == 0
    exact = snapshot_at(h, T + timedelta(days=14))
    assert exact["spot_hour"].to_list() == [1.1]


def test_history_to_raw_has_one_row_per_market() -> None:
    h = hist([(T, "us-central1", "a2-highgpu-1g", 3.6, 1.4), (T, "us-east4", "a2-highgpu-1g", 3.7, None)])
    raw = history_to_raw(h)
    assert sorted(raw["market"].to_list()) == ["on_demand", "on_demand", "spot"]
    assert set(raw["currency"]) == {"USD"} and set(raw["gpu_model_hint"]) == {"a100"}


def test_feed_follows_the_virtual_clock(spotshift_home: Path) -> None:
    df = synthetic_history(weeks=6)
    feed = open_feed("replay", history=df)
    first = df["observed_at"].min()
    VirtualClock.starting(first + timedelta(days=8), 0).save()
    q1, _ = feed.poll(virtual_now())
    VirtualClock.starting(first + timedelta(days=15), 0).save()
    q2, _ = feed.poll(virtual_now())
    assert set(q1["observed_at"]) == {first + timedelta(days=7)}
    assert set(q2["observed_at"]) == {first + timedelta(days=14)}
    assert q1.height == q2.height > 0
    assert not q1["price_usd_hour"].equals(q2["price_usd_hour"])  # AWS spot moved


def test_resolve_history_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-shared"
    empty.mkdir()
    monkeypatch.setenv("SPOTSHIFT_SHARED_DATA", str(empty))
    monkeypatch.delenv("SPOTSHIFT_PRICES", raising=False)
    assert resolve_history().is_synthetic
    own = write_synthetic_history(tmp_path / "mine.csv", seed=7, weeks=3)
    monkeypatch.setenv("SPOTSHIFT_PRICES", str(own))
    h = resolve_history()
    assert h.origin == str(own) and h.frame.height == synthetic_history(seed=7, weeks=3).height
    explicit = write_synthetic_history(tmp_path / "explicit.csv", seed=1, weeks=2)
    assert resolve_history(explicit).origin == str(explicit)
    with pytest.raises(InputError, match="no such file"):
        ReplayFeed(tmp_path / "nope.csv")


def test_real_history_replays_every_instance_type(gcp_history: Path) -> None:
    feed = ReplayFeed(gcp_history)
    first, last = feed.time_range()
    quotes, report = feed.poll(last + timedelta(hours=1))
    assert report.rejected_total == 0 and not report.unknown_instance_types
    assert quotes.height > 1000
    assert set(quotes["observed_at"]) == {last}
    assert quotes.select("provider", "region", "zone", "instance_type", "market").is_unique().all()
    early, _ = feed.poll(first)
    assert 0 < early.height < quotes.height
