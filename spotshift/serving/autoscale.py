"""The inference autoscaler: how many replicas of which market in which location, and why.

:func:`decide_scaling` is the one scaling decision function of spotshift: the live loop
(``inference_autoscale_sensor``) and ``spotshift simulate-inference`` both call it, as
``price_change_sensor`` and ``spotshift simulate`` share :func:`spotshift.placement.economics.decide`.
It takes plain typed values (replica states, per-location quotes, demand and its forecast per
user region, the serving profile with its SLO) plus the :class:`ScalerMemory` the previous call
returned, and returns a :class:`ScalingDecision` with the launches and terminations, every term and
human-readable reasons.

The rules, per user region ``u``, then per location:

1. **Target** (seed 000, issue 14): ``headroom x max(forecast 10 min ahead, demand now)`` in
   tokens/s, in whole replicas of ``capacity_tokens_s`` (the capacity measured at the SLO); with
   ``pool_rounding`` the endpoint's replicas are rounded once over the user regions (each keeping
   whole replicas for its own forecast), :func:`~spotshift.serving.scaling_plan.wanted_by_region`.
2. **Hysteresis** (SkyServe's published delays): the granted target moves up only after the wanted
   one stayed above it for ``upscale_delay_s`` (300 s), down after ``downscale_delay_s`` (1200 s)
   below. Demand *now* above the granted capacity (an overload, not a forecast) lifts the target at
   once. Replacing lost replicas is never delayed: the target did not change.
3. **Where users can be served**: a location is eligible for ``u`` when some pool there keeps
   ``slo_target`` of ``u``'s requests within the SLO (network round trip from
   :mod:`spotshift.serving.latency`, queueing and inference from :mod:`spotshift.serving.slo`;
   :class:`~spotshift.serving.slo.PoolSizer`). Pools are planned in nominal capacity: they are
   shared by every user region the router sends there, and the router fills each only as far as
   its users' SLO allows. None eligible: the lowest round trip, and the reasons say so.
4. **Spot or not** (seed 000): spot in a location only when ``spot < 0.6 x reserved`` there
   (reserved price from :mod:`spotshift.pricing.reserved` unless quoted), the location has not
   lost spot capacity recently (``no_spot``), and spot is an allowed market.
5. **Floor and placement**: losing every spot replica of any one location must leave capacity for
   ``floor_share`` of ``u``'s traffic (the forecast level, i.e. the target without headroom). In
   whole replicas, with spot priced with its learned risk ``spot x (1 + preemptions_per_hour x
   preemption_penalty_hours)``: spot fills the cheapest eligible locations up to ``m`` replicas
   each, so one loss costs at most ``m``; every ``m`` and every count of reserved/on-demand
   replicas is tried and the cheapest mix meeting both the target and the floor wins
   (:func:`_cheapest_mix`). Spot therefore spreads over the cheapest regions not already used
   (SpotHedge's placement) exactly as far as the floor makes it pay, and a user region with a
   single spot-eligible location gets its floor on reserved/on-demand. A preempted location drops
   out of the spot candidates, so replacements go to the next-cheapest place. **Pooled floor**
   (``pooled_floor``, :mod:`spotshift.serving.scaling_floor`): user regions are planned biggest
   first, and a region whose floor is under one replica (a small user region) keeps none of its
   own when the survivors the regions planned before it keep beyond their own floors, in
   locations within its SLO round trip, cover it; otherwise it pays a whole replica (often
   on-demand) for a fraction of one.
6. **Reserved vs on-demand**: committed reserved replicas run all the time (they are paid for
   anyway) and serve first. The non-spot replicas planned in a location every hour of the last
   ``commit_window_s`` (24 h) are the steady base worth a commitment: that minimum becomes
   reserved (1-year term, never released within it), the rest stays on-demand.
7. **Reconcile**: launch what the plan lacks; terminate what it has too many of (provisioning
   first, most expensive first), but never committed reserved replicas, and never ready replicas
   while that would leave fewer ready replicas than the plan has (its replacements must be ready
   first) or less ready capacity than the demand now (make before break: a replacement that never
   comes, such as a spot launch into a region without capacity, costs nothing but the launch).
8. **Budget** (``ScalingInputs.budget``): when the planned fleet for the rest of the month would
   take the endpoint's team past its monthly limit, launches are withheld and the decision is
   ``hold`` (:func:`gate_scaling`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from spotshift.errors import ConfigError
from spotshift.serving.scaling_plan import (
    PLAN_CACHE,
    hysteresis_step,
    market_counts,
    plan_user_regions,
    rtt_lookup,
    wanted_by_region,
)
from spotshift.serving.scaling_types import (
    Launch,
    LocationQuote,
    ReplicaState,
    ScalerMemory,
    ScalingDecision,
    ScalingInputs,
    ScalingParams,
    Termination,
    UserRegionTerms,
)
from spotshift.warehouse import record_facts


def decide_scaling(
    inputs: ScalingInputs, memory: ScalerMemory | None = None, params: ScalingParams | None = None
) -> ScalingDecision:
    """Plan replicas for ``inputs`` (rules in the module docstring); pure: the new memory is in the result."""
    p = params or ScalingParams()
    cap = inputs.profile.capacity_tokens_s
    mem = memory.copy() if memory is not None else ScalerMemory()
    now_s = inputs.now.timestamp()
    allowed = set(inputs.allowed) if inputs.allowed is not None else None
    quotes = {q.location: q for q in inputs.quotes if allowed is None or q.location in allowed}
    if not quotes:
        raise ConfigError(f"endpoint {inputs.endpoint}: no quoted location to place replicas in")
    terms_in = _targets(inputs, mem, p, now_s)
    total_demand = sum(t[1] for t in terms_in)
    rules, per_u, plan_counts, plan_reasons = _cached_plan(
        inputs, quotes, tuple((u, g) for u, _, _, _, g, _ in terms_in), mem, p
    )
    reasons: list[str] = list(plan_reasons)
    terms: list[UserRegionTerms] = []
    for u, demand, forecast, wanted, granted, hyst in terms_in:
        eligible, used_spot, plan = per_u[u]
        target = granted * cap
        terms.append(
            UserRegionTerms(
                user_region=u,
                demand_tokens_s=demand,
                forecast_tokens_s=forecast,
                wanted_replicas=wanted,
                granted_replicas=granted,
                target_tokens_s=target,
                floor_tokens_s=p.floor_share * target / p.headroom,
                eligible=eligible,
                spot_locations=used_spot,
                plan=plan,
                hysteresis=hyst,
            )
        )
        if hyst != "steady":
            reasons.append(f"{u}: {hyst}")
    counts = market_counts(plan_counts, mem, now_s, p, reasons)
    launches, terminations = _reconcile(inputs, counts, mem, total_demand, cap, quotes, reasons)
    current: dict[tuple[str, str], int] = {}
    for r in inputs.replicas:
        if r.active:
            current[(r.location, r.market)] = current.get((r.location, r.market), 0) + 1
    granted_changed = any(t.hysteresis.startswith(("up ", "down ", "initial")) for t in terms)
    if launches and terminations:
        action = "rebalance"
    elif launches:
        action = "scale_up" if granted_changed else "replace"
    else:
        action = "scale_down" if terminations else "hold"
    decision = ScalingDecision(
        endpoint=inputs.endpoint,
        decided_at=inputs.now,
        snapshot_id=inputs.snapshot_id,
        action=action,
        launches=tuple(launches),
        terminations=tuple(terminations),
        current=tuple((loc, m, n) for (loc, m), n in sorted(current.items())),
        planned=tuple((loc, m, n) for (loc, m), n in sorted(counts.items())),
        user_regions=tuple(terms),
        spot_rules=tuple(rules.values()),
        demand_tokens_s=total_demand,
        target_tokens_s=sum(t.target_tokens_s for t in terms),
        planned_capacity_tokens_s=sum(counts.values()) * cap,
        current_usd_hour=_usd(current, quotes),
        planned_usd_hour=_usd(counts, quotes),
        reasons=tuple(reasons),
        memory=mem,
    )
    if inputs.budget is not None:  # 8. never start spend that would cross the team's monthly limit
        decision = gate_scaling(decision, inputs.budget)
    return decision


def _targets(
    inputs: ScalingInputs, mem: ScalerMemory, p: ScalingParams, now_s: float
) -> list[tuple[str, float, float, int, int, str]]:
    """Rules 1-2 per user region: ``(region, demand, forecast, wanted, granted, hysteresis)``;
    updates ``mem``."""
    cap = inputs.profile.capacity_tokens_s
    out = []
    wanted_of = wanted_by_region(inputs.demand_tokens_s, inputs.forecast_tokens_s, cap, p)
    for u in sorted(wanted_of):
        demand = max(0.0, float(inputs.demand_tokens_s.get(u, 0.0)))
        forecast = max(0.0, float(inputs.forecast_tokens_s.get(u, 0.0))) if p.use_forecast else 0.0
        wanted = wanted_of[u]
        overload = demand > mem.granted.get(u, 0) * cap
        granted, hyst = hysteresis_step(u, wanted, overload, now_s, mem, p)
        out.append((u, demand, forecast, wanted, granted, hyst))
    return out


def _cached_plan(
    inputs: ScalingInputs,
    quotes: Mapping[str, LocationQuote],
    granted_items: tuple[tuple[str, int], ...],
    mem: ScalerMemory,
    p: ScalingParams,
) -> Any:
    """:func:`~spotshift.serving.scaling_plan.plan_user_regions`, memoized on its hashable inputs when the
    round trips come from the default table."""
    lookup = rtt_lookup(inputs)
    rtt_cache: dict[tuple[str, str], float] = {}

    def rtt(u: str, loc: str) -> float:
        key = (u, loc)
        if key not in rtt_cache:
            rtt_cache[key] = round(lookup(u, loc), 1)
        return rtt_cache[key]

    prof = inputs.profile
    committed_items = tuple(sorted((k, v) for k, v in mem.committed.items() if v))
    # risk quantized to risk_step: estimates drift every tick, decisions should not
    risk_items = tuple(
        sorted(
            (loc, round(r / p.risk_step) * p.risk_step)
            for loc, r in inputs.spot_risk.items()
            if loc in quotes
        )
    )
    args = (quotes, granted_items, inputs.no_spot, dict(committed_items), dict(risk_items), rtt, prof, p)
    if inputs.rtt_ms is not None:
        return plan_user_regions(*args)
    key = (  # the default table: the plan is a function of hashable inputs only
        # a quote snapshot id names its quotes (as in training decisions): no need to hash them
        (inputs.snapshot_id, inputs.allowed and tuple(inputs.allowed))
        if inputs.snapshot_id
        else tuple(sorted(quotes.values(), key=lambda q: q.location)),
        granted_items,
        tuple(sorted(inputs.no_spot.items())),
        committed_items,
        risk_items,
        prof,
        p,
    )
    cached = PLAN_CACHE.get(key)
    if cached is None:
        if len(PLAN_CACHE) >= 512:
            PLAN_CACHE.clear()
        cached = PLAN_CACHE[key] = plan_user_regions(*args)
    return cached


def _usd(rows: Mapping[tuple[str, str], int], quotes: Mapping[str, LocationQuote]) -> float:
    total = 0.0
    for (loc, market), n in rows.items():
        q = quotes.get(loc)
        price = q.price(market) if q else None
        total += n * (price or 0.0)
    return total


def _reconcile(
    inputs: ScalingInputs,
    counts: Mapping[tuple[str, str], int],
    mem: ScalerMemory,
    demand_now: float,
    cap: float,
    quotes: Mapping[str, LocationQuote],
    reasons: list[str],
) -> tuple[list[Launch], list[Termination]]:
    by_key: dict[tuple[str, str], list[ReplicaState]] = {}
    for r in inputs.replicas:
        if r.active:
            by_key.setdefault((r.location, r.market), []).append(r)
    launches: list[Launch] = []
    excess: list[ReplicaState] = []
    for key in sorted(set(counts) | set(by_key)):
        have = by_key.get(key, [])
        want = counts.get(key, 0)
        if want > len(have):
            loc, market = key
            launches.append(Launch(loc, market, want - len(have), f"plan wants {want}, {len(have)} active"))
        elif want < len(have):
            # provisioning first (nothing served yet), then the newest ids
            ordered = sorted(have, key=lambda r: (r.state != "provisioning", r.replica_id), reverse=False)
            excess.extend(ordered[: len(have) - want])
    if not excess:
        return launches, []

    def price(r: ReplicaState) -> float:
        q = quotes.get(r.location)
        return (q.price(r.market) if q else None) or 0.0

    ready_cap = sum(1 for r in inputs.replicas if r.state == "ready") * cap
    # make before break: a ready replica is stopped only while the ready replicas left still number
    # at least the plan's; replicas the plan adds (launched now or provisioning) must be ready first.
    # The replacement may never come (a spot launch into a region without capacity fails):
    # stopping the old replica first would leave its users without capacity for a cold start and
    # relaunch it at the next decision.
    ready_n = sum(1 for r in inputs.replicas if r.state == "ready")
    planned_n = sum(counts.values())
    terminations: list[Termination] = []
    for r in sorted(excess, key=lambda r: (r.state != "provisioning", -price(r), r.replica_id)):
        if r.market == "reserved" and mem.committed.get(r.location, 0) >= len(
            by_key.get((r.location, "reserved"), [])
        ):
            continue  # committed: paid for anyway, keep serving
        if r.state == "ready":
            if ready_n - 1 < planned_n or ready_cap - cap < demand_now:
                reasons.append(f"keeping {r.replica_id} until replacements are ready (make before break)")
                continue
            ready_cap -= cap
            ready_n -= 1
        terminations.append(Termination(r.replica_id, r.location, r.market, "not in the plan"))
    return launches, terminations


def record_scaling_decision(con: Any, decision: ScalingDecision) -> bool:
    """Record ``decision`` in ``raw.scaling_decisions`` (once per id); whether it was new.

    Through :func:`spotshift.warehouse.record_facts`, the one path facts take; ``con`` is a write
    connection the caller holds (``None``: open the warehouse, or land the row in its fact lake).
    """
    outcome = record_facts({"raw.scaling_decisions": [decision.to_row()]}, con=con)
    return bool(outcome.written.get("raw.scaling_decisions"))


def gate_scaling(decision: ScalingDecision, status: Any) -> ScalingDecision:
    """``decision`` with its launches withheld when the planned fleet for the rest of the month would
    take the team past its cap (``status``: a :class:`spotshift.budgets.BudgetStatus`)."""
    if not decision.launches:
        return decision
    fleet = max(decision.planned_usd_hour, decision.current_usd_hour) * status.hours_left
    if status.fits(fleet):
        return decision
    b = status.budget
    return replace(
        decision,
        action="hold",
        launches=(),
        terminations=(),
        planned=decision.current,
        planned_usd_hour=decision.current_usd_hour,
        reasons=(
            *decision.reasons,
            f"budget: the planned fleet at {decision.planned_usd_hour:.2f} USD/h for the {status.hours_left:.0f} h left "
            f"this month would take team {b.name} past its {b.monthly_usd:,.2f} USD monthly limit "
            f"({status.used_usd:,.2f} USD spent): launches withheld",
        ),
    )
