"""The online availability model: calibrated survival on traces it learns from, co-interruptions,
and its use as the risk of placement scoring."""

from __future__ import annotations

import random

import pytest

from spotshift.errors import ConfigError
from spotshift.placement.availability import AvailabilityModel
from spotshift.simulate.traces import generate_trace

GAP_H = 1.0 / 6.0


def _reliability(horizon_h: float) -> tuple[list[tuple[float, float, int]], float, float, float]:
    """Learn online on 12 generated zones (90 days each); per decile of predicted survival:
    (mean predicted, realised fraction, count); and the Brier scores of the model and of its prior."""
    zones = [f"gcp/zone-{k}" for k in range(12)]
    traces = {z: generate_trace(z, 24 * 90.0, seed=11).available for z in zones}
    n = len(traces[zones[0]])
    ahead = int(round(horizon_h / GAP_H))
    model = AvailabilityModel(zones, gap_hours=GAP_H, horizon_hours=horizon_h)
    prior = AvailabilityModel(zones, gap_hours=GAP_H, horizon_hours=horizon_h).survival(zones[0])
    pairs = []
    for t in range(n - ahead):
        model.observe({z: traces[z][t] for z in zones})
        for z in zones:
            if traces[z][t]:
                survived = all(traces[z][t + 1 : t + 1 + ahead])
                pairs.append((model.survival(z), 1.0 if survived else 0.0))
    pairs.sort()
    bins = []
    size = len(pairs) // 10
    for b in range(10):
        chunk = pairs[b * size : (b + 1) * size]
        bins.append(
            (sum(p for p, _ in chunk) / len(chunk), sum(o for _, o in chunk) / len(chunk), len(chunk))
        )
    brier = sum((p - o) ** 2 for p, o in pairs) / len(pairs)
    brier_prior = sum((prior - o) ** 2 for _, o in pairs) / len(pairs)
    overall = sum(p for p, _ in pairs) / len(pairs) - sum(o for _, o in pairs) / len(pairs)
    return bins, brier, brier_prior, overall


@pytest.mark.parametrize("horizon_h", [1.0, 3.0])
def test_survival_is_calibrated_per_decile_and_beats_the_prior(horizon_h: float) -> None:
    bins, brier, brier_prior, overall = _reliability(horizon_h)
    for pred, real, count in bins:
        assert count > 1000
        assert abs(pred - real) < 0.06, (horizon_h, pred, real)
    assert abs(overall) < 0.02
    assert brier < 0.9 * brier_prior


def test_co_interruptions_are_learned_and_lower_the_followers_survival() -> None:
    # zone b loses capacity 1-2 ticks after zone a does, 9 times in 10; zone c is independent
    rng = random.Random(3)
    n = 24 * 6 * 40
    a = generate_trace("a", n * GAP_H, seed=5).available
    c = generate_trace("c", n * GAP_H, seed=6).available
    b = [True] * n
    for t in range(1, n):
        if a[t - 1] and not a[t] and rng.random() < 0.9:
            lag = rng.choice([1, 2])
            for k in range(t + lag, min(n, t + lag + 8)):
                b[k] = False
    model = AvailabilityModel(["a", "b", "c"], gap_hours=GAP_H, horizon_hours=1.0)
    after = []
    for t in range(n):
        model.observe({"a": a[t], "b": b[t], "c": c[t]})
        if t > n // 2 and a[t - 1] and not a[t] and b[t]:
            after.append((model.survival("b", 1.0), model.survival("c", 1.0), model.co_probability("a", "b")))
    assert after
    base_b = model.estimate("b", 1.0)
    for s_b, s_c, p_ab in after:
        assert p_ab > 0.6
        assert s_b < 0.5 * s_c
    # an independent zone learns roughly its own base rate, which changes nothing
    assert model.co_probability("a", "c") < 0.3
    assert base_b.survival > 0.5


def test_risk_feeds_scoring_and_prior_applies_to_unknown_keys() -> None:
    model = AvailabilityModel(["gcp/x"], gap_hours=GAP_H, horizon_hours=6.0)
    r0 = model.risk("gcp/x")
    assert r0.preemptions_per_hour == pytest.approx(-__import__("math").log((12 / 18) ** 4) / 6)
    for _ in range(60):  # 10 h up, then one interruption
        model.observe({"gcp/x": True})
    model.observe({"gcp/x": False})
    r1 = model.risk("gcp/x")
    assert r1.observed_preemptions == 1 and r1.observed_hours == pytest.approx(10.0)
    assert model.survival("gcp/unknown") <= (12 / 18) ** 4  # the fresh interruption of gcp/x
    quiet = AvailabilityModel(["gcp/x"], gap_hours=GAP_H, horizon_hours=6.0)
    assert quiet.survival("gcp/unknown") == pytest.approx((12 / 18) ** 4)
    with pytest.raises(ConfigError):
        AvailabilityModel(gap_hours=0)
