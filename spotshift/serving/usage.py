"""What a replica served, per minute, as ``raw.inference_usage`` facts.

Every answered completion adds its latency (accept to answer, the emulated network included) and
token counts to the current one-minute window (UTC, aligned to the minute). When a window is over
— or the replica stops — it becomes one row per replica: requests, tokens in/out, latency
p50/p95/p99 (numpy's linear interpolation over the window's requests), requests over the endpoint's
SLO, the hours the replica was up inside the window and what they cost at the replica's price
(``usd = replica_hours x usd_per_hour``; a reserved replica is paid whether it serves or not, and
so is every idle window: a replica writes a row for each minute it is up, even with no requests).
Rows go through :func:`spotshift.warehouse.record_facts`, the one fact path: durable in the fact lake
first, ingested once, so dbt's ``cost_per_million_tokens`` and ``latency_slo_violation_cost`` and the
FOCUS export are computed from served traffic.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from spotshift.warehouse import record_facts

WINDOW_S = 60


def window_start_of(at: datetime) -> datetime:
    """The start of the one-minute window holding ``at`` (UTC)."""
    return at.astimezone(UTC).replace(second=0, microsecond=0)


@dataclass
class _Window:
    start: datetime
    latencies_ms: list[float] = field(default_factory=list)
    tokens_in: int = 0
    tokens_out: int = 0
    violations: int = 0


@dataclass(frozen=True)
class ReplicaIdentity:
    """What every row of a replica repeats: who served, where, in which market, at what price, under which SLO."""

    endpoint: str
    replica_id: str
    location: str
    market: str
    usd_per_hour: float
    slo_ms: float
    usd_per_violation: float


class UsageWindows:
    """Per-minute aggregation of one replica's requests; :meth:`roll` returns the finished windows' rows.

    ``up_since`` is when the replica started serving (its first window bills from there).
    Thread-safe: the server's event loop adds, a background thread rolls and records.
    """

    def __init__(self, identity: ReplicaIdentity, up_since: datetime):
        self.identity = identity
        self.up_since = up_since.astimezone(UTC)
        self._lock = threading.Lock()
        self._current = _Window(window_start_of(self.up_since))
        self._finished: list[dict[str, Any]] = []  # rows of windows closed by add(), not yet rolled

    def add(self, at: datetime, latency_ms: float, tokens_in: int, tokens_out: int) -> None:
        """Count one answered request (at ``at``) in its window."""
        with self._lock:
            self._close_until(window_start_of(at))
            w = self._current
            w.latencies_ms.append(latency_ms)
            w.tokens_in += tokens_in
            w.tokens_out += tokens_out
            w.violations += latency_ms > self.identity.slo_ms

    def roll(self, now: datetime, *, final: bool = False) -> list[dict[str, Any]]:
        """Rows of the windows that ended by ``now`` (and, with ``final``, of the current one up to ``now``)."""
        with self._lock:
            self._close_until(window_start_of(now))
            rows, self._finished = self._finished, []
            if final:
                rows.append(self._row(self._current, end=now.astimezone(UTC)))
                self._current = _Window(self._current.start + timedelta(seconds=WINDOW_S))
                self.up_since = max(self.up_since, self._current.start)
            return rows

    def _close_until(self, new_start: datetime) -> None:
        # every window before new_start is over; idle minutes in between still cost the price
        while self._current.start < new_start:
            w = self._current
            self._finished.append(self._row(w, end=w.start + timedelta(seconds=WINDOW_S)))
            self._current = _Window(w.start + timedelta(seconds=WINDOW_S))

    def _row(self, w: _Window, *, end: datetime) -> dict[str, Any]:
        import numpy as np

        ident = self.identity
        window_end = min(
            w.start + timedelta(seconds=WINDOW_S), max(end, w.start)
        )  # the last one ends at the stop
        up_from = max(w.start, self.up_since)
        up_to = window_end
        hours = max((up_to - up_from).total_seconds(), 0.0) / 3600.0
        lat = np.asarray(w.latencies_ms, dtype=float)
        p50, p95, p99 = (
            (float(x) for x in np.percentile(lat, [50, 95, 99])) if lat.size else (None, None, None)
        )
        return {
            "window_start": w.start,
            "window_end": window_end,
            "location": ident.location,
            "market": ident.market,
            "requests": int(lat.size),
            "tokens": w.tokens_in + w.tokens_out,
            "slo_ms": ident.slo_ms,
            "p99_ms": p99,
            "slo_violations": w.violations,
            "usd": hours * ident.usd_per_hour,
            "usd_per_violation": ident.usd_per_violation,
            "endpoint": ident.endpoint,
            "replica_id": ident.replica_id,
            "tokens_in": w.tokens_in,
            "tokens_out": w.tokens_out,
            "p50_ms": p50,
            "p95_ms": p95,
            "replica_hours": hours,
            "usd_per_hour": ident.usd_per_hour,
        }


def record_usage(rows: list[dict[str, Any]], *, timeout_s: float = 0.0) -> int:
    """Record replica windows as ``raw.inference_usage`` facts (left in the fact lake when the warehouse is busy).

    Returns the number of rows handed over. Rows are idempotent facts (keyed by window start,
    location, market and replica id): recording a window twice writes it once.
    """
    if rows:
        record_facts({"raw.inference_usage": rows}, timeout_s=timeout_s)
    return len(rows)
