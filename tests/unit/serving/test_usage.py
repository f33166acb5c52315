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
