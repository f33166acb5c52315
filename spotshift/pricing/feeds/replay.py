"""The ``replay`` feed (embedded default): a price-history CSV replayed on the shared virtual clock.

At virtual time ``t`` the feed returns, for every (provider, region, zone, instance type), the
newest row with ``observed_at <= t`` — and drops instance types whose newest row is more than
``delist_after`` older than the newest observation (the provider stopped listing them).

The feed's own clock (:meth:`ReplayFeed.clock`) is ``t`` while ``t`` lies inside the history and
stops at the history's last observation after it: polled at a time past its end (the real date on
a fresh home, with no virtual clock), the feed serves its last snapshot as a frozen market with
the true observation dates, never relabelled as today's prices, and the freshness check measures
quote age on that clock. :meth:`ReplayFeed.describe` says so in one line (``spotshift quotes
poll`` prints it).

Which history (:func:`resolve_history`): an explicit path (``--prices FILE``), else the
``SPOTSHIFT_PRICES`` variable, else the real GCP history in ``../shared/data`` when present,
else the generated market of :mod:`spotshift.pricing.synthetic`.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from spotshift.home import shared_data_file
from spotshift.pricing.feeds.base import PriceFeed
from spotshift.pricing.history import read_price_history
from spotshift.pricing.normalize import raw_price_schema
from spotshift.pricing.synthetic import synthetic_history

REAL_HISTORY = "gcp_gpu_prices_2022_2024.csv"
SNAPSHOT_KEY = ("provider", "region", "zone", "instance_type")


@dataclass(frozen=True)
class History:
    """A loaded price history and where it came from (a path, or ``synthetic(seed=0)``)."""

    frame: Any
    origin: str

    @property
    def is_synthetic(self) -> bool:
        """True for the generated market."""
        return self.origin.startswith("synthetic")


@functools.lru_cache(maxsize=4)
def _read_cached(path: str, mtime_ns: int, size: int) -> Any:
    return read_price_history(path)


def load_history_file(path: str | Path) -> Any:
    """``read_price_history(path)``, cached per process while the file is unchanged."""
    p = Path(path)
    if not p.is_file():
        return read_price_history(p)  # raises the one-line InputError
    st = p.stat()
    return _read_cached(str(p.resolve()), st.st_mtime_ns, st.st_size)


def resolve_history(path: str | Path | None = None) -> History:
    """The history commands and assets replay (see module docstring for the order)."""
    chosen = str(path) if path else os.environ.get("SPOTSHIFT_PRICES", "")
    if chosen:
        return History(load_history_file(chosen), str(Path(chosen).expanduser()))
    real = shared_data_file(REAL_HISTORY)
    if real is not None:
        return History(load_history_file(real), str(real))
    return History(_synthetic_cached(), "synthetic(seed=0)")


@functools.cache
def _synthetic_cached() -> Any:
    return synthetic_history()


def snapshot_at(history: Any, now: datetime, delist_after: timedelta = timedelta(days=7)) -> Any:
    """History rows in effect at ``now``: newest row per :data:`SNAPSHOT_KEY` with ``observed_at <= now``.

    Keys whose newest row is older than ``newest observation - delist_after`` are dropped.
    Empty frame when ``now`` is before the first observation.
    """
    import polars as pl

    past = history.filter(pl.col("observed_at") <= now)
    if past.height == 0:
        return past
    newest = past["observed_at"].max()
    latest = past.sort("observed_at", maintain_order=True).unique(
        subset=list(SNAPSHOT_KEY), keep="last", maintain_order=True
    )
    return latest.filter(pl.col("observed_at") >= newest - delist_after)


def history_to_raw(history: Any) -> Any:
    """History rows (wide: on-demand and spot columns) -> raw price frame (long: one row per market)."""
    import polars as pl

    common = [
        pl.col("provider"),
        pl.col("region"),
        pl.col("zone").fill_null(""),
        pl.col("instance_type"),
    ]
    tail = [
        pl.lit("USD").alias("currency"),
        pl.col("observed_at"),
        pl.col("source"),
        pl.col("gpu_model").alias("gpu_model_hint"),
    ]
    on_demand = history.select(
        *common, pl.lit("on_demand").alias("market"), pl.col("ondemand_hour").alias("price_per_hour"), *tail
    )
    spot = history.filter(pl.col("spot_hour").is_not_null()).select(
        *common, pl.lit("spot").alias("market"), pl.col("spot_hour").alias("price_per_hour"), *tail
    )
    schema = raw_price_schema()
    return pl.concat([on_demand, spot]).select([pl.col(c).cast(t) for c, t in schema.items()])


class ReplayFeed(PriceFeed):
    """Replays a history (path, DataFrame, or the default of :func:`resolve_history`)."""

    name = "replay"

    def __init__(
        self,
        history: str | Path | Any | None = None,
        *,
        delist_after: timedelta = timedelta(days=7),
    ) -> None:
        if history is None or isinstance(history, (str, Path)):
            resolved = resolve_history(history)
            self.frame, self.origin = resolved.frame, resolved.origin
        else:
            self.frame, self.origin = history, "dataframe"
        self.delist_after = delist_after

    def fetch(self, now: datetime) -> Any:
        """Raw prices of the snapshot in effect at ``now``."""
        return history_to_raw(snapshot_at(self.frame, now, self.delist_after))

    def clock(self, now: datetime) -> datetime:
        """``now`` inside the history; its last observation after it (the replay has ended)."""
        span = self.time_range()
        if span is None or now <= span[1]:
            return now
        return span[1]

    def describe(self, now: datetime) -> str:
        """Which history is replayed and, past its end, that the market is frozen at its last week."""
        span = self.time_range()
        name = Path(self.origin).name if not self.origin.startswith("synthetic") else self.origin
        if span is None:
            return f"replaying {name}: the history is empty"
        first, last = (t.date().isoformat() for t in span)
        if now < span[0]:
            return (
                f"replaying {name} ({first} .. {last}): the clock ({now.date().isoformat()}) is before "
                "its first observation, so there are no prices yet"
            )
        if now > span[1]:
            return (
                f"replaying {name} ({first} .. {last}): the history ended before now "
                f"({now.date().isoformat()}), so the feed serves its last week as a frozen market, "
                f"dated {last}; for live prices set SPOTSHIFT_PRICE_FEED=aws|gcp|azure"
            )
        return f"replaying {name} ({first} .. {last}) at {now.isoformat()}"

    def time_range(self) -> tuple[datetime, datetime] | None:
        """First and last ``observed_at`` of the history (``None`` when empty)."""
        if self.frame.height == 0:
            return None
        return self.frame["observed_at"].min(), self.frame["observed_at"].max()
