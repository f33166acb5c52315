"""Per-minute usage windows of a replica: what becomes a raw.inference_usage row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from spotshift.serving.usage import ReplicaIdentity, UsageWindows, window_start_of

T0 = datetime(2026, 1, 5, 10, 0, 30, tzinfo=UTC)  # the replica starts 30 s into a minute
IDENT = ReplicaIdentity("chat", "r1", "gcp/us-central1", "spot", 1.2, 100.0, 0.002)


def test_windows_roll_per_minute_with_quantiles_violations_and_partial_hours():
    w = UsageWindows(IDENT, T0)
    for i, ms in enumerate([10.0, 20.0, 30.0, 40.0, 500.0]):
        w.add(T0 + timedelta(seconds=i), ms, tokens_in=3, tokens_out=8)
    assert w.roll(T0 + timedelta(seconds=20)) == []  # the first window is not over yet
    w.add(T0 + timedelta(seconds=95), 50.0, tokens_in=1, tokens_out=2)  # 10:02:05 (10:01 idle)
    rows = w.roll(T0 + timedelta(seconds=100))
    assert [r["window_start"] for r in rows] == [
        T0.replace(second=0),
        T0.replace(second=0) + timedelta(minutes=1),
    ]
    first, idle = rows
    assert first["requests"] == 5 and first["tokens_in"] == 15 and first["tokens_out"] == 40
    assert first["tokens"] == 55 and first["slo_violations"] == 1
    assert first["p50_ms"] == 30.0 and first["p99_ms"] == pytest.approx(500 - 0.04 * 460)
    assert first["replica_hours"] == pytest.approx(30 / 3600)  # up from 10:00:30 only
    assert first["usd"] == pytest.approx(1.2 * 30 / 3600)
    assert idle["requests"] == 0 and idle["p99_ms"] is None and idle["usd"] == pytest.approx(1.2 / 60)
    (last,) = w.roll(T0 + timedelta(seconds=110), final=True)  # stops at 10:02:20
    assert last["requests"] == 1 and last["p50_ms"] == 50.0
    assert last["window_end"] == T0 + timedelta(seconds=110)
    assert last["replica_hours"] == pytest.approx(20 / 3600)
    assert {r["replica_id"] for r in rows + [last]} == {"r1"}


def test_window_start_is_utc_minute():
    at = datetime(2026, 1, 5, 11, 7, 59, 999_000, tzinfo=UTC)
    assert window_start_of(at) == datetime(2026, 1, 5, 11, 7, tzinfo=UTC)


def test_two_replicas_in_one_place_and_minute_are_two_facts_and_a_retry_is_none(spotshift_home):
    """The fact key includes the replica: two replicas of one location and market in the same minute
    both land; recording the same window again (a retried flush) writes nothing."""
    from spotshift.serving.usage import record_usage
    from spotshift.warehouse import connect

    rows = []
    for rid in ("r1", "r2"):
        w = UsageWindows(ReplicaIdentity("chat", rid, "gcp/us-central1", "spot", 1.2, 100.0, 0.002), T0)
        w.add(T0, 20.0, tokens_in=3, tokens_out=5)
        rows += w.roll(T0 + timedelta(seconds=20), final=True)
    for row in rows:  # each replica process records its own windows
        assert record_usage([row]) == 1
    assert record_usage(rows[:1]) == 1  # handed over again: deduplicated on ingestion
    with connect(read_only=True) as con:
        got = con.execute(
            "select replica_id, requests, tokens from raw.inference_usage order by 1"
        ).fetchall()
    assert got == [("r1", 1, 8), ("r2", 1, 8)]


def test_an_older_warehouse_gains_the_replica_columns(spotshift_home):
    """A warehouse created before the per-replica columns gets them on the next write open."""
    import duckdb

    from spotshift.home import warehouse_path
    from spotshift.warehouse import connect

    path = warehouse_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path))
    con.execute("create schema raw")
    con.execute(
        "create table raw.inference_usage (window_start timestamp, window_end timestamp, location varchar, "
        "market varchar, requests bigint, tokens bigint, slo_ms double, p99_ms double, slo_violations bigint, "
        "usd double, usd_per_violation double)"
    )
    con.execute(
        "insert into raw.inference_usage (location, market, requests) values ('gcp/us-central1', 'spot', 7)"
    )
    con.close()
    with connect() as con:
        cols = [r[0] for r in con.execute("describe raw.inference_usage").fetchall()]
        old = con.execute("select requests, replica_id from raw.inference_usage").fetchall()
    assert {"endpoint", "replica_id", "tokens_in", "p50_ms", "replica_hours", "usd_per_hour"} <= set(cols)
    assert old == [(7, None)]
