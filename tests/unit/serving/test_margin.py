"""The router's prediction margin: the p99 of observed - predicted, kept under the SLO."""

from __future__ import annotations

import pytest

from spotshift.errors import ConfigError
from spotshift.serving.margin import PredictionMargin
from spotshift.serving.policy import InferenceTimeModel, ReplicaView, evaluate, route


def test_margin_is_the_p99_of_prediction_errors_never_negative_and_capped() -> None:
    m = PredictionMargin(every=1)
    for i in range(100):
        m.observe(100.0, 100.0 + i)  # errors 0..99 ms
    assert m.ms == pytest.approx(98.0)
    assert m.effective_slo(1000.0) == pytest.approx(902.0)
    early = PredictionMargin(every=1)
    for _ in range(10):
        early.observe(500.0, 100.0)  # answers faster than predicted: no negative margin
    assert early.effective_slo(1000.0) == 1000.0
    slow = PredictionMargin(every=1)
    for _ in range(10):
        slow.observe(0.0, 5000.0)
    assert slow.effective_slo(1000.0) == 500.0  # capped at half the SLO
    with pytest.raises(ConfigError):
        PredictionMargin(quantile=1.0)


def test_a_cheap_replica_filled_to_the_slo_at_the_mean_is_passed_over_once_the_tail_runs_late() -> None:
    cheap = ReplicaView("cheap", "http://c", "aws/us-east-1", "spot", 1.0)
    fast = ReplicaView("fast", "http://f", "gcp/us-east4", "on_demand", 3.0)
    model = InferenceTimeModel(prior_base_ms=100.0, prior_per_token_ms=0.0)
    outstanding = {"cheap": 8, "fast": 0}  # 8 ahead x 100 ms + 100 ms: ~900 ms predicted on cheap
    margin = PredictionMargin(every=1)
    pick = route(
        evaluate([cheap, fast], outstanding, "us-east", 10, model, margin.effective_slo(1000.0)), 0.0
    )
    assert pick is not None and pick.candidate.replica.replica_id == "cheap"
    for _ in range(50):
        margin.observe(900.0, 1150.0)  # the tail ran 250 ms past the predictions
    pick = route(
        evaluate([cheap, fast], outstanding, "us-east", 10, model, margin.effective_slo(1000.0)), 0.0
    )
    assert pick is not None and pick.candidate.replica.replica_id == "fast" and not pick.slo_violation
