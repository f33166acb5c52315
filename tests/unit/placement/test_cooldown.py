"""The cooldown after a price move, end to end: a cut-over starts it, the placement state keeps it,
the decision inputs carry it, and the decision stays while it runs.

(``decide()`` itself is tested with a cooldown in test_economics; this pins the wiring around it.)
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from spotshift.migration.cutover import record_cut_over
from spotshift.migration.plan import MovePlan
from spotshift.placement import state
from spotshift.placement.inputs import assemble_inputs, decide_for_job
from spotshift.placement.params import PlacementParams
from tests.unit.placement.test_inputs import CENTRAL, EAST, NOW, wh  # noqa: F401 - the fixture

COOLDOWN_H = PlacementParams().cooldown_hours


def _cut_over(con, trigger: str, at, to: str = CENTRAL) -> None:  # noqa: ANN001
    plan = MovePlan(
        job="llm-ft",
        trigger=trigger,
        from_location=EAST if to == CENTRAL and trigger == "price" else "",
        to_location=to,
        market="spot",
        instance_type="a2-highgpu-8g",
        price_usd_hour=10.0,
        run_key=f"llm-ft:{trigger}",
    )
    record_cut_over(con, plan, now=at, started_at=at, run_id="r", cooldown_hours=COOLDOWN_H)


def test_a_price_cut_over_starts_the_cooldown_and_the_decision_honours_it(wh) -> None:  # noqa: F811
    # without a cooldown, three hours on moving to us-east1 pays (test_inputs)
    assert decide_for_job(wh, "llm-ft", now=NOW + timedelta(hours=3)).action == "move"
    # it was placed in us-east1 (no cooldown), then a price move brought it back to us-central1
    _cut_over(wh, "place", NOW, to=EAST)
    assert state.load_state("llm-ft").cooldown_until is None
    moved_at = NOW + timedelta(hours=2)
    _cut_over(wh, "price", moved_at)
    until = moved_at + timedelta(hours=COOLDOWN_H)
    assert state.load_state("llm-ft").cooldown_until_dt() == until
    inputs = assemble_inputs(wh, "llm-ft", now=NOW + timedelta(hours=3))
    assert inputs.cooldown_until == until  # state -> inputs
    held = decide_for_job(wh, "llm-ft", now=NOW + timedelta(hours=3))
    assert held.action == "stay" and any(r.startswith("cooldown until") for r in held.reasons)


@pytest.mark.parametrize("trigger", ["place", "preemption"])
def test_placements_and_recoveries_start_no_cooldown(wh, trigger: str) -> None:  # noqa: F811
    _cut_over(wh, trigger, NOW, to=EAST)
    _cut_over(wh, trigger, NOW + timedelta(hours=2))
    assert state.load_state("llm-ft").cooldown_until is None
    assert assemble_inputs(wh, "llm-ft", now=NOW + timedelta(hours=3)).cooldown_until is None
