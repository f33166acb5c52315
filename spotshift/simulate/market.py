"""The simulated market: one instance type's spot and on-demand prices per location on a tick grid,
and spot availability per location from traces.

Prices come from a price history (:func:`spotshift.pricing.history.read_price_history`): at each
tick a location offers the last price observed at or before that tick (a null spot price means
spot is not offered there then; after the history ends the last prices hold). Several rows for
one location and time (zones) count with their lowest price. Availability comes from one trace per
location (:mod:`spotshift.simulate.traces`); a location without spot capacity at a tick preempts a
job running there on spot. On-demand capacity is always available.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from spotshift.errors import ConfigError, InputError
from spotshift.pricing.quote import NormalizedGPUQuote
from spotshift.pricing.regions import split_location
from spotshift.simulate.traces import AvailabilityTrace

DEFAULT_INSTANCE = "a2-highgpu-8g"


@dataclass
class Market:
    """Prices and availability on a regular tick grid starting at ``start``.

    ``spot[i][t]`` / ``on_demand[i][t]``: USD per instance-hour of ``locations[i]`` at tick ``t``
    (``nan`` when not offered). ``available[i][t]``: spot capacity exists. ``epoch[t]``: increments
    whenever any price changes (the simulator's quote snapshot id).
    """

    instance_type: str
    gpu_model: str
    gpu_count: int
    locations: list[str]
    start: datetime
    gap_hours: float
    spot: list[list[float]]
    on_demand: list[list[float]]
    available: list[list[bool]]
    epoch: list[int]
    epoch_start: list[datetime]

    @property
    def n_ticks(self) -> int:
        """Ticks in the grid."""
        return len(self.epoch)

    def time_at(self, tick: int) -> datetime:
        """UTC time of a tick."""
        return self.start + timedelta(hours=tick * self.gap_hours)

    def spot_available(self, i: int, t: int) -> bool:
        """Spot is offered (has a price) and has capacity at location ``i``, tick ``t``."""
        return self.available[i][t] and not math.isnan(self.spot[i][t])

    def quotes(self, t: int) -> list[NormalizedGPUQuote]:
        """Every quote of tick ``t`` (spot where priced, on-demand where priced) as contract quotes.

        The simulator compares one instance type across locations, so the seed's bandwidth penalties
        would scale every quote alike; quotes carry 200 Gbit/s and 10 Gbit/s (no penalty) and
        topology score 10 so the effective GPU-hour is the price per GPU.
        """
        out = []
        when = self.epoch_start[self.epoch[t]]
        for i, loc in enumerate(self.locations):
            provider, region = split_location(loc, zone=True)
            for market, series in (("spot", self.spot), ("on_demand", self.on_demand)):
                price = series[i][t]
                if math.isnan(price):
                    continue
                out.append(
                    NormalizedGPUQuote(
                        provider=provider,
                        region=region,
                        zone="",
                        instance_type=self.instance_type,
                        gpu_model=self.gpu_model,
                        gpu_count=self.gpu_count,
                        market=market,
                        price_usd_hour=price,
                        effective_gpu_hour_usd=price / self.gpu_count,
                        net_gbps=200.0,
                        storage_gbps=10.0,
                        topology_score=10.0,
                        observed_at=when,
                        source="simulate",
                    )
                )
        return out


def choose_instance(history: Any, wanted: str | None) -> str:
    """``wanted`` when the history has it; else :data:`DEFAULT_INSTANCE` (or the only type) when
    present; else the instance type with the most GPUs, preferring those priced for spot in two or
    more locations."""
    import polars as pl

    types = sorted(set(history["instance_type"].to_list()))
    if wanted:
        if wanted not in types:
            shown = ", ".join(types[:12]) + (" ..." if len(types) > 12 else "")
            raise ConfigError(f"instance type {wanted!r} is not in the price history (have: {shown})")
        return wanted
    if DEFAULT_INSTANCE in types:
        return DEFAULT_INSTANCE
    if len(types) == 1:
        return types[0]
    spot = (
        history.filter(pl.col("spot_hour").is_not_null())
        .with_columns((pl.col("provider") + "/" + pl.col("region")).alias("loc"))
        .group_by("instance_type")
        .agg(
            pl.col("loc").n_unique().alias("locs"),
            pl.col("gpu_count").max().alias("gpus"),
            pl.len().alias("n"),
        )
        .with_columns((pl.col("locs") >= 2).alias("multi"))
        .sort(["multi", "gpus", "n", "instance_type"], descending=[True, True, True, False])
    )
    if spot.height == 0:
        raise ConfigError("price history has no spot price for any instance type; pass --instance")
    return str(spot["instance_type"][0])


def default_start(history: Any, instance_type: str) -> datetime:
    """First observation time at which at least two locations price spot for ``instance_type``."""
    import polars as pl

    df = (
        history.filter((pl.col("instance_type") == instance_type) & pl.col("spot_hour").is_not_null())
        .with_columns((pl.col("provider") + "/" + pl.col("region")).alias("loc"))
        .group_by("loc")
        .agg(pl.col("observed_at").min().alias("first"))
        .sort("first")
    )
    if df.height == 0:
        raise ConfigError(f"price history has no spot price for {instance_type}")
    return df["first"][min(1, df.height - 1)]


def build_market(
    history: Any,
    instance_type: str,
    *,
    start: datetime,
    hours: float,
    gap_seconds: int,
    traces: Mapping[str, AvailabilityTrace],
    regions: Sequence[str] | None = None,
) -> Market:
    """Lay ``history`` (a :func:`read_price_history` frame) for one instance type on a tick grid.

    ``regions``: shell patterns matched against ``provider/region`` and ``region`` (None: all).
    ``traces``: one per location (missing locations: spot always available).
    """
    import polars as pl

    df = history.filter(pl.col("instance_type") == instance_type)
    if df.height == 0:
        raise ConfigError(f"instance type {instance_type!r} is not in the price history")
    df = df.with_columns((pl.col("provider") + "/" + pl.col("region")).alias("loc"))
    if regions:
        df = _keep_regions(df, regions)
    gpu_models = sorted(set(df["gpu_model"].to_list()))
    gpu_counts = sorted(set(df["gpu_count"].to_list()))
    if len(gpu_counts) != 1:
        raise InputError(f"price history: {instance_type} has several GPU counts {gpu_counts}")
    df = (
        df.group_by(["loc", "observed_at"])
        .agg(pl.col("spot_hour").min(), pl.col("ondemand_hour").min())
        .sort(["loc", "observed_at"])
    )
    locations = sorted(set(df["loc"].to_list()))
    gap_h = gap_seconds / 3600.0
    n = int(math.ceil(hours / gap_h - 1e-9))
    ticks = [start + timedelta(seconds=k * gap_seconds) for k in range(n)]
    spot_m, od_m = _price_grid(df, locations, start, n, gap_seconds)
    available = []
    for loc in locations:
        tr = traces.get(loc)
        available.append(tr.resampled(gap_seconds, n * gap_h) if tr is not None else [True] * n)
    epoch, changed = _epochs(spot_m, od_m, n, bool(locations))
    return Market(
        instance_type=instance_type,
        gpu_model=gpu_models[0],
        gpu_count=int(gpu_counts[0]),
        locations=locations,
        start=start,
        gap_hours=gap_h,
        spot=[row.tolist() for row in spot_m],
        on_demand=[row.tolist() for row in od_m],
        available=available,
        epoch=epoch,
        epoch_start=[ticks[k] for k in changed],
    )


def _keep_regions(df: Any, regions: Sequence[str]) -> Any:
    """The rows of ``df`` whose location matches one of the shell patterns ``regions``."""
    import polars as pl

    locs_all = sorted(set(df["loc"].to_list()))
    keep = [
        loc
        for loc in locs_all
        if any(
            fnmatch.fnmatchcase(loc, pat) or fnmatch.fnmatchcase(split_location(loc, zone=True)[1], pat)
            for pat in regions
        )
    ]
    if not keep:
        raise ConfigError(f"--regions {','.join(regions)} matches none of the {len(locs_all)} locations")
    return df.filter(pl.col("loc").is_in(keep))


def _price_grid(df: Any, locations: list[str], start: datetime, n: int, gap_seconds: int) -> tuple[Any, Any]:
    """(spot, on-demand) prices per location on ``n`` ticks from ``start``: the last observation at or
    before each tick (searchsorted on epoch microseconds, vectorised); NaN before the first."""
    import numpy as np
    import polars as pl

    t0_us = int(start.timestamp() * 1_000_000)
    grid_us = t0_us + np.arange(n, dtype=np.int64) * int(gap_seconds * 1_000_000)
    spot_m = np.full((len(locations), n), np.nan)
    od_m = np.full((len(locations), n), np.nan)
    for i, loc in enumerate(locations):
        sub = df.filter(pl.col("loc") == loc)
        times_us = sub["observed_at"].dt.epoch("us").to_numpy()
        s_vals = sub["spot_hour"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
        o_vals = sub["ondemand_hour"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
        j = np.searchsorted(times_us, grid_us, side="right") - 1
        seen = j >= 0
        spot_m[i, seen] = s_vals[j[seen]]
        od_m[i, seen] = o_vals[j[seen]]
    return spot_m, od_m


def _epochs(spot_m: Any, od_m: Any, n: int, any_location: bool) -> tuple[list[int], list[int]]:
    """(epoch of each tick, ticks where an epoch starts): a new epoch whenever any price changes
    (NaN equal to NaN)."""
    import numpy as np

    both = np.concatenate([spot_m, od_m]) if any_location else np.zeros((0, n))
    if n:
        prev, cur = both[:, :-1], both[:, 1:]
        same = (prev == cur) | (np.isnan(prev) & np.isnan(cur))
        changed = np.concatenate([[True], ~same.all(axis=0)])
    else:
        changed = np.zeros(0, dtype=bool)
    epoch_arr = np.cumsum(changed) - 1
    return epoch_arr.tolist(), np.flatnonzero(changed).tolist()
