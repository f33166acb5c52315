"""Assemble a simulation from user inputs: price history, instance, start, traces; run; report.

``spotshift simulate`` and ``bench/bench_simulate.py`` call :func:`run_simulation`.

Prices: ``prices`` (a CSV of the shape of ``../shared/data/gcp_gpu_prices_2022_2024.csv``);
by default the real GCP history when present (:func:`spotshift.home.shared_data_file`), else the
generated market :func:`spotshift.pricing.synthetic.synthetic_history`.
Traces: one JSON trace per location from ``traces_dir`` (see
:func:`spotshift.simulate.traces.load_trace_dir`), else generated per location for ``seed``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from spotshift.clock import as_utc, parse_utc
from spotshift.errors import ConfigError
from spotshift.home import shared_data_file
from spotshift.placement.params import PlacementParams
from spotshift.pricing.history import read_price_history
from spotshift.pricing.regions import split_location
from spotshift.pricing.synthetic import synthetic_history
from spotshift.simulate.engine import (
    POLICIES,
    PolicyResult,
    Scenario,
    default_home,
    scenario_summary,
    simulate,
)
from spotshift.simulate.market import Market, build_market, choose_instance, default_start
from spotshift.simulate.traces import DEFAULT_GAP_SECONDS, generate_traces, load_trace_dir

REAL_HISTORY = "gcp_gpu_prices_2022_2024.csv"


@dataclass(frozen=True)
class SimulationRequest:
    """What the user asked for (flags of ``spotshift simulate``)."""

    scenario: Scenario = field(default_factory=Scenario)
    prices: str | None = None
    instance: str | None = None
    start: str | None = None
    traces_dir: str | None = None
    trace_map: Mapping[str, str] = field(default_factory=dict)
    seed: int = 0
    regions: Sequence[str] = ()
    gap_seconds: int = DEFAULT_GAP_SECONDS
    policies: tuple[str, ...] = POLICIES
    params: PlacementParams | None = None


@dataclass
class SimulationReport:
    """The scenario as run and one result per policy."""

    scenario: dict[str, Any]
    policies: dict[str, PolicyResult]
    market: Market
    #: what the user should know before trusting the figures (e.g. prices carried past the history)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document: ``{"policies": {name: {...}}, "scenario": {...}, "warnings": [...]}``."""
        return {
            "policies": {k: v.to_dict() for k, v in self.policies.items()},
            "scenario": self.scenario,
            "warnings": self.warnings,
        }


def load_history(prices: str | None, seed: int = 0) -> tuple[Any, str]:
    """(price history frame, description of where it came from); ``seed`` seeds the generated market."""
    if prices:
        return read_price_history(prices), str(prices)
    real = shared_data_file(REAL_HISTORY)
    if real is not None:
        return read_price_history(real), str(real)
    return synthetic_history(seed=seed), f"synthetic(seed={seed})"


def parse_trace_map(text: str | None) -> dict[str, str]:
    """``region=file,region=file`` -> dict; :class:`ConfigError` for a malformed entry."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        region, sep, ref = part.partition("=")
        if not sep or not region.strip() or not ref.strip():
            raise ConfigError(f"--trace-map entry {part!r} is not region=file")
        out[region.strip()] = ref.strip()
    return out


def _qualify(history: Any, names: Mapping[str, str], what: str) -> dict[str, str]:
    """Trace-map keys may name a region (``us-central1``) or a location (``gcp/us-central1``)."""
    locs = {
        f"{p}/{r}" for p, r in zip(history["provider"].to_list(), history["region"].to_list(), strict=True)
    }
    by_region: dict[str, list[str]] = {}
    for loc in locs:
        by_region.setdefault(split_location(loc, zone=True)[1], []).append(loc)
    out = {}
    for key, ref in names.items():
        if key in locs:
            out[key] = ref
        elif len(by_region.get(key, [])) == 1:
            out[by_region[key][0]] = ref
        else:
            raise ConfigError(f"{what}: {key!r} is not a region of the price history")
    return out


def run_simulation(req: SimulationRequest) -> SimulationReport:
    """Load, build the market, run every requested policy; deterministic for ``req.seed``."""
    history, prices_desc = load_history(req.prices, req.seed)
    instance = choose_instance(history, req.instance)
    start: datetime = parse_utc(req.start) if req.start else default_start(history, instance)
    sc = req.scenario
    warnings = _check_start(history, instance, start, sc.deadline_hours)
    if sc.data_location:
        sc = replace(
            sc, data_location=next(iter(_qualify(history, {sc.data_location: ""}, "--data-location")))
        )
    horizon = max(sc.deadline_hours, sc.work_hours) + sc.work_hours + 24.0
    probe = build_market(
        history, instance, start=start, hours=1.0, gap_seconds=3600, traces={}, regions=req.regions or None
    )
    locations = probe.locations
    if req.traces_dir:
        traces = load_trace_dir(req.traces_dir, locations, _qualify(history, req.trace_map, "--trace-map"))
        gap = min(t.gap_seconds for t in traces.values())
        traces_desc = str(Path(req.traces_dir))
    else:
        if req.trace_map:
            raise ConfigError("--trace-map needs --traces DIR")
        gap = req.gap_seconds
        traces = generate_traces(locations, horizon, seed=req.seed, gap_seconds=gap)
        traces_desc = f"generated(seed={req.seed}, gap_seconds={gap})"
    market = build_market(
        history,
        instance,
        start=start,
        hours=horizon,
        gap_seconds=gap,
        traces=traces,
        regions=req.regions or None,
    )
    if all(all(v != v for v in row) for row in market.spot):
        raise ConfigError(
            f"no spot price for {instance} between {start.isoformat()} and "
            f"{(start + timedelta(hours=horizon)).isoformat()}; choose another --start or --instance"
        )
    results = simulate(market, sc, policies=req.policies, params=req.params)
    home = sc.data_location or default_home(market)
    summary = scenario_summary(market, sc, home, req.seed, prices_desc, traces_desc)
    return SimulationReport(summary, results, market, warnings)


def _check_start(history: Any, instance: str, start: datetime, deadline_hours: float) -> list[str]:
    """Refuse a start outside the price history of ``instance``; warn when the deadline runs past its end."""
    import polars as pl

    times = history.filter(pl.col("instance_type") == instance)["observed_at"]
    first, last = as_utc(times.min()), as_utc(times.max())
    if start < first or start > last:
        raise ConfigError(
            f"--start {start.isoformat()} is outside the price history of {instance} "
            f"({first.isoformat()} to {last.isoformat()}): no prices to simulate on"
        )
    end = start + timedelta(hours=deadline_hours)
    if end > last:
        return [
            f"the deadline ({end.isoformat()}) is past the end of the price history ({last.isoformat()}): "
            "the last prices are carried forward"
        ]
    return []
