"""Horizon planning: near-term predicted interruptions vs the long-run rate, in the score, the
economics and the cooldown."""

from __future__ import annotations

import math
import random
from datetime import timedelta

import numpy as np
import pytest

from spotshift.placement.availability import AvailabilityModel
from spotshift.placement.economics import decide
from spotshift.placement.horizon import (
    PREDICTED_INTERRUPTION,
    expected_preemptions,
    expected_preemptions_array,
    predicted_interruption,
)
from spotshift.placement.risk import RegionRisk
from tests.unit.placement.builders import NOW
from tests.unit.placement.test_economics import CENTRAL, EAST, running_inputs


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
