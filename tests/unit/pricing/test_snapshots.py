"""Snapshots: content-hash ids, idempotent append-only storage, latest quotes, the CLI poll path."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from spotshift.errors import NotFoundError
from spotshift.pricing.feeds.replay import ReplayFeed
from spotshift.pricing.snapshots import (
    CURATED_TABLE,
    RAW_TABLE,
    cheapest_per_model,
    latest_quotes,
    poll_into_warehouse,
    read_snapshot,
    snapshot_id_of,
    store_snapshot,
    take_snapshot,
)
from spotshift.pricing.synthetic import synthetic_history
from spotshift.warehouse import connect


@pytest.fixture(scope="module")
def history() -> pl.DataFrame:
    return synthetic_history(weeks=4)


def test_snapshot_id_is_a_content_hash(history: pl.DataFrame) -> None:
    t = history["observed_at"].max()
    a = take_snapshot(ReplayFeed(history), t)
    b = take_snapshot(ReplayFeed(history), t + timedelta(hours=5))  # later poll, same market
    assert a.snapshot_id == b.snapshot_id and a.polled_at != b.polled_at
    assert snapshot_id_of(a.quotes.reverse()) == a.snapshot_id
    c = take_snapshot(ReplayFeed(history), t - timedelta(days=7))
    assert c.snapshot_id != a.snapshot_id


def test_store_is_append_only_and_idempotent(spotshift_home: Path, history: pl.DataFrame) -> None:
    t = history["observed_at"].max()
    snap = take_snapshot(ReplayFeed(history), t)
    older = take_snapshot(ReplayFeed(history), t - timedelta(days=7))
    with connect() as con:
        assert store_snapshot(con, older) == older.quotes.height
        assert store_snapshot(con, snap) == snap.quotes.height
        assert store_snapshot(con, take_snapshot(ReplayFeed(history), t + timedelta(hours=1))) == 0
        total = con.execute(f"SELECT count(*) FROM {RAW_TABLE}").fetchall()[0][0]
        assert total == snap.quotes.height + older.quotes.height
        back = read_snapshot(con, snap.snapshot_id)
        assert snapshot_id_of(back.drop("snapshot_id", "polled_at")) == snap.snapshot_id
        with pytest.raises(NotFoundError):
            read_snapshot(con, "q-missing")
        with pytest.raises(NotFoundError, match="no quotes in main.gpu_quotes"):
            latest_quotes(con)
        store_snapshot(con, older, CURATED_TABLE)
        store_snapshot(con, snap, CURATED_TABLE)
        latest = latest_quotes(con)
    assert set(latest["snapshot_id"]) == {snap.snapshot_id}
    best = cheapest_per_model(latest, market="spot")
    assert best["gpu_model"].is_unique().all() and set(best["market"]) == {"spot"}
    for row in best.iter_rows(named=True):
        same = latest.filter((pl.col("gpu_model") == row["gpu_model"]) & (pl.col("market") == "spot"))
        assert row["effective_gpu_hour_usd"] == same["effective_gpu_hour_usd"].min()


def test_poll_into_warehouse_promotes_only_validated_snapshots(
    spotshift_home: Path, history: pl.DataFrame
) -> None:
    t = history["observed_at"].max() + timedelta(hours=1)
    ok = poll_into_warehouse(ReplayFeed(history), t, max_quote_age_hours=24)
    assert ok.passed and ok.raw_rows_written == ok.curated_rows_written > 0
    again = poll_into_warehouse(ReplayFeed(history), t + timedelta(minutes=1), max_quote_age_hours=24)
    assert again.passed and again.raw_rows_written == again.curated_rows_written == 0
    # past its end the replay is judged on its own clock (its last observation): still fresh
    frozen = poll_into_warehouse(ReplayFeed(history), t + timedelta(days=3), max_quote_age_hours=24)
    assert frozen.passed and frozen.feed_clock == history["observed_at"].max()
    # a feed whose clock is now (a live feed) that stopped publishing 3 days ago is stale
    stale = poll_into_warehouse(_LiveReplay(history), t + timedelta(days=3), max_quote_age_hours=24)
    assert not stale.passed and stale.curated_rows_written == 0
    assert [c.name for c in stale.checks if not c.passed] == ["quotes_fresh"]


class _LiveReplay(ReplayFeed):
    """The replay's prices on a live feed's clock (``now``): a live feed that stopped publishing."""

    def clock(self, now: datetime) -> datetime:
        return now
