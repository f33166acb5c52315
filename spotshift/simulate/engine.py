"""The policy simulator: replay a market for one described job under several placement policies.

Every policy runs the same job (``work_hours`` instance-hours of work, due ``deadline_hours`` after
``start``) on the same :class:`~spotshift.simulate.market.Market`, tick by tick, with the same
accounting:

* **Compute**: a running placement is billed its price for the tick; work progresses except during
  *overhead* (changeover, and waiting for copies on a cold start).
* **Checkpoints** every ``checkpoint_interval_hours`` of work, written in the region the job runs in.
  A preemption (spot capacity gone at a tick) loses the work since the last checkpoint.
* **Starting somewhere** copies what is missing there (dataset, latest checkpoint) from where it is,
  billed at :mod:`spotshift.pricing.egress` rates. With *full copies* (SkyPilot-like) every start
  outside the data's home region copies the whole dataset, and the checkpoint unless it is already
  there; with *delta sync* replicas persist, so a region copies the dataset once and a stale
  checkpoint receives only ``checkpoint_delta_fraction`` of it.
* **A cold start** (first start, or after a preemption) waits ``changeover + copy time`` at the new
  price. **A planned move** (the job still runs) pre-stages copies while the source runs: the
  changeover is billed at the source's price and the work since the last checkpoint is redone —
  the same terms the migration economics charge.
* **Deadline safety net**: every spot policy switches to on-demand (in the region holding the
  latest checkpoint) when :func:`spotshift.placement.deadline.deadline_requires_on_demand` says
  so, and stays there; the ``spotshift`` policy gets this from :func:`decide` itself.

Policies: ``on_demand``, ``stay_first_spot``, ``greedy_full``, ``greedy_delta``, ``uniform_progress``
(Can't Be Late, single region), ``spotshift`` (:func:`spotshift.placement.economics.decide`, the
function ``price_change_sensor`` calls), ``hindsight`` (a lower bound, see :func:`hindsight_bound`)
and ``optimum`` (the offline optimum that pays for moves, waits and the deadline, see
:func:`spotshift.simulate.optimum.offline_optimum`). Every result carries its cost as a multiple
of both (``vs_optimum``, ``vs_hindsight``) when they were run.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from spotshift.errors import ConfigError
from spotshift.placement.params import PlacementParams
from spotshift.simulate.market import Market
from spotshift.simulate.optimum import offline_optimum
from spotshift.simulate.policies import (
    hindsight_bound,
    run_greedy,
    run_on_demand,
    run_spotshift,
    run_stay_first_spot,
    run_uniform_progress,
)
from spotshift.simulate.scenario import PolicyResult, Scenario

POLICIES = (
    "on_demand",
    "stay_first_spot",
    "greedy_full",
    "greedy_delta",
    "uniform_progress",
    "spotshift",
    "hindsight",
    "optimum",
)


def default_home(m: Market) -> str:
    """The data's home when not given: the cheapest spot location at the first tick (ties by name)."""
    cands = [(m.spot[i][0], loc) for i, loc in enumerate(m.locations) if not math.isnan(m.spot[i][0])]
    if not cands:
        raise ConfigError(
            f"no spot price for {m.instance_type} at {m.start.isoformat()}; choose another --start"
        )
    return min(cands)[1]


def simulate(
    market: Market,
    scenario: Scenario,
    *,
    policies: tuple[str, ...] = POLICIES,
    params: PlacementParams | None = None,
) -> dict[str, PolicyResult]:
    """Run ``policies`` on ``market`` for ``scenario``; results keyed by policy name, with savings."""
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise ConfigError(f"unknown policy {', '.join(unknown)} (known: {', '.join(POLICIES)})")
    home = scenario.data_location or default_home(market)
    if home not in market.locations:
        raise ConfigError(f"--data-location {home!r} is not one of the simulated locations")
    wanted = set(policies) | {"on_demand"}
    out = {name: run_policy(name, market, scenario, home, params) for name in POLICIES if name in wanted}
    base = out["on_demand"].cost_usd
    for r in out.values():
        r.saving_vs_on_demand = (1.0 - r.cost_usd / base) if base > 0 and math.isfinite(r.cost_usd) else None
    for ref, attr in (("optimum", "vs_optimum"), ("hindsight", "vs_hindsight")):
        if ref in out and 0 < out[ref].cost_usd < math.inf:
            for r in out.values():
                setattr(r, attr, r.cost_usd / out[ref].cost_usd)
    return {k: v for k, v in out.items() if k in policies}


def run_policy(
    name: str, market: Market, scenario: Scenario, home: str, params: PlacementParams | None = None
) -> PolicyResult:
    """Run one policy (no saving computed: that needs the on-demand run)."""
    if name == "on_demand":
        return run_on_demand(market, scenario, home)
    if name == "stay_first_spot":
        return run_stay_first_spot(market, scenario, home)
    if name in ("greedy_full", "greedy_delta"):
        return run_greedy(market, scenario, home, delta=name == "greedy_delta")
    if name == "uniform_progress":
        return run_uniform_progress(market, scenario, home)
    if name == "spotshift":
        return run_spotshift(market, scenario, home, params)
    if name == "hindsight":
        return hindsight_bound(market, scenario, home)
    if name == "optimum":
        return offline_optimum(market, scenario, home)
    raise ConfigError(f"unknown policy {name!r} (known: {', '.join(POLICIES)})")


def scenario_summary(
    m: Market, sc: Scenario, home: str, seed: int, prices: str, traces: str
) -> dict[str, Any]:
    """The scenario as recorded next to the results (JSON)."""
    return {
        "prices": prices,
        "traces": traces,
        "seed": seed,
        "instance_type": m.instance_type,
        "gpu_model": m.gpu_model,
        "gpu_count": m.gpu_count,
        "locations": len(m.locations),
        "start": m.start.isoformat(),
        "tick_hours": m.gap_hours,
        **asdict(sc),
        "data_location": home,
    }
