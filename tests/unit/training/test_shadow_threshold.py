"""The shadow loss-divergence rule at its edge: 0.01 (seed 000, "roll back when loss divergence > 0.01").

Every default that validates a move reads :data:`spotshift.training.shadow.MAX_LOSS_DIFF`: the
comparison's own thresholds, a move's :class:`~spotshift.migration.state.ShadowOptions` (run
config of ``migration_job`` and ``spotshift move``). A divergence just below passes, just above
fails, and the asset check's verdict is the same rule (it is the same function).
"""

from __future__ import annotations

import pytest

from spotshift.migration.state import ShadowOptions
from spotshift.training.shadow import ShadowComparison, ShadowThresholds, compare_runs, verdicts
from tests.unit.training.test_shadow import _side

RESUMED = {"content_hash": "c" * 64, "checkpoint_id": "s0000000001-" + "c" * 16}
KW = {
    "job": "j",
    "source_location": "gcp/us-central1",
    "target_location": "aws/us-east-1",
    "resumed": RESUMED,
}


def _compare(divergence: float, thresholds: ShadowThresholds) -> ShadowComparison:
    return compare_runs(_side([3.0, 2.5]), _side([3.0, 2.5 + divergence]), thresholds=thresholds, **KW)


@pytest.mark.parametrize(
    "thresholds",
    [ShadowThresholds(), ShadowThresholds(max_loss_diff=ShadowOptions().max_loss_diff)],
    ids=["comparison-default", "move-default"],
)
def test_loss_divergence_just_below_passes_and_just_above_fails(thresholds: ShadowThresholds) -> None:
    below = _compare(0.0099, thresholds)
    above = _compare(0.0101, thresholds)
    assert below.passed and below.reasons == []
    assert not above.passed and above.reasons == [f"loss divergence {above.max_loss_diff:.4g} > 0.01"]
    # the asset check `loss_divergence` converts this same verdict, on the recorded comparison
    for cmp, expected in ((below, True), (above, False)):
        recorded = ShadowComparison.from_dict({**cmp.to_dict(), "loss_curves": {}})
        (verdict,) = [v for v in verdicts(recorded) if v.name == "loss_divergence"]
        assert verdict.passed is expected and verdict.blocking


def test_non_finite_losses_fail_every_reader() -> None:
    nan = compare_runs(_side([3.0]), _side([float("nan")]), thresholds=ShadowThresholds(), **KW)
    assert not nan.passed
    (verdict,) = [
        v for v in verdicts(ShadowComparison.from_dict(nan.to_dict())) if v.name == "loss_divergence"
    ]
    assert not verdict.passed
