"""The routing rule: SLO filter, 80/20 cheapest/fastest split, least outstanding, fallback, weights."""

from __future__ import annotations

import math
import random

import pytest

from spotshift.errors import ConfigError
from spotshift.serving.latency import rtt_ms
from spotshift.serving.policy import (
    InferenceTimeModel,
    ReplicaView,
    evaluate,
    route,
    traffic_policy,
)

# us-east users: aws/us-east-1 is the same metro (~2 ms), gcp/us-west1 ~65 ms, aws/ap-southeast-1 ~215 ms
NEAR = ReplicaView("near", "http://127.0.0.1:1", "aws/us-east-1", "on_demand", 4.0)
MID = ReplicaView("mid", "http://127.0.0.1:2", "gcp/us-west1", "spot", 1.5)
FAR = ReplicaView("far", "http://127.0.0.1:3", "aws/ap-southeast-1", "spot", 0.5)


def model(ms: float = 50.0) -> InferenceTimeModel:
    return InferenceTimeModel(prior_base_ms=ms, prior_per_token_ms=0.0)


def pick(replicas, draws, outstanding=None, slo=200.0, tokens=64, m=None):
    cands = evaluate(replicas, outstanding or {}, "us-east", tokens, m or model(), slo)
    return [route(cands, d) for d in draws]


def test_slo_filter_drops_replicas_whose_round_trip_breaks_the_slo() -> None:
    assert rtt_ms("us-east", FAR.location) + 50 > 200  # the premise: far is cheapest but too far
    rng = random.Random(0)
    chosen = {
        c.candidate.replica.replica_id for c in pick([NEAR, MID, FAR], [rng.random() for _ in range(500)])
    }
    assert "far" not in chosen and chosen == {"near", "mid"}


def test_eighty_twenty_split_is_statistically_right_and_seeded() -> None:
    rng = random.Random(0)  # seed 000
    n = 20_000
    choices = pick([NEAR, MID, FAR], [rng.random() for _ in range(n)])
    cheap = sum(c.kind == "cheapest" for c in choices)
    assert all(c.candidate.replica.replica_id == ("mid" if c.kind == "cheapest" else "near") for c in choices)
    sigma = math.sqrt(0.8 * 0.2 / n)
    assert abs(cheap / n - 0.8) < 4 * sigma, cheap / n
    rng2 = random.Random(0)
    again = pick([NEAR, MID, FAR], [rng2.random() for _ in range(n)])
    assert [c.candidate.replica.replica_id for c in again] == [
        c.candidate.replica.replica_id for c in choices
    ]


def test_queue_delay_from_in_flight_counts_moves_traffic_off_a_busy_replica() -> None:
    # mid (cheapest) with 3 requests queued: 65 + 3 x 50 + 50 > 200 -> filtered, near takes all
    choices = pick([NEAR, MID], [0.1] * 10, outstanding={"mid": 3})
    assert {c.candidate.replica.replica_id for c in choices} == {"near"}
    assert not any(c.slo_violation for c in choices)


def test_least_outstanding_spreads_within_the_cheapest_region() -> None:
    a = ReplicaView("a", "http://127.0.0.1:4", "gcp/us-west1", "spot", 1.5, slots=8)
    b = ReplicaView("b", "http://127.0.0.1:5", "gcp/us-west1/us-west1-b", "spot", 1.5, slots=8)
    (c,) = pick([NEAR, a, b], [0.0], outstanding={"a": 3, "b": 1})
    assert c.candidate.replica.replica_id == "b"
    (c,) = pick([NEAR, a, b], [0.0], outstanding={"a": 0, "b": 1})
    assert c.candidate.replica.replica_id == "a"


def test_no_replica_within_the_slo_goes_to_the_fastest_and_flags_a_violation() -> None:
    choices = pick([MID, FAR], [0.1, 0.9], slo=60.0)
    assert all(c.kind == "fallback" and c.slo_violation for c in choices)
    assert {c.candidate.replica.replica_id for c in choices} == {"mid"}
    assert pick([], [0.5]) == [None]


def test_draining_replicas_get_no_traffic() -> None:
    drained = ReplicaView("mid", MID.url, MID.location, "spot", 1.5, state="draining")
    assert {c.candidate.replica.replica_id for c in pick([NEAR, drained], [0.1, 0.9])} == {"near"}


def test_inference_time_model_learns_tokens_to_ms_online() -> None:
    m = InferenceTimeModel(prior_base_ms=500.0, prior_per_token_ms=10.0)
    rng = random.Random(1)
    for _ in range(300):
        tokens = rng.randint(10, 200)
        m.observe("r1", tokens, 12.0 + 0.5 * tokens + rng.gauss(0, 1))
    base, slope = m.coefficients("r1")
    assert abs(base - 12.0) < 3 and abs(slope - 0.5) < 0.05
    assert abs(m.predict("r1", 100) - 62.0) < 3
    assert abs(m.predict("unseen", 100) - 62.0) < 3  # pooled fit for a replica without samples


def test_inference_time_model_prediction_follows_every_observation() -> None:
    # the fit is cached between observations (the router predicts on every request): each new
    # observation must still move the next prediction, for the replica and for the pooled fit
    m = InferenceTimeModel(prior_base_ms=20.0, prior_per_token_ms=0.0, decay=0.5)
    for _ in range(5):
        m.observe("r1", 10, 20.0)
    before, pooled = m.predict("r1", 10), m.predict("unseen", 10)
    m.observe("r1", 10, 200.0)  # the replica slowed down
    assert m.predict("r1", 10) > before + 50
    assert m.predict("unseen", 10) > pooled + 50


def test_traffic_policy_weights_follow_the_rule() -> None:
    p = traffic_policy("chat", [NEAR, MID, FAR], {"us-east": 1.0}, model(), 200.0)
    w = {r.replica_id: r.weight for r in p.weights}
    assert w == {"near": 0.2, "mid": 0.8, "far": 0.0}
    assert p.integer_weights() == {"near": 20, "mid": 80, "far": 0}
    assert p.violations == ()
    mixed = traffic_policy("chat", [NEAR, FAR], {"us-east": 0.5, "ap-southeast": 0.5}, model(), 200.0)
    w = {r.replica_id: r.weight for r in mixed.weights}
    assert w == {"near": 0.5, "far": 0.5} and math.isclose(sum(w.values()), 1.0)
    far_reasons = next(r.reasons for r in mixed.weights if r.replica_id == "far")
    assert any("ap-southeast: cheapest" in s for s in far_reasons)
    late = traffic_policy("chat", [FAR], {"us-east": 1.0}, model(), 200.0)
    assert late.violations == ("us-east",) and late.weights[0].weight == 1.0
    with pytest.raises(ConfigError, match="user shares"):
        traffic_policy("chat", [NEAR], {}, model(), 200.0)


def test_bad_replica_fields_raise_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="not in the latency table"):
        ReplicaView("x", "http://127.0.0.1:1", "aws/mars-1")
    with pytest.raises(ConfigError, match="slots"):
        ReplicaView("x", "http://127.0.0.1:1", "aws/us-east-1", slots=0)
