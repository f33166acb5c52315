"""The demo's inference act (issue 14, item 9): an endpoint served from three regions.

1. **Declare** endpoint ``chat`` serving the demo job's committed model, users in us-east, eu-west
   and ap-northeast, SLO 1,000 ms, allowed in one location per user region: the nearest quoted
   AWS region (the endpoint lives on one cloud account, as many teams' do).
2. **Autoscale a daily curve**: the autoscaler library (:func:`spotshift.serving.autoscale.decide_scaling`,
   the function ``inference_autoscale_sensor`` calls) runs over two virtual days of the synthetic
   daily demand curve (:class:`spotshift.serving.simulate.SyntheticDemand`, seeded) on the newest
   quotes of the demo market, through the inference simulator's accounting: a decision every
   five virtual minutes, target 1.2 x the forecast, spot only where ``spot < 0.6 x reserved``, a
   reserved/on-demand floor, 300 s / 1,200 s delays, the non-spot base seen every hour of a day
   committed as reserved. Every decision that starts or stops replicas is recorded in
   ``raw.scaling_decisions`` with its terms; the act prints the 0.6 rule per location and the
   second day's replicas by market every three hours, and the day's cost against all on-demand.
3. **Serve and preempt**: three real replicas (``spotshift serve``, one per location, in the
   market the autoscaler chose there on the second day) behind ``spotshift router``; constant load
   from the three user regions (round trips applied on the path); a third of the way in, the spot
   replica's provider posts a preemption notice (its own instance metadata server, the trainers'
   notice path): it drains and deregisters, the router retries on the others, and the act checks
   that no request failed. The replicas write ``raw.inference_usage``, from which the cost report
   computes the cost per million tokens.

Deterministic: the market, the demand curve and every decision are seeded; only measured
latencies and the replica-seconds of the serving step vary with the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

ENDPOINT = "chat"
USERS = {"us-east": 0.5, "eu-west": 0.3, "ap-northeast": 0.2}
SLO_MS = 1000.0
PROVIDER = "aws"  # the endpoint is allowed on one cloud account, as many teams' are
PEAK_TOKENS_S = 14_400.0  # about seven replicas of 2,400 tokens/s at the daily peak
STEP_S = 300
DAYS = 2
LOAD_RPS, LOAD_S = 4.0, 24.0
START_TIMEOUT_S = 300.0


@dataclass
class InferenceAct:
    """What the act did: locations, the 0.6 rule, the day's plan and cost, the serving drill."""

    locations: list[str] = field(default_factory=list)
    rules: list[tuple[str, float | None, float | None, bool, str]] = field(default_factory=list)
    by_hour: list[tuple[int, float, dict[str, int]]] = field(default_factory=list)
    decisions_recorded: int = 0
    day_usd: float = 0.0
    day_on_demand_usd: float = 0.0
    slo_attainment: float = 0.0
    serving: list[tuple[str, str]] = field(default_factory=list)
    preempted: str | None = None
    load: dict[str, Any] = field(default_factory=dict)
    drained: bool = False
    drill_note: str = ""


def home_locations(quotes: list[Any]) -> list[str]:
    """One location per user region: the :data:`PROVIDER` location quoted with spot and on-demand
    prices with the lowest round trip from it, ties broken by the lower on-demand price."""
    from spotshift.errors import ConfigError
    from spotshift.serving.latency import rtt_ms

    priced = [
        q
        for q in quotes
        if q.location.startswith(PROVIDER + "/")
        and q.spot_usd_hour is not None
        and q.on_demand_usd_hour is not None
    ]
    out: list[str] = []
    for u in USERS:
        best = None
        for q in priced:
            try:
                key = (round(rtt_ms(u, q.location)), q.on_demand_usd_hour, q.location)
            except ConfigError:  # a location outside the latency table
                continue
            if q.location not in out and (best is None or key < best):
                best = key
        if best is not None:
            out.append(best[2])
    return sorted(out)


def plan_days(start: datetime, quotes: list[Any], act: InferenceAct) -> dict[str, str]:
    """The autoscaler over :data:`DAYS` virtual days on constant quotes; returns per location the
    market it used there on the second day and fills ``act``'s plan fields."""
    import numpy as np

    from spotshift.serving.autoscale import record_scaling_decision
    from spotshift.serving.latency import rtt_ms
    from spotshift.serving.scaling_types import ScalingParams
    from spotshift.serving.simulate import (
        AutoscalerPolicy,
        SimInputs,
        SyntheticDemand,
        forecasts_for,
        run_policy,
    )
    from spotshift.serving.slo import ServingProfile
    from spotshift.warehouse import connect

    by_loc = {q.location: q for q in quotes}
    locs = act.locations
    ticks = DAYS * 86_400 // STEP_S
    users, demand = SyntheticDemand(users=USERS, peak_tokens_s=PEAK_TOKENS_S, seed=0).generate(
        start, ticks, STEP_S
    )

    def grid(values: list[float | None]) -> Any:
        return np.tile(np.array([math.nan if v is None else v for v in values], dtype=float), (ticks, 1))

    sim = SimInputs(
        start=start,
        tick_s=STEP_S,
        locations=locs,
        users=list(users),
        spot=grid([by_loc[loc].spot_usd_hour for loc in locs]),
        on_demand=grid([by_loc[loc].on_demand_usd_hour for loc in locs]),
        reserved=grid([by_loc[loc].reserved_price() for loc in locs]),
        available=np.ones((ticks, len(locs)), dtype=bool),
        epoch=np.zeros(ticks, dtype=int),
        demand=demand,
        forecast=forecasts_for(demand, STEP_S),
        rtt=np.array([[rtt_ms(u, loc) for loc in locs] for u in users]),
        profile=ServingProfile(slo_ms=SLO_MS),
    )
    acted: list[Any] = []
    last: list[Any] = []

    def seen(t: int, d: Any) -> None:
        last[:] = [d]
        if d.launches or d.terminations:
            acted.append(d)

    policy = AutoscalerPolicy(ENDPOINT, sim, ScalingParams(), on_decision=seen)  # decisions name the endpoint
    outcome, arrays = run_policy(sim, ENDPOINT, policy=policy)
    baseline, _ = run_policy(sim, "on_demand")
    with connect() as con:  # one write connection for every decision that acted
        act.decisions_recorded = sum(record_scaling_decision(con, d) for d in acted)
    act.rules = [
        (r.location, r.spot_usd_hour, r.reserved_usd_hour, r.allowed, r.reason) for r in last[0].spot_rules
    ]
    day = slice(ticks // DAYS * (DAYS - 1), ticks)
    hours = sim.tick_s / 3600.0
    alive, committed = arrays["alive"], arrays["committed"]

    def day_cost(a: Any, c: Any | None) -> float:
        spot = (a["spot"][day] * np.nan_to_num(sim.spot[day])).sum()
        od = (a["on_demand"][day] * np.nan_to_num(sim.on_demand[day])).sum()
        res = (c[day] * np.nan_to_num(sim.reserved[day])).sum() if c is not None else 0.0
        return float((spot + od + res) * hours)

    act.day_usd = day_cost(alive, committed)
    act.day_on_demand_usd = float(baseline.cost_by_market_usd["on_demand"]) / DAYS  # constant prices
    act.slo_attainment = outcome.slo_attainment
    per_3h = 3 * 3600 // STEP_S
    for t in range(day.start, ticks, per_3h):
        counts = {m: int(alive[m][t].sum()) for m in ("spot", "on_demand")}
        counts["reserved"] = int(committed[t].sum())
        act.by_hour.append(((t - day.start) * STEP_S // 3600, float(demand[t].sum()), counts))
    # per location, the market the autoscaler used there on the second day: spot if it ran spot at
    # all, else reserved if it committed, else on-demand
    markets: dict[str, str] = {}
    for i, loc in enumerate(locs):
        if alive["spot"][day][:, i].any():
            markets[loc] = "spot"
        elif committed[day][:, i].any():
            markets[loc] = "reserved"
        else:
            markets[loc] = "on_demand"
    return markets


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "spotshift.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )


def _url(proc: subprocess.Popen, deadline: float) -> str:
    line = proc.stdout.readline() if proc.stdout else ""
    if time.monotonic() > deadline or " at " not in line:
        raise RuntimeError(f"a serving process did not start (exit {proc.poll()}): {line.strip()!r}")
    return line.split(" at ", 1)[1].split(" ", 1)[0].strip()


def serve_and_preempt(
    serving: list[tuple[str, str]], prices: dict[tuple[str, str], float], act: InferenceAct
) -> None:
    """Start the replicas and the router, load them, preempt the spot replica mid-load, stop all."""
    from spotshift.clock import VirtualClock, load_clock
    from spotshift.serving import replica_api as api
    from spotshift.serving.loadgen import run_load
    from spotshift.training.notice_server import MetadataServer
    from spotshift.training.preemption_endpoints import register_endpoints

    # the act serves in real time: the stepped clock runs at wall speed while replicas serve (their
    # usage windows are on this clock, so the act's facts are dated in the demo's virtual May 2024)
    # and goes back to its own kind (stepped, frozen) at its reading once they have stopped
    paced = load_clock()
    VirtualClock(paced.now().isoformat(), time.time(), 1.0).save()
    spot = next((loc for loc, m in serving if m == "spot"), None)
    server = MetadataServer() if spot else None
    if spot and server:
        register_endpoints({spot: server.url})
    procs: dict[str, subprocess.Popen] = {}
    try:
        for loc, market in serving:
            procs[loc] = _start(
                ["serve", ENDPOINT, "--location", loc, "--market", market,
                 "--usd-per-hour", f"{prices[(loc, market)]:.4f}"]
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        for p in procs.values():
            _url(p, deadline)
        router = procs["router"] = _start(["router", ENDPOINT])
        url = _url(router, time.monotonic() + START_TIMEOUT_S)

        async def drill() -> Any:
            async def notice() -> None:
                await asyncio.sleep(LOAD_S / 3)
                if spot and server:
                    server.preempt(spot.split("/")[0], in_seconds=30)

            _, result = await asyncio.gather(
                notice(), run_load(url, rps=LOAD_RPS, duration_s=LOAD_S, users=USERS, seed=0)
            )
            return result

        act.load = asyncio.run(drill()).to_dict()
        act.preempted = spot
        if spot:
            with contextlib.suppress(subprocess.TimeoutExpired):
                procs[spot].wait(timeout=60)
            left = {r.location for r in api.live_replicas(ENDPOINT, include_draining=True)}
            act.drained = procs[spot].poll() is not None and spot not in left
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        if spot and server:
            register_endpoints({spot: None})
            server.close()
        now = load_clock().now().isoformat()
        VirtualClock(
            now, time.time(), paced.speed, paced.pace_trainers, paced.pace_speed, paced.stepped
        ).save()


def run_act(model: str, start: datetime) -> InferenceAct:
    """The whole act (module docstring) for the committed model of job ``model``."""
    from spotshift.serving.control import location_quotes_now
    from spotshift.serving.endpoints import Endpoint, add_endpoint
    from spotshift.warehouse import connect

    act = InferenceAct()
    start = start.replace(hour=0, minute=0, second=0, microsecond=0)  # the curve's hours read as UTC
    probe = Endpoint(name=ENDPOINT, model=model, slo_ms=SLO_MS, users=dict(USERS))
    with connect(read_only=True) as con:
        quotes, _ = location_quotes_now(con, probe)
    act.locations = home_locations(quotes)
    if len(act.locations) < len(USERS):
        raise RuntimeError("fewer quoted locations than user regions: the act needs one per user region")
    add_endpoint(
        Endpoint(
            name=ENDPOINT, model=model, slo_ms=SLO_MS, users=dict(USERS), allowed_locations=act.locations
        ),
        replace=True,
    )
    q_of = {q.location: q for q in quotes}
    markets = plan_days(start, [q_of[loc] for loc in act.locations], act)
    serving = [(loc, markets[loc]) for loc in act.locations]
    if not any(m == "spot" for _, m in serving):
        # no region passes the 0.6 rule at these prices, so the autoscaler ran no spot: the
        # preemption drill still runs one replica on spot (the region nearest to passing), and says so
        loc = min(
            act.locations,
            key=lambda x: (q_of[x].spot_usd_hour or math.inf) / (q_of[x].reserved_price() or 1.0),
        )
        serving = [(x, "spot" if x == loc else m) for x, m in serving]
        act.drill_note = f"no region passes the 0.6 rule: the drill runs {loc} on spot anyway"
    act.serving = serving
    prices = {(loc, m): q_of[loc].price(m) or 0.0 for loc, m in serving}
    serve_and_preempt(serving, prices, act)
    return act


def print_act(act: InferenceAct) -> None:
    """The act's lines in the demo's output."""
    print(f"endpoint {ENDPOINT}: users " + ", ".join(f"{u} {s:.0%}" for u, s in USERS.items())
          + f", SLO {SLO_MS:.0f} ms, in {', '.join(act.locations)}")  # fmt: skip
    for loc, _spot, _res, ok, why in act.rules:
        print(f"  0.6 rule {loc:28s} {'spot' if ok else 'no spot':8s} {why}")
    print(
        f"  day 2 of the daily curve ({act.decisions_recorded} decisions recorded in raw.scaling_decisions):"
    )
    for hour, tokens, counts in act.by_hour:
        print(f"    {hour:02d}:00 UTC  {tokens:7.0f} tokens/s  spot {counts['spot']}  "
              f"on-demand {counts['on_demand']}  reserved {counts['reserved']}")  # fmt: skip
    saving = 1 - act.day_usd / act.day_on_demand_usd if act.day_on_demand_usd else 0.0
    print(f"  day 2 cost {act.day_usd:.2f} USD vs all on-demand {act.day_on_demand_usd:.2f} USD "
          f"({saving:.0%} cheaper), {act.slo_attainment:.3%} of requests within the SLO")  # fmt: skip
    print("  serving: " + ", ".join(f"{loc} ({m})" for loc, m in act.serving))
    if act.drill_note:
        print(f"  ({act.drill_note})")
    load = act.load
    print(f"  load {load.get('requests')} requests from 3 user regions, {load.get('ok')} ok, "
          f"{load.get('errors')} failed; p50 {load.get('p50_ms')} ms, p99 {load.get('p99_ms')} ms")  # fmt: skip
    if act.preempted:
        print(f"  preempted {act.preempted} mid-load: drained and deregistered: {act.drained}")


def main() -> int:
    """Run the act alone on an existing demo home (``SPOTSHIFT_HOME``): ``python scripts/demo_inference.py JOB``."""
    from spotshift.clock import virtual_now

    act = run_act(sys.argv[1] if len(sys.argv) > 1 else "llm-finetune", virtual_now() - timedelta(days=DAYS))
    print_act(act)
    return 0 if act.load.get("errors") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
