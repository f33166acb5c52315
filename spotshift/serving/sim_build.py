"""Inputs of the inference simulator: the request (flags of ``spotshift simulate-inference``) and
the world it builds (:func:`build_sim_inputs`: prices, traces and demand on the tick grid)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from spotshift.clock import parse_utc
from spotshift.errors import ConfigError
from spotshift.pricing.catalog import canonical_gpu_model
from spotshift.pricing.regions import provider_of, region_of
from spotshift.pricing.reserved import reserved_discount
from spotshift.serving.latency import LOCATION_SITES, rtt_ms
from spotshift.serving.scaling_types import ScalingParams
from spotshift.serving.sim_demand import SyntheticDemand, demand_on_grid, read_demand_csv
from spotshift.serving.sim_world import POLICIES, PolicyOutcome, SimInputs, forecasts_for
from spotshift.serving.slo import ServingProfile
from spotshift.simulate.market import build_market, choose_instance, default_start
from spotshift.simulate.run import load_history
from spotshift.simulate.traces import generate_traces, load_trace_dir


@dataclass(frozen=True)
class InferenceSimRequest:
    """What the user asked for (flags of ``spotshift simulate-inference``)."""

    profile: ServingProfile = field(default_factory=ServingProfile)
    prices: str | None = None
    traces_dir: str | None = None
    demand_csv: str | None = None
    synthetic: SyntheticDemand = field(default_factory=SyntheticDemand)
    instance: str | None = None
    start: str | None = None
    days: float = 7.0
    tick_s: int = 60
    regions: Sequence[str] = ()
    seed: int = 0
    trace_gap_seconds: int = 600
    policies: tuple[str, ...] = POLICIES
    params: ScalingParams = field(default_factory=ScalingParams)
    spothedge_extra: int = 1


DEFAULT_INSTANCE = "a2-ultragpu-1g"  # one A100-80GB: a common single-GPU LLM serving instance


@dataclass
class InferenceSimReport:
    """The scenario as run and one outcome per policy."""

    scenario: dict[str, Any]
    policies: dict[str, PolicyOutcome]

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document."""
        return {"policies": {k: v.to_dict() for k, v in self.policies.items()}, "scenario": self.scenario}


def _check(req: InferenceSimRequest) -> None:
    """One-line errors for flags no window can satisfy."""
    if req.tick_s <= 0 or 86_400 % req.tick_s:
        raise ConfigError(f"--tick-seconds must divide a day, got {req.tick_s}")
    if req.policies and (bad := [p for p in req.policies if p not in POLICIES]):
        raise ConfigError(f"--policies: unknown {', '.join(bad)} (known: {', '.join(POLICIES)})")
    if req.spothedge_extra < 0:
        raise ConfigError("--spothedge-extra must be >= 0")


def build_sim_inputs(req: InferenceSimRequest) -> tuple[SimInputs, dict[str, Any]]:
    """Load prices, traces and demand and lay them on the tick grid (reusing ``spotshift.simulate``)."""
    import numpy as np

    _check(req)
    history, prices_desc = load_history(req.prices, req.seed)
    types = set(history["instance_type"].to_list())
    wanted = req.instance or (DEFAULT_INSTANCE if DEFAULT_INSTANCE in types else None)
    instance = choose_instance(history, wanted)
    times: list[datetime] | None = None
    if req.demand_csv:
        users, times, rates = read_demand_csv(req.demand_csv, req.profile.tokens_per_request)
        start = times[0] if not req.start else parse_utc(req.start)
        span_days = (times[-1] - times[0]).total_seconds() / 86_400.0 + req.tick_s / 86_400.0
        days = span_days if not req.start else req.days
    else:
        start = parse_utc(req.start) if req.start else default_start(history, instance)
        days = req.days
    if not (days > 0 and math.isfinite(days)):
        raise ConfigError(f"--days must be > 0, got {days}")
    ticks = int(round(days * 86_400 / req.tick_s))
    if ticks < 2:
        raise ConfigError("the window is shorter than two ticks")
    hours = ticks * req.tick_s / 3600.0
    m = _market_on_grid(req, history, instance, start, ticks, hours)
    locations, spot, od, reserved, avail, market = m.locations, m.spot, m.od, m.reserved, m.avail, m.market
    skipped, traces_desc = m.skipped, m.traces_desc
    if req.demand_csv:
        demand = demand_on_grid(times or [], rates, start, ticks, req.tick_s)
        demand_desc = req.demand_csv
    else:
        users, demand = req.synthetic.generate(start, ticks, req.tick_s)
        demand_desc = (
            f"synthetic(seed={req.synthetic.seed}, peak_tokens_s={req.synthetic.peak_tokens_s:g}, users="
            + ",".join(f"{u}={s:g}" for u, s in sorted(req.synthetic.users.items()))
            + ")"
        )
    rtt = np.array([[rtt_ms(u, loc) for loc in locations] for u in users])
    sim = SimInputs(
        start=start,
        tick_s=req.tick_s,
        locations=locations,
        users=list(users),
        spot=spot,
        on_demand=od,
        reserved=reserved,
        available=avail,
        epoch=np.asarray(market.epoch[:ticks]),
        demand=demand,
        forecast=forecasts_for(demand, req.tick_s),
        rtt=rtt,
        profile=req.profile,
    )
    scenario = _scenario(req, sim, instance, market, skipped, prices_desc, traces_desc, demand_desc)
    return sim, scenario


@dataclass
class _Market:
    """Prices and availability on the tick grid for the locations the latency table knows."""

    locations: list[str]
    skipped: list[str]
    spot: Any
    od: Any
    reserved: Any
    avail: Any
    market: Any
    traces_desc: str


def _market_on_grid(
    req: InferenceSimRequest, history: Any, instance: str, start: datetime, ticks: int, hours: float
) -> _Market:
    """The history and the traces (given or generated) laid on the grid (``spotshift.simulate``)."""
    import numpy as np

    probe = build_market(
        history, instance, start=start, hours=1.0, gap_seconds=3600, traces={}, regions=req.regions or None
    )
    locations = [loc for loc in probe.locations if region_of(loc) in LOCATION_SITES]
    skipped = sorted(set(probe.locations) - set(locations))
    if not locations:
        raise ConfigError(
            f"none of the {len(probe.locations)} locations of the history is in the latency table"
        )
    if req.traces_dir:
        traces = load_trace_dir(req.traces_dir, locations)
        traces_desc = req.traces_dir
    else:
        traces = generate_traces(locations, hours, seed=req.seed, gap_seconds=req.trace_gap_seconds)
        traces_desc = f"generated(seed={req.seed}, gap_seconds={req.trace_gap_seconds})"
    market = build_market(
        history,
        instance,
        start=start,
        hours=hours,
        gap_seconds=req.tick_s,
        traces=traces,
        regions=[f"{loc}" for loc in locations],
    )
    keep = [market.locations.index(loc) for loc in locations]
    spot = np.array([market.spot[i] for i in keep], dtype=float).T[:ticks]
    od = np.array([market.on_demand[i] for i in keep], dtype=float).T[:ticks]
    avail = np.array([market.available[i] for i in keep], dtype=bool).T[:ticks]
    disc = np.array([reserved_discount(provider_of(loc)) for loc in locations])
    reserved = od * (1.0 - disc[None, :])
    if np.isnan(od).all():
        raise ConfigError(
            f"no on-demand price for {instance} from {start.isoformat()}; choose another --start"
        )
    return _Market(locations, skipped, spot, od, reserved, avail, market, traces_desc)


def _scenario(
    req: InferenceSimRequest,
    sim: SimInputs,
    instance: str,
    market: Any,
    skipped: list[str],
    prices_desc: str,
    traces_desc: str,
    demand_desc: str,
) -> dict[str, Any]:
    """The scenario as run (the ``--json`` document's ``scenario``)."""
    return {
        "instance_type": instance,
        "gpu_model": canonical_gpu_model(market.gpu_model) or market.gpu_model,
        "start": sim.start.isoformat(),
        "days": sim.ticks * req.tick_s / 86_400.0,
        "tick_s": req.tick_s,
        "locations": sim.locations,
        "skipped_locations": skipped,
        "users": list(sim.users),
        "prices": prices_desc,
        "traces": traces_desc,
        "demand": demand_desc,
        "profile": req.profile.to_dict(),
        "params": req.params.to_dict(),
        "spothedge_extra": req.spothedge_extra,
        "seed": req.seed,
        "spot_available_share": {
            loc: float(sim.available[:, i].mean()) for i, loc in enumerate(sim.locations)
        },
    }
