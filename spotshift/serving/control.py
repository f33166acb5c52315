"""The inference control loop as plain Python: what the Dagster assets, sensor and job call.

* :func:`endpoint_inventory` — an endpoint's replicas per region and their state (registry +
  launches still provisioning): the ``inference_endpoints`` asset.
* :func:`endpoint_traffic_policy` — the router's rule as weights for the endpoint's declared user
  mix (:func:`spotshift.serving.policy.traffic_policy` over the registered replicas): ``traffic_policy``.
* :func:`plan_scaling` — gathers the decision's inputs and calls
  :func:`spotshift.serving.autoscale.decide_scaling`: demand per user region from
  ``raw.inference_usage`` (the endpoint's tokens per 5-minute step, split by its declared user
  shares) and its forecast 10 minutes ahead (:mod:`spotshift.serving.forecast`); SLO violations the
  router counted since the last decision (a user region with new ones is treated as overloaded:
  its demand now is lifted one replica above what is granted, so the target rises at once); the
  replicas from the registry plus launches still provisioning; per-location prices from the
  newest quotes (cheapest per GPU, reserved from on-demand); spot kept out of locations whose
  replicas were preempted recently or whose spot launch failed. The run key is the endpoint plus a
  digest of that inputs snapshot and the launches/terminations it leads to (not the autoscaler's
  memory): a re-evaluated tick, or the next tick while the world is unchanged, asks for the same
  run, never a second one; a run that failed is retried once the inputs move (usage, replicas).
* :func:`apply_scaling` — starts and stops replicas through a
  :class:`~spotshift.serving.launcher.ReplicaLauncher` (stops drain) and records the decision with
  :func:`~spotshift.serving.autoscale.record_scaling_decision`: ``scale_endpoint_job``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from spotshift.budgets import budget_status, find_budget
from spotshift.clock import parse_utc
from spotshift.errors import ConfigError, NotFoundError
from spotshift.pricing.snapshots import latest_quotes
from spotshift.serving import replica_api as api
from spotshift.serving.autoscale import decide_scaling, record_scaling_decision
from spotshift.serving.endpoints import Endpoint
from spotshift.serving.forecast import ForecastParams, forecast_demand
from spotshift.serving.launcher import ReplicaLauncher
from spotshift.serving.notices import recent_no_spot, replica_notices
from spotshift.serving.policy import InferenceTimeModel, ReplicaView, traffic_policy
from spotshift.serving.router_state import read_router_signal
from spotshift.serving.scaling_types import (
    Launch,
    LocationQuote,
    ReplicaState,
    ScalerMemory,
    ScalingDecision,
    ScalingInputs,
    ScalingParams,
    SpotRule,
    Termination,
    UserRegionTerms,
)
from spotshift.serving.serve import replica_price_usd_hour
from spotshift.serving.slo import ServingProfile
from spotshift.warehouse import connect

DEFAULT_CAPACITY_TOKENS_S = 2400.0  # the serving profile's measured default (serving/slo.py)
HISTORY_S = 4 * 86_400  # the forecast fits on four days at most


def endpoint_inventory(endpoint: str, launcher: ReplicaLauncher) -> dict[str, list[dict[str, Any]]]:
    """Per region (``provider/region``): the endpoint's live replicas (``ready``/``draining``) and
    launches still ``provisioning``, each with market, price, url/pid and age."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in api.live_replicas(endpoint, include_draining=True):
        out.setdefault(r.location, []).append(
            {"replica_id": r.replica_id, "market": r.market, "state": r.state, "url": r.url, "pid": r.pid,
             "usd_per_hour": r.price_usd_per_hour, "started_at_s": r.started_at_s}
        )  # fmt: skip
    for i in launcher.provisioning(endpoint):
        out.setdefault(i.location, []).append(
            {"replica_id": i.launch_id, "market": i.market, "state": "provisioning", "url": "", "pid": i.pid,
             "usd_per_hour": i.usd_per_hour, "started_at_s": i.started_at_s}
        )  # fmt: skip
    return dict(sorted(out.items()))


def endpoint_traffic_policy(ep: Endpoint, capacity_tokens_s: float = DEFAULT_CAPACITY_TOKENS_S) -> Any:
    """The :class:`~spotshift.serving.policy.TrafficPolicy` for ``ep``'s user mix over its registered
    replicas, with the router's prior inference-time model (no live latencies outside the router)."""
    views = [
        ReplicaView(
            r.replica_id, r.url, r.location, r.market, r.price_usd_per_hour, capacity_tokens_s, 1, r.state
        )
        for r in api.live_replicas(ep.name, include_draining=True)
    ]
    return traffic_policy(ep.name, views, ep.users, InferenceTimeModel(), ep.slo_ms)


def profile_for(ep: Endpoint, capacity_tokens_s: float = DEFAULT_CAPACITY_TOKENS_S) -> ServingProfile:
    """The serving profile of ``ep``: its SLO, the measured capacity, inference at most half the SLO."""
    return ServingProfile(
        slo_ms=ep.slo_ms, capacity_tokens_s=capacity_tokens_s, inference_ms=min(800.0, ep.slo_ms / 2)
    )


def demand_history(con: Any, endpoint: str, now: datetime, step_s: int) -> tuple[list[float], float]:
    """Tokens/s of ``endpoint`` per ``step_s`` step from ``raw.inference_usage`` (oldest first, empty
    steps 0, up to the step holding the newest window) and the rate of its newest one-minute window."""
    rows = con.execute(
        "SELECT window_start, window_end, tokens FROM raw.inference_usage "
        "WHERE endpoint = ? AND window_start >= ? ORDER BY window_start",
        [endpoint, (now - timedelta(seconds=HISTORY_S)).replace(tzinfo=None)],
    ).fetchall()
    if not rows:
        return [], 0.0
    steps: dict[int, float] = {}
    for start, _end, tokens in rows:
        k = int(start.replace(tzinfo=UTC).timestamp() // step_s)
        steps[k] = steps.get(k, 0.0) + float(tokens or 0)
    first, last = min(steps), max(steps)
    history = [steps.get(k, 0.0) / step_s for k in range(first, last + 1)]
    newest = max(r[0] for r in rows)
    newest_rows = [r for r in rows if r[0] == newest]
    span = max((newest_rows[0][1] - newest).total_seconds(), 1.0)
    return history, sum(float(r[2] or 0) for r in newest_rows) / span


def location_quotes_now(con: Any, ep: Endpoint) -> tuple[list[LocationQuote], str]:
    """Per allowed location: the cheapest per-GPU spot and on-demand price of the newest quotes, and
    the quote snapshot ids they come from (as :func:`~spotshift.serving.serve.replica_price_usd_hour`)."""
    import polars as pl

    q = latest_quotes(con).with_columns(
        (pl.col("provider") + "/" + pl.col("region")).alias("loc"),
        (pl.col("price_usd_hour") / pl.col("gpu_count")).alias("per_gpu"),
    )
    best = q.group_by("loc", "market").agg(pl.col("per_gpu").min()).sort("loc", "market")
    prices: dict[str, dict[str, float]] = {}
    for loc, market, usd in best.iter_rows():
        if ep.allows(loc):
            prices.setdefault(loc, {})[market] = float(usd)
    quotes = [LocationQuote(loc, p.get("on_demand"), p.get("spot")) for loc, p in prices.items()]
    return quotes, ",".join(sorted(set(q["snapshot_id"].to_list())))


@dataclass(frozen=True)
class ScalingPlan:
    """A decision with the snapshot of its inputs: ``run_key`` = endpoint + digest of ``snapshot``."""

    decision: ScalingDecision
    snapshot: dict[str, Any]
    run_key: str
    violations_seen: dict[str, int]

    @property
    def actionable(self) -> bool:
        """Whether applying it starts or stops anything."""
        return bool(self.decision.launches or self.decision.terminations)


def plan_scaling(
    ep: Endpoint,
    launcher: ReplicaLauncher,
    *,
    now: datetime,
    memory: ScalerMemory | None = None,
    violations_seen: Mapping[str, int] | None = None,
    params: ScalingParams | None = None,
    capacity_tokens_s: float = DEFAULT_CAPACITY_TOKENS_S,
) -> ScalingPlan:
    """Gather ``ep``'s inputs (module docstring) and decide; pure apart from reading state.
    :class:`NotFoundError` while the endpoint has no usage history (or the warehouse no quotes)."""
    fp = ForecastParams()
    mem = memory or ScalerMemory()
    with connect(read_only=True) as con:
        history, rate_now = demand_history(con, ep.name, now, fp.step_s)
        quotes, snapshot_id = location_quotes_now(con, ep)
        budget = find_budget(ep.team)  # the team's monthly limit gates launches (decide_scaling step 8)
        budget_now = budget_status(con, budget, now) if budget is not None else None
    if not history:  # no usage yet: replicas started by hand are not scaled to zero on the first tick
        raise NotFoundError(f"endpoint {ep.name}: no request history in raw.inference_usage yet")
    records = api.live_replicas(ep.name, include_draining=True)
    replicas = [ReplicaState(r.replica_id, r.location, r.market, r.state) for r in records]
    replicas += [
        ReplicaState(i.launch_id, i.location, i.market, "provisioning")
        for i in launcher.provisioning(ep.name)
    ]
    no_spot = recent_no_spot(replica_notices(ep.name, [q.location for q in quotes]), now)
    for info, why in launcher.failed(ep.name):
        if info.market == "spot":
            no_spot.setdefault(info.location, f"spot launch failed: {why}")
    signal = read_router_signal(ep.name) or {}
    violations = {u: int(n) for u, n in (signal.get("violations_by_user_region") or {}).items()}
    seen = dict(violations_seen or {})
    new_violations = {u: n - seen.get(u, 0) if n >= seen.get(u, 0) else n for u, n in violations.items()}
    cap = capacity_tokens_s
    demand, forecast = {}, {}
    for u, share in sorted(ep.users.items()):
        demand[u] = rate_now * share
        forecast[u] = forecast_demand([h * share for h in history], fp, u).tokens_s
        if new_violations.get(u, 0) > 0:  # the router found no replica within the SLO for u
            demand[u] = max(
                demand[u], (mem.granted.get(u, 0) + 1) * cap / (params or ScalingParams()).headroom
            )
    inputs = ScalingInputs(
        endpoint=ep.name, now=now, profile=profile_for(ep, cap), demand_tokens_s=demand,
        forecast_tokens_s=forecast, replicas=replicas, quotes=quotes, no_spot=no_spot,
        allowed=[q.location for q in quotes], snapshot_id=snapshot_id, budget=budget_now,
    )  # fmt: skip
    decision = decide_scaling(inputs, mem, params)
    snapshot = {
        "endpoint": ep.name,
        "replicas": sorted([r.replica_id, r.location, r.market, r.state] for r in replicas),
        "demand_tokens_s": {u: round(v, 1) for u, v in demand.items()},
        "forecast_tokens_s": {u: round(v, 1) for u, v in forecast.items()},
        "history_steps": len(history),
        "quotes": snapshot_id,
        "no_spot": sorted(no_spot),
        "router_violations": violations,
        "launches": [[x.location, x.market, x.count] for x in decision.launches],
        "terminations": [x.replica_id for x in decision.terminations],
        "budget": None if budget_now is None else round(budget_now.used_usd, 2),
    }
    digest = hashlib.sha256(json.dumps(snapshot, sort_keys=True).encode()).hexdigest()[:16]
    return ScalingPlan(decision, snapshot, f"{ep.name}:{digest}", violations)


def decision_to_doc(d: ScalingDecision) -> dict[str, Any]:
    """JSON-ready document of a decision (run config of ``scale_endpoint_job``); :func:`decision_from_doc` inverts it."""
    doc = asdict(d)
    doc["decided_at"] = d.decided_at.isoformat()
    return json.loads(json.dumps(doc))


def decision_from_doc(doc: Mapping[str, Any]) -> ScalingDecision:
    """The :class:`ScalingDecision` of :func:`decision_to_doc`; :class:`ConfigError` when malformed."""
    try:
        d = dict(doc)
        return ScalingDecision(
            **{
                **d,
                "decided_at": parse_utc(d["decided_at"]),
                "launches": tuple(Launch(**x) for x in d["launches"]),
                "terminations": tuple(Termination(**x) for x in d["terminations"]),
                "current": tuple(tuple(x) for x in d["current"]),
                "planned": tuple(tuple(x) for x in d["planned"]),
                "user_regions": tuple(
                    UserRegionTerms(
                        **{
                            **u,
                            "eligible": tuple(u["eligible"]),
                            "spot_locations": tuple(u["spot_locations"]),
                            "plan": tuple(tuple(p) for p in u["plan"]),
                        }
                    )
                    for u in d["user_regions"]
                ),  # fmt: skip
                "spot_rules": tuple(SpotRule(**r) for r in d["spot_rules"]),
                "reasons": tuple(d["reasons"]),
                "memory": ScalerMemory(**d["memory"]),
            }
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"scaling decision document: malformed ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class ScalingOutcome:
    """What applying a decision did: replicas started (launch ids) and stopped (drain reports)."""

    decision_id: str
    action: str
    started: tuple[dict[str, Any], ...]
    stopped: tuple[dict[str, Any], ...]
    recorded: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def apply_scaling(
    decision: ScalingDecision,
    launcher: ReplicaLauncher,
    *,
    quotes: Mapping[str, LocationQuote] | None = None,
    stop_timeout_s: float = 60.0,
) -> ScalingOutcome:
    """Start the decision's launches (priced from ``quotes``, else the warehouse's newest), drain its
    terminations, then record it in ``raw.scaling_decisions`` (once per decision id)."""
    started, stopped = [], []
    for launch in decision.launches:
        price = _launch_price(launch, quotes)
        for _ in range(launch.count):
            info = launcher.start(decision.endpoint, launch.location, launch.market, usd_per_hour=price)
            started.append({"launch_id": info.launch_id, "location": info.location, "market": info.market,
                            "pid": info.pid, "usd_per_hour": price, "reason": launch.reason})  # fmt: skip
    for t in decision.terminations:
        report = launcher.stop(decision.endpoint, t.replica_id, timeout_s=stop_timeout_s)
        stopped.append({**asdict(report), "location": t.location, "market": t.market, "reason": t.reason})
    recorded = record_scaling_decision(None, decision)
    return ScalingOutcome(decision.decision_id, decision.action, tuple(started), tuple(stopped), recorded)


def _launch_price(launch: Launch, quotes: Mapping[str, LocationQuote] | None) -> float:
    if quotes is not None and launch.location in quotes:
        price = quotes[launch.location].price(launch.market)
        if price is not None:
            return float(price)

    try:
        return replica_price_usd_hour(launch.location, launch.market)
    except NotFoundError:
        raise NotFoundError(
            f"no {launch.market} price for {launch.location}: cannot launch a replica there"
        ) from None
