"""Demand for the inference simulator: the synthetic daily curve per user region, or a CSV of
observed rates, laid on the simulator's tick grid."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from spotshift.clock import parse_utc
from spotshift.errors import ConfigError, InputError

#: UTC offsets (hours) of the user regions' population centres, for the synthetic daily curve
UTC_OFFSETS = {
    "us-east": -5.0,
    "us-west": -8.0,
    "sa-east": -3.0,
    "eu-west": 0.0,
    "eu-central": 1.0,
    "ap-south": 5.5,
    "ap-southeast": 8.0,
    "ap-northeast": 9.0,
    "au-east": 10.0,
}
DEFAULT_USERS = {"us-east": 0.4, "us-west": 0.2, "eu-west": 0.25, "ap-northeast": 0.15}


@dataclass(frozen=True)
class SyntheticDemand:
    """A documented, seeded daily demand curve per user region (tokens/s).

    ``rate = peak x share x diurnal(local hour) x weekly(local day) x noise``: diurnal is
    ``0.55 - 0.35 cos(2 pi (h - 3) / 24)`` (trough 0.2 at 03:00, peak 0.9 at 15:00 local, the shape
    of interactive web traffic), weekends at ``weekend_factor``, noise lognormal per tick with
    ``noise_sigma`` plus a slowly varying AR(1) component (``drift_sigma``, 1-hour memory), so
    forecasts have something to miss. Deterministic for ``seed``.
    """

    users: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_USERS))
    peak_tokens_s: float = 60_000.0
    weekend_factor: float = 0.8
    noise_sigma: float = 0.05
    drift_sigma: float = 0.08
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.users:
            raise ConfigError("demand: no user regions")
        for u, share in self.users.items():
            if u not in UTC_OFFSETS:
                raise ConfigError(f"demand: user region {u!r} is not one of {', '.join(UTC_OFFSETS)}")
            if not (isinstance(share, (int, float)) and math.isfinite(share) and share > 0):
                raise ConfigError(f"demand: share of {u} must be > 0, got {share!r}")
        if not (self.peak_tokens_s > 0 and math.isfinite(self.peak_tokens_s)):
            raise ConfigError("demand: peak tokens/s must be > 0")

    def generate(self, start: datetime, ticks: int, tick_s: int) -> tuple[list[str], Any]:
        """(user regions, array ``[ticks, regions]`` of tokens/s)."""
        import numpy as np

        users = sorted(self.users)
        total = sum(self.users.values())
        t = np.arange(ticks) * tick_s + start.timestamp()
        out = np.empty((ticks, len(users)))
        for j, u in enumerate(users):
            rng = np.random.default_rng([self.seed, j])
            local = t / 3600.0 + UTC_OFFSETS[u]
            hour = np.mod(local, 24.0)
            weekday = np.floor(local / 24.0 + 3).astype(int) % 7  # 1970-01-01 was a Thursday (3)
            curve = 0.55 - 0.35 * np.cos(2 * np.pi * (hour - 3.0) / 24.0)
            curve = curve * np.where(weekday >= 5, self.weekend_factor, 1.0)
            phi = math.exp(-tick_s / 3600.0)
            shocks = rng.normal(0.0, self.drift_sigma * math.sqrt(1 - phi * phi), ticks)
            drift = np.empty(ticks)
            level = rng.normal(0.0, self.drift_sigma)
            for i in range(ticks):
                level = phi * level + shocks[i]
                drift[i] = level
            noise = rng.normal(0.0, self.noise_sigma, ticks)
            out[:, j] = self.peak_tokens_s * self.users[u] / total * curve * np.exp(drift + noise)
        return users, out


def read_demand_csv(path: str, tokens_per_request: float) -> tuple[list[str], list[datetime], Any]:
    """A demand CSV: ``timestamp,user_region,tokens_s`` (or ``requests_s``), any order.

    Returns (user regions, sorted distinct timestamps, array ``[times, regions]`` of tokens/s; a
    region without a row at a time holds its previous rate, 0 before its first).
    """
    import csv

    import numpy as np

    rows: list[tuple[datetime, str, float]] = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            rate_col = "tokens_s" if "tokens_s" in cols else ("requests_s" if "requests_s" in cols else None)
            if "timestamp" not in cols or "user_region" not in cols or rate_col is None:
                raise InputError(
                    f"demand {path}: needs columns timestamp, user_region and tokens_s (or requests_s)"
                )
            for i, row in enumerate(reader):
                where = f"demand {path} line {i + 2}"
                try:
                    when = parse_utc((row["timestamp"] or "").strip())
                except ConfigError:
                    raise InputError(f"{where}: timestamp {row['timestamp']!r} is not ISO-8601") from None
                u = (row["user_region"] or "").strip()
                if u not in UTC_OFFSETS:
                    raise InputError(f"{where}: user region {u!r} is not one of {', '.join(UTC_OFFSETS)}")
                try:
                    rate = float(row[rate_col])
                except (TypeError, ValueError):
                    raise InputError(f"{where}: {rate_col} {row[rate_col]!r} is not a number") from None
                if not math.isfinite(rate) or rate < 0:
                    raise InputError(f"{where}: {rate_col} {rate!r} is not a rate >= 0")
                rows.append((when, u, rate * (tokens_per_request if rate_col == "requests_s" else 1.0)))
    except FileNotFoundError:
        raise InputError(f"demand {path}: no such file") from None
    except UnicodeDecodeError:
        raise InputError(f"demand {path}: not UTF-8 text") from None
    if not rows:
        raise InputError(f"demand {path}: no rows")
    users = sorted({u for _, u, _ in rows})
    times = sorted({w for w, _, _ in rows})
    index = {w: i for i, w in enumerate(times)}
    arr = np.full((len(times), len(users)), np.nan)
    for w, u, r in rows:
        arr[index[w], users.index(u)] = r
    for j in range(len(users)):  # hold the previous rate
        last = 0.0
        for i in range(len(times)):
            if np.isnan(arr[i, j]):
                arr[i, j] = last
            last = arr[i, j]
    return users, times, arr


def demand_on_grid(times: Sequence[datetime], rates: Any, start: datetime, ticks: int, tick_s: int) -> Any:
    """Rates at given times held until the next time, sampled on the tick grid."""
    import numpy as np

    stamps = np.array([t.timestamp() for t in times])
    grid = start.timestamp() + np.arange(ticks) * tick_s
    idx = np.searchsorted(stamps, grid, side="right") - 1
    out = np.where(idx[:, None] >= 0, rates[np.maximum(idx, 0)], 0.0)
    return out
