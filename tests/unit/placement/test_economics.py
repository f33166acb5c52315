"""Migration economics: move-or-stay edge cases, cooldown, deadline pressure, no spot anywhere."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from spotshift.placement.deadline import (
    ahead_of_uniform_progress,
    deadline_requires_on_demand,
    safety_reserve_hours,
)
from spotshift.placement.decision import DecisionInputs, Placement
from spotshift.placement.economics import decide
from spotshift.placement.params import PlacementParams
from spotshift.placement.risk import RegionRisk
from spotshift.placement.scoring import DataFootprint
from spotshift.warehouse_schema import RAW_TABLES
from tests.unit.placement.builders import NOW, make_job, make_quote

GB = 10**9
CENTRAL, EAST, WEST = "gcp/us-central1", "gcp/us-east1", "gcp/us-west1"
PREEMPTED = "no spot capacity (preempted)"
FOOT = DataFootprint(
    dataset_bytes=100 * GB,
    checkpoint_bytes=50 * GB,
    dataset_present={CENTRAL: 100 * GB},
    checkpoint_present={CENTRAL: 50 * GB},
)
RUNNING = Placement(CENTRAL, "spot", "a2-highgpu-8g", price_usd_hour=10.0)


def running_inputs(alt_price: float, **kw: object) -> DecisionInputs:
    base: dict[str, object] = {
        "job": make_job(),
        "quotes": [
            make_quote(CENTRAL, 10.0),
            make_quote(EAST, alt_price),
            make_quote(CENTRAL, 30.0, market="on_demand"),
        ],
        "now": NOW,
        "remaining_hours": 100.0,
        "footprint": FOOT,
        "current": RUNNING,
        "snapshot_id": "snap-1",
    }
    base.update(kw)
    return DecisionInputs(**base)  # type: ignore[arg-type]


def test_move_terms_hand_computed() -> None:
    d = decide(running_inputs(9.0, checkpoint_age_hours=0.1))
    t = d.terms
    assert d.action == "move" and d.target_location == EAST
    assert t.expected_savings_usd == pytest.approx((10.0 - 9.0) * 100)
    assert t.egress_usd == pytest.approx(150 * 0.02)  # dataset + checkpoint not in us-east1
    assert t.downtime_usd == pytest.approx(0.25 * 10.0)  # changeover at the current price
    assert t.staleness_usd == pytest.approx(0.1 * 9.0)  # work since the checkpoint, redone at the target
    assert t.risk_usd == 0.0
    assert t.margin_usd == pytest.approx(0.02 * 10.0 * 100)  # 2 % of the remaining spend
    assert t.move_cost_usd == pytest.approx(3.0 + 2.5 + 0.9)
    assert d.run_key() == "llm-ft:gcp/us-central1->gcp/us-east1:snap-1"
    assert d.changes_placement


@pytest.mark.parametrize(("alt_price", "action"), [(9.744, "move"), (9.746, "stay")])
def test_savings_just_above_and_below_the_margin(alt_price: float, action: str) -> None:
    # move cost 3.0 egress + 2.5 downtime = 5.5; margin 20; savings (10 - p) x 100:
    # p = 9.744 -> net 20.1 > 20 (move); p = 9.746 -> net 19.9 (stay)
    d = decide(running_inputs(alt_price))
    assert d.terms.net_usd == pytest.approx((10 - alt_price) * 100 - 5.5)
    assert d.action == action
    assert any(("move: net" if action == "move" else "stay: net") in r for r in d.reasons)


def test_cooldown_blocks_a_paying_move_until_it_expires() -> None:
    d = decide(running_inputs(5.0, cooldown_until=NOW + timedelta(hours=1)))
    assert d.action == "stay" and d.terms.pays
    assert any("cooldown until" in r for r in d.reasons)
    assert decide(running_inputs(5.0, cooldown_until=NOW - timedelta(seconds=1))).action == "move"


def test_unfit_current_placement_moves_despite_cooldown() -> None:
    d = decide(
        running_inputs(
            9.9, cooldown_until=NOW + timedelta(hours=5), unfit={CENTRAL: "unfit until X: rollback"}
        )
    )
    assert d.action == "move" and d.target_location == EAST
    assert any("no longer qualifies" in r for r in d.reasons)


def test_risk_term_can_keep_a_job_in_a_safer_region() -> None:
    risks = {
        EAST: RegionRisk(EAST, 1.0, 2.0, 10.0, 10),  # preempted about hourly
        CENTRAL: RegionRisk(CENTRAL, 0.01, 2.0, 500.0, 5),
    }
    d = decide(running_inputs(9.5, risks=risks))
    assert d.action == "stay"
    assert d.terms.risk_usd > d.terms.expected_savings_usd


def test_deadline_pressure_falls_back_to_on_demand() -> None:
    job = make_job(submitted_at=(NOW - timedelta(hours=10)).isoformat(), deadline_hours=110.5)
    # 100 h left, 100.5 h to the deadline: slack 0.5 <= reserve 0.25 + 0 + 0.25 + 1/60
    d = decide(running_inputs(5.0, job=job))
    assert d.action == "fallback_on_demand"
    assert d.target.quote.market == "on_demand" and d.target_location == CENTRAL
    assert d.deadline_slack_hours == pytest.approx(0.5)
    assert any("deadline safety net" in r for r in d.reasons)
    # once on on-demand under pressure it stays there, even when spot is far cheaper
    on_demand = Placement(CENTRAL, "on_demand", "a2-highgpu-8g", price_usd_hour=30.0)
    assert decide(running_inputs(1.0, job=job, current=on_demand)).action == "stay"


def test_no_plan_that_cannot_finish_in_time() -> None:
    # slack 0.6 h: above the reserve, but a move (0.25 h changeover) would leave less than the reserve
    job = make_job(submitted_at=(NOW - timedelta(hours=10)).isoformat(), deadline_hours=110.6)
    d = decide(running_inputs(5.0, job=job))
    assert d.action == "stay"
    assert any("could no longer finish by the deadline" in r for r in d.reasons)


def test_not_running_places_on_best_candidate() -> None:
    # us-east1 is 0.01 USD/h cheaper, but data and checkpoint are in us-central1
    d = decide(running_inputs(9.99, current=None))
    assert d.action == "place" and d.target_location == CENTRAL
    assert d.run_key() == "llm-ft:-->gcp/us-central1:snap-1"


def test_preempted_job_goes_elsewhere_when_behind_uniform_progress() -> None:
    job = make_job(submitted_at=(NOW - timedelta(hours=50)).isoformat(), deadline_hours=150.0)
    d = decide(
        running_inputs(
            12.0, job=job, current_running=False, no_spot={CENTRAL: PREEMPTED}, remaining_hours=99.0
        )
    )
    assert d.action == "place" and d.target_location == EAST
    assert any("no longer running" in r for r in d.reasons)


def test_all_regions_preempted() -> None:
    no_spot = {CENTRAL: PREEMPTED, EAST: PREEMPTED}
    # 100 h of work left with 150 h to go of a 200 h window: behind uniform progress
    behind = make_job(submitted_at=(NOW - timedelta(hours=50)).isoformat(), deadline_hours=200.0)
    d = decide(running_inputs(9.0, job=behind, current=None, no_spot=no_spot))
    assert d.action == "fallback_on_demand" and d.target.quote.market == "on_demand"
    assert any("no spot capacity" in r for r in d.reasons)
    # ahead of uniform progress (100 h left of 100, 200 h to go of 200): wait for spot to come back
    ahead = make_job(submitted_at=NOW.isoformat(), deadline_hours=200.0)
    d = decide(running_inputs(9.0, job=ahead, current=None, no_spot=no_spot))
    assert d.action == "queue" and d.target is None
    assert any("waiting for" in r for r in d.reasons)
    # unless waiting is turned off
    p = PlacementParams(wait_for_spot_when_ahead=False)
    assert (
        decide(running_inputs(9.0, job=ahead, current=None, no_spot=no_spot), p).action
        == "fallback_on_demand"
    )
    # no deadline at all: nothing to be ahead of, fall back
    assert decide(running_inputs(9.0, current=None, no_spot=no_spot)).action == "fallback_on_demand"


def test_nothing_qualifies_queues() -> None:
    d = decide(running_inputs(9.0, current=None, quotes=[make_quote(CENTRAL, 5.0, gpu_count=4)]))
    assert d.action == "queue" and d.target is None
    assert any("nothing qualifies" in r for r in d.reasons)
    assert decide(running_inputs(9.0, current=None, quotes=[])).action == "queue"


def test_on_demand_only_job_is_placed_on_on_demand() -> None:
    d = decide(running_inputs(1.0, current=None, job=make_job(spot_allowed=False)))
    assert d.action == "place" and d.target.quote.market == "on_demand"


def test_impossible_deadline_takes_fastest_on_demand_plan() -> None:
    # feasible when declared (105 h for 100 h of work), impossible 10 h later with nothing done
    job = make_job(submitted_at=(NOW - timedelta(hours=10)).isoformat(), deadline_hours=105.0)
    d = decide(running_inputs(9.0, job=job, current=None))
    assert d.action == "fallback_on_demand" and d.target_location == CENTRAL
    assert any("can meet the deadline" in r for r in d.reasons)


def test_decision_row_matches_the_warehouse_contract() -> None:
    d = decide(running_inputs(9.0))
    row = d.to_row()
    assert set(row) == {c.name for c in RAW_TABLES["decisions"]}
    assert row["action"] == "move" and row["current_location"] == CENTRAL and row["best_location"] == EAST
    assert row["decision_id"] == "llm-ft:snap-1:gcp/us-central1:move"
    assert json.loads(row["reasons"]) == list(d.reasons)
    cand_rows = d.candidate_rows()
    assert sum(r["chosen"] for r in cand_rows) == 1
    assert json.dumps(d.to_dict(), default=str)


def test_safety_net_functions() -> None:
    assert safety_reserve_hours(0.25, 0.5, 0.25, 0.1) == pytest.approx(1.1)
    assert deadline_requires_on_demand(10.0, 9.0, 1.0) is True
    assert deadline_requires_on_demand(10.0, 8.9, 1.0) is False
    assert ahead_of_uniform_progress(50.0, 100.0, 100.0, 200.0) is True
    assert ahead_of_uniform_progress(50.1, 100.0, 100.0, 200.0) is False
