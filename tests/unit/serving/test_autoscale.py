"""The autoscaler: the 0.6 rule both ways, hysteresis, the floor, replacements, recorded decisions."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from spotshift.errors import ConfigError
from spotshift.serving.autoscale import decide_scaling, record_scaling_decision
from spotshift.serving.scaling_floor import FloorSurplus, pooled_floor
from spotshift.serving.scaling_types import (
    LocationQuote,
    ReplicaState,
    ScalerMemory,
    ScalingInputs,
    ScalingParams,
)
from spotshift.serving.slo import ServingProfile

T0 = datetime(2024, 3, 1, 12, tzinfo=UTC)
PROFILE = ServingProfile()
CAP = PROFILE.capacity_tokens_s
US = ("gcp/us-east4", "gcp/us-central1", "gcp/us-east1", "gcp/us-west1")


def quotes(spot: dict[str, float | None], od: float = 5.0) -> list[LocationQuote]:
    return [LocationQuote(loc, od, price) for loc, price in spot.items()]


def inputs(
    qs: list[LocationQuote],
    tokens: float,
    *,
    now: datetime = T0,
    replicas: tuple[ReplicaState, ...] = (),
    no_spot: dict[str, str] | None = None,
    forecast: float | None = None,
) -> ScalingInputs:
    return ScalingInputs(
        endpoint="chat",
        now=now,
        profile=PROFILE,
        demand_tokens_s={"us-east": tokens},
        forecast_tokens_s={"us-east": tokens if forecast is None else forecast},
        replicas=list(replicas),
        quotes=qs,
        no_spot=no_spot or {},
    )


def by_market(decision, market: str) -> int:
    return sum(n for _, m, n in decision.planned if m == market)


def running(decision, prefix: str = "r") -> tuple[ReplicaState, ...]:
    out, i = [], 0
    for loc, market, n in decision.planned:
        for _ in range(n):
            out.append(ReplicaState(f"{prefix}{i}", loc, market, "ready"))
            i += 1
    return tuple(out)


def test_spot_below_six_tenths_of_reserved_is_used() -> None:
    # reserved gcp = 5.0 x 0.63 = 3.15; 0.6 x 3.15 = 1.89
    d = decide_scaling(inputs(quotes({loc: 1.85 for loc in US}), 10 * CAP))
    assert by_market(d, "spot") > 0 and by_market(d, "on_demand") == 0
    assert all(r.allowed and "< 0.6 x reserved" in r.reason for r in d.spot_rules)


def test_spot_at_or_above_six_tenths_of_reserved_is_not_used() -> None:
    d = decide_scaling(inputs(quotes({loc: 1.90 for loc in US}), 10 * CAP))
    assert by_market(d, "spot") == 0 and by_market(d, "on_demand") > 0
    assert all(not r.allowed and ">= 0.6 x reserved" in r.reason for r in d.spot_rules)
    # the rule is per location: one cheap location gets spot, the others do not
    d = decide_scaling(inputs(quotes({**{loc: 1.90 for loc in US}, "gcp/us-east1": 1.5}), 10 * CAP))
    assert {loc for loc, m, _ in d.planned if m == "spot"} == {"gcp/us-east1"}
    # exactly 0.6 x reserved is not below it (quoted reserved 2.5: the boundary 1.5 is exact)
    at = [LocationQuote(loc, 5.0, 1.5, 2.5) for loc in US]
    d = decide_scaling(inputs(at, 10 * CAP))
    assert by_market(d, "spot") == 0 and all(not r.allowed for r in d.spot_rules)


def test_target_is_headroom_times_the_forecast() -> None:
    d = decide_scaling(inputs(quotes({loc: None for loc in US}), 5 * CAP, forecast=10 * CAP))
    (terms,) = d.user_regions
    assert terms.wanted_replicas == 12  # ceil(1.2 x 10)
    assert by_market(d, "on_demand") == 12
    assert d.target_tokens_s == pytest.approx(12 * CAP)


def test_hysteresis_no_flapping_within_the_delays() -> None:
    qs = quotes({loc: None for loc in US})
    p = ScalingParams()
    first = decide_scaling(inputs(qs, 10 * CAP), None, p)
    mem, reps = first.memory, running(first)
    base = by_market(first, "on_demand")
    # the forecast swings up and down every minute while demand stays covered: nothing moves
    for minute in range(1, 21):  # ends low: no timer left running
        f = (14 if minute % 2 else 6) * CAP
        d = decide_scaling(
            inputs(qs, 9 * CAP, now=T0 + timedelta(minutes=minute), replicas=reps, forecast=f), mem, p
        )
        assert not d.launches and not d.terminations, minute
        assert by_market(d, "on_demand") == base
        mem = d.memory
    # a sustained rise: nothing before 300 s, the new target at 300 s
    t_up = T0 + timedelta(minutes=30)
    for seconds in (0, 60, 120, 180, 240):
        d = decide_scaling(
            inputs(qs, 9 * CAP, now=t_up + timedelta(seconds=seconds), replicas=reps, forecast=14 * CAP),
            mem,
            p,
        )
        assert not d.launches, seconds
        mem = d.memory
    d = decide_scaling(
        inputs(qs, 9 * CAP, now=t_up + timedelta(seconds=300), replicas=reps, forecast=14 * CAP), mem, p
    )
    assert sum(x.count for x in d.launches) == 17 - base and d.action == "scale_up"
    mem, reps = d.memory, running(d, "s")
    # a sustained fall: nothing before 1200 s
    t_down = t_up + timedelta(minutes=10)
    for seconds in range(0, 1200, 120):
        d = decide_scaling(
            inputs(qs, 5 * CAP, now=t_down + timedelta(seconds=seconds), replicas=reps, forecast=5 * CAP),
            mem,
            p,
        )
        assert not d.terminations, seconds
        mem = d.memory
    d = decide_scaling(
        inputs(qs, 5 * CAP, now=t_down + timedelta(seconds=1200), replicas=reps, forecast=5 * CAP), mem, p
    )
    assert len(d.terminations) == 17 - 6 and d.action == "scale_down"


def test_overload_now_is_not_delayed() -> None:
    qs = quotes({loc: None for loc in US})
    first = decide_scaling(inputs(qs, 5 * CAP))
    d = decide_scaling(
        inputs(qs, 9 * CAP, now=T0 + timedelta(minutes=1), replicas=running(first)), first.memory
    )
    assert d.launches and "overload now" in " ".join(d.reasons)


def test_floor_keeps_the_slo_share_after_losing_all_spot_in_one_location() -> None:
    spot = {"gcp/us-east4": 1.6, "gcp/us-central1": 1.5, "gcp/us-east1": 1.7, "gcp/us-west1": 1.55}
    for share in (0.5, 0.8, 1.0):
        p = ScalingParams(floor_share=share)
        d = decide_scaling(inputs(quotes(spot), 20 * CAP), None, p)
        (terms,) = d.user_regions
        total = sum(n for _, _, n in d.planned)
        assert total >= terms.granted_replicas
        worst_loss = max(n for _, m, n in d.planned if m == "spot")
        assert (total - worst_loss) * CAP >= share * 20 * CAP - 1e-6, share
    # a single spot location: the floor has to be non-spot
    d = decide_scaling(inputs(quotes({"gcp/us-east4": 1.0}), 10 * CAP), None, ScalingParams(floor_share=1.0))
    assert by_market(d, "on_demand") >= 10


def test_preempted_spot_is_replaced_in_the_next_cheapest_unused_region() -> None:
    spot = {"gcp/us-central1": 1.50, "gcp/us-west1": 1.55, "gcp/us-east4": 1.60, "gcp/us-east1": 1.70}
    p = ScalingParams(floor_share=0.5)
    first = decide_scaling(inputs(quotes(spot), 6 * CAP), None, p)
    used = {loc for loc, m, _ in first.planned if m == "spot"}
    assert used == {"gcp/us-central1", "gcp/us-west1"}
    lost = "gcp/us-central1"
    survivors = tuple(r for r in running(first) if r.location != lost)
    d = decide_scaling(
        inputs(
            quotes(spot),
            6 * CAP,
            now=T0 + timedelta(minutes=1),
            replicas=survivors,
            no_spot={lost: "preempted"},
        ),
        first.memory,
        p,
    )
    launched = {x.location for x in d.launches}
    assert launched == {"gcp/us-east4"}  # not the lost one, not the one already used: the next cheapest
    assert d.action == "replace" and not d.terminations
    assert any(r.location == lost and not r.allowed and "preempted" in r.reason for r in d.spot_rules)


def test_a_replaced_replica_serves_until_its_replacement_is_ready() -> None:
    # spot gets cheap enough while on-demand serves: the plan moves to spot, but the on-demand
    # replicas keep serving until the spot ones are ready (the spot launch may fail for lack of
    # capacity, which would otherwise leave the users without capacity for a cold start)
    p = ScalingParams(floor_share=0.0)
    first = decide_scaling(inputs(quotes({loc: None for loc in US}), 4 * CAP), None, p)
    serving = running(first)
    assert {r.market for r in serving} == {"on_demand"} and len(serving) == 5
    cheap = quotes({"gcp/us-east4": 1.0, "gcp/us-central1": None, "gcp/us-east1": None, "gcp/us-west1": None})
    d = decide_scaling(
        inputs(cheap, 4 * CAP, now=T0 + timedelta(minutes=1), replicas=serving), first.memory, p
    )
    assert [(x.location, x.market, x.count) for x in d.launches] == [("gcp/us-east4", "spot", 5)]
    assert d.terminations == ()  # nothing stopped before its replacement is ready
    provisioning = tuple(ReplicaState(f"s{i}", "gcp/us-east4", "spot", "provisioning") for i in range(5))
    later = decide_scaling(
        inputs(cheap, 4 * CAP, now=T0 + timedelta(minutes=2), replicas=serving + provisioning), d.memory, p
    )
    assert later.launches == () and later.terminations == ()  # still provisioning: still serving
    ready = tuple(ReplicaState(r.replica_id, r.location, r.market, "ready") for r in provisioning)
    done = decide_scaling(
        inputs(cheap, 4 * CAP, now=T0 + timedelta(minutes=5), replicas=serving + ready), later.memory, p
    )
    assert sorted(t.replica_id for t in done.terminations) == sorted(r.replica_id for r in serving)


def test_make_before_break_and_memory_roundtrip() -> None:
    qs = quotes({loc: None for loc in US})
    d = decide_scaling(inputs(qs, 4 * CAP))
    again = ScalerMemory.from_json(d.memory.to_json())
    assert again == d.memory
    with pytest.raises(ConfigError, match="scaler memory"):
        ScalerMemory.from_json("{not json")
    with pytest.raises(ConfigError, match="market"):
        ReplicaState("x", "gcp/us-east4", "preemptible", "ready")


def test_decision_row_is_a_warehouse_fact(tmp_path) -> None:
    from spotshift.warehouse import connect
    from spotshift.warehouse_schema import RAW_TABLES

    d = decide_scaling(inputs(quotes({loc: 1.5 for loc in US}), 8 * CAP))
    row = d.to_row()
    assert set(row) == {c.name for c in RAW_TABLES["scaling_decisions"]}
    terms = json.loads(row["terms"])
    assert terms["user_regions"][0]["user_region"] == "us-east" and terms["spot_rules"]
    with connect(tmp_path / "w.duckdb") as con:
        assert record_scaling_decision(con, d) is True
        assert record_scaling_decision(con, d) is False  # same id: written once
        got = con.execute("SELECT endpoint, action, spot_replicas FROM raw.scaling_decisions").fetchall()
    assert got == [("chat", d.action, by_market(d, "spot"))]


def test_pooled_rounding_counts_the_endpoints_headroom_once_and_keeps_each_regions_forecast() -> None:
    from spotshift.serving.scaling_plan import wanted_by_region

    demand = {"us-east": 90.0, "eu-west": 90.0, "ap-northeast": 90.0}  # 0.9 replicas each
    pooled = wanted_by_region(demand, {}, 100.0, ScalingParams())
    # ceil(3 x 1.2 x 0.9) = 4 replicas for the endpoint, every region keeps ceil(0.9) = 1
    assert sum(pooled.values()) == 4 and min(pooled.values()) == 1
    assert pooled == {"ap-northeast": 2, "eu-west": 1, "us-east": 1}  # largest remainder, ties by name
    apart = wanted_by_region(demand, {}, 100.0, ScalingParams(pool_rounding=False))
    assert apart == {u: 2 for u in demand}  # ceil(1.08) per region: 6
    big = wanted_by_region({"us-east": 1000.0, "eu-west": 10.0}, {}, 100.0, ScalingParams())
    assert big == {"us-east": 12, "eu-west": 1}  # ceil(12.12) = 13 = 12 + the small region's own replica


def _two_regions(users: dict[str, float], pooled: bool):
    spot = {"gcp/us-east4": 1.6, "gcp/us-central1": 1.5, "gcp/us-east1": 1.7, "gcp/us-west1": 1.55}
    qs = [LocationQuote(loc, 2.5, price, 3.0) for loc, price in spot.items()]
    i = ScalingInputs(
        endpoint="chat",
        now=T0,
        profile=PROFILE,
        demand_tokens_s=users,
        forecast_tokens_s=users,
        replicas=[],
        quotes=qs,
        no_spot={},
    )
    return decide_scaling(i, None, ScalingParams(pooled_floor=pooled))


def test_pooled_floor_a_small_regions_floor_is_kept_by_the_big_regions_surplus() -> None:
    users = {"us-east": 9 * CAP, "us-west": 0.5 * CAP}
    apart, pooled = _two_regions(users, False), _two_regions(users, True)
    small = {t.user_region: t for t in pooled.user_regions}["us-west"]
    assert (
        small.granted_replicas == 1 and sum(c for _, _, c in small.plan) == CAP
    )  # one replica, no floor of its own
    assert by_market(apart, "on_demand") == 1 and by_market(pooled, "on_demand") == 0
    assert pooled.planned_usd_hour < apart.planned_usd_hour
    assert any("pooled floor" in r for r in pooled.reasons)
    # the joint guarantee: losing every spot replica of any one location leaves the sum of the floors
    floors = sum(t.floor_tokens_s for t in pooled.user_regions)
    total = sum(n for _, _, n in pooled.planned) * CAP
    for loc in {loc for loc, m, _ in pooled.planned if m == "spot"}:
        lost = sum(n for x, m, n in pooled.planned if x == loc and m == "spot") * CAP
        assert total - lost >= floors - 1e-6, loc
    # a floor of a replica or more stays the region's own
    users = {"us-east": 9 * CAP, "us-west": 1.5 * CAP}
    assert _two_regions(users, True).planned == _two_regions(users, False).planned


def test_pooled_floor_counts_only_reachable_survivors_once() -> None:
    s = FloorSurplus({("a", "spot"): 3, ("b", "spot"): 3, ("c", "on_demand"): 1}, left=0.7)
    assert s.reachable(["a", "b"]) == pytest.approx(0.7)
    assert s.reachable(["a"]) == 0.0  # a single spot location: its loss takes everything there
    assert s.reachable(["c"]) == pytest.approx(0.7) and s.reachable(["d"]) == 0.0
    assert pooled_floor(0.67, ["d"], [s]) == (1, 0.0)  # out of the SLO's round trip
    assert pooled_floor(0.67, ["a", "b"], None) == (1, 0.0)  # pooling off
    big = FloorSurplus(dict(s.counts), left=2.0)
    assert pooled_floor(1.33, ["a", "b", "c"], [big]) == (2, 0.0)  # a replica or more: the region's own
    assert big.left == 2.0
    assert pooled_floor(0.67, ["a", "b"], [s]) == (0, 0.67)
    assert s.left == pytest.approx(0.03)
    assert pooled_floor(0.5, ["a", "b"], [s]) == (1, 0.0)  # the surplus is taken once
