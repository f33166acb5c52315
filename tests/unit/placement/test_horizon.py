"""Horizon planning: near-term predicted interruptions vs the long-run rate, in the score, the
economics and the cooldown."""

from __future__ import annotations

import math
import random
from datetime import timedelta

import numpy as np
import pytest

from spotshift.placement.availability import AvailabilityModel
from spotshift.placement.deadline import ahead_of_uniform_progress
from spotshift.placement.economics import decide
from spotshift.placement.horizon import (
    PREDICTED_INTERRUPTION,
    expected_preemptions,
    expected_preemptions_array,
    later_share,
    predicted_interruption,
    required_progress_rate,
    uniform_progress_slack_hours,
)
from spotshift.placement.params import PlacementParams
from spotshift.placement.risk import RegionRisk
from tests.unit.placement.builders import NOW, make_job, make_quote
from tests.unit.placement.test_economics import CENTRAL, EAST, PREEMPTED, WEST, running_inputs


def risk(loc: str, rate: float = 0.0, near: float = 0.0, near_h: float = 1.0) -> RegionRisk:
    return RegionRisk(
        loc, rate, 2.0, 100.0, 3, near_term_preemptions=near, near_term_hours=near_h if near else 0.0
    )


def test_expected_preemptions_counts_the_near_term_once_and_pro_rata() -> None:
    r = risk(CENTRAL, rate=0.1, near=2.0, near_h=1.0)
    assert expected_preemptions(r, 100.0) == pytest.approx(0.1 * 100 + 2.0)
    assert expected_preemptions(r, 0.5) == pytest.approx(0.05 + 1.0)
    assert expected_preemptions(None, 10.0) == 0.0 and expected_preemptions(r, 0.0) == 0.0
    rng = random.Random(1)
    for _ in range(200):
        rate, near, nh, h = (
            rng.uniform(0, 1),
            rng.choice([0.0, rng.uniform(0, 3)]),
            rng.uniform(0.1, 3),
            rng.uniform(0, 50),
        )
        rr = risk(CENTRAL, rate, near, nh)
        arr = expected_preemptions_array(
            np.array([rate]), np.array([near]), np.array([rr.near_term_hours]), np.array([h])
        )
        assert float(arr[0]) == pytest.approx(expected_preemptions(rr, h))


def test_a_predicted_interruption_moves_the_job_inside_the_cooldown_when_it_pays() -> None:
    # same price in us-east1; 10 h left (margin 2 USD); the move costs 3 egress + 2.5 downtime.
    # An interruption of us-central1 expected with 90 % in the next hour (-ln 0.1 = 2.3 extra) costs
    # 2.3 x one preemption (10 USD/h x (0.25 changeover + half the checkpoint interval + restore))
    near = -math.log(0.1)
    kw = {"remaining_hours": 10.0, "cooldown_until": NOW + timedelta(hours=3)}
    d = decide(running_inputs(10.0, risks={CENTRAL: risk(CENTRAL, near=near)}, **kw))
    assert predicted_interruption(risk(CENTRAL, near=near))
    assert d.action == "move" and d.target_location == EAST
    assert d.terms.risk_usd < 0 and d.terms.pays
    assert any("ahead of a predicted interruption" in r for r in d.reasons)
    # no prediction, or one below the threshold: the cooldown holds
    for risks in ({}, {CENTRAL: risk(CENTRAL, near=PREDICTED_INTERRUPTION / 2)}):
        held = decide(running_inputs(10.0, risks=risks, **kw))
        assert held.action == "stay" and any("cooldown until" in r for r in held.reasons)
    # a long-run rate difference alone does not lift the cooldown, even when the move pays
    rates = {CENTRAL: risk(CENTRAL, rate=1.0), EAST: risk(EAST, rate=0.01)}
    held = decide(running_inputs(10.0, risks=rates, **kw))
    assert held.terms.pays and held.action == "stay"
    # a prediction that does not pay (a much dearer target) does not move it either
    assert decide(running_inputs(14.0, risks={CENTRAL: risk(CENTRAL, near=near)}, **kw)).action == "stay"


def test_the_availability_model_predicts_the_follower_of_a_co_interruption() -> None:
    gap = 1.0 / 6.0
    rng = random.Random(4)
    model = AvailabilityModel([CENTRAL, EAST, "gcp/europe-west4"], gap_hours=gap, horizon_hours=6.0)
    # us-east1 loses capacity one tick after us-central1, every time; europe-west4 never does
    up = True
    seen = []
    for t in range(24 * 6 * 20):
        if rng.random() < (gap / 3.0 if up else gap / 1.0):
            up = not up
        model.observe({CENTRAL: up, EAST: model._last.get(CENTRAL, True), "gcp/europe-west4": True})
        r_e = model.risk(EAST)
        if t > 24 * 6 * 10 and model._last.get(CENTRAL) is False and model._last.get(EAST) is True:
            seen.append(r_e)
    assert seen
    assert all(predicted_interruption(r) and r.near_term_hours == 1.0 for r in seen)
    assert not predicted_interruption(model.risk("gcp/europe-west4"))


def test_uniform_progress_line_hand_computed() -> None:
    # 60 h of 100 h left, 150 h to a deadline 200 h after submission: the line asks for 75 h left
    # by now (100 x 150 / 200), so the job is 30 h of waiting ahead of it
    assert required_progress_rate(60.0, 150.0) == pytest.approx(0.4)
    assert uniform_progress_slack_hours(60.0, 100.0, 150.0, 200.0) == pytest.approx(30.0)
    assert uniform_progress_slack_hours(80.0, 100.0, 150.0, 200.0) == pytest.approx(-10.0)  # behind
    assert ahead_of_uniform_progress(60.0, 100.0, 150.0, 200.0)
    assert not ahead_of_uniform_progress(80.0, 100.0, 150.0, 200.0)
    assert required_progress_rate(10.0, 0.0) == math.inf and required_progress_rate(0.0, 5.0) == 0.0
    assert uniform_progress_slack_hours(10.0, 0.0, 5.0, 10.0) == -math.inf  # no line without work
    assert later_share(100.0, 2.0) == pytest.approx(0.98) and later_share(10.0, 20.0) == 0.0


@pytest.mark.parametrize(("time_left", "action"), [(183.5, "queue"), (182.5, "place")])
def test_waiting_for_a_cheaper_price_needs_the_slack_to_cover_the_wait(time_left: float, action: str) -> None:
    """Not running, 90 h of 100 h left, a 200 h window: the slack to the line is time left - 180 h.
    East (cheaper) is preempted and expected back in 3 h: wait only with >= 3 h of slack."""
    job = make_job(submitted_at=(NOW - timedelta(hours=200.0 - time_left)).isoformat(), deadline_hours=200.0)
    d = decide(
        running_inputs(
            8.0,
            job=job,
            current=None,
            remaining_hours=90.0,
            no_spot={EAST: PREEMPTED},
            risks={EAST: RegionRisk(EAST, 0.0, 3.0, 0.0, 0)},
        )
    )
    assert d.action == action
    if action == "queue":
        assert any("waiting for gcp/us-east1" in r and "required rate 0.49" in r for r in d.reasons)
    else:
        assert d.target_location == CENTRAL


def _move_later_inputs(outage_hours: float) -> object:
    quotes = [
        make_quote(CENTRAL, 10.0),
        make_quote(WEST, 9.5),
        make_quote(EAST, 7.0),
        make_quote(CENTRAL, 30.0, market="on_demand"),
    ]
    return running_inputs(
        0.0,
        quotes=quotes,
        no_spot={EAST: PREEMPTED},
        risks={loc: RegionRisk(loc, 0.0, outage_hours, 0.0, 0) for loc in (CENTRAL, WEST, EAST)},
    )


def test_move_later_stays_for_a_cheaper_placement_coming_back_instead_of_moving_twice() -> None:
    # moving now to west nets (10 - 9.5) x 100 - 5.5 = 44.5 > the 20 margin; east (7.0, preempted) is
    # back in ~2 h: (10 - 7) x 98 - costs is far more, so stay now and move once
    on = PlacementParams(move_later=True)
    d = decide(_move_later_inputs(2.0), on)
    assert d.action == "stay" and d.terms is not None and d.terms.pays
    assert any(r.startswith("move later: gcp/us-east1") for r in d.reasons)
    # the option off (the default): move to west now
    off = decide(_move_later_inputs(2.0))
    assert off.action == "move" and off.target_location == WEST
    # east expected back only after 99 of the 100 h left: moving now to west pays more
    late = decide(_move_later_inputs(99.0), on)
    assert late.action == "move" and late.target_location == WEST
