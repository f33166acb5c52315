"""Shadow comparison: a faithful resume passes, a perturbed one (changed learning rate) fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from spotshift.checkpoint.keys import LocalKeyProvider
from spotshift.checkpoint.migrate import migrate_checkpoint
from spotshift.errors import ConfigError
from spotshift.home import region_store_url
from spotshift.sync.store_url import open_store
from spotshift.training.backend import LocalProcessBackend
from spotshift.training.runs import build_request, run_training
from spotshift.training.shadow import ShadowThresholds, compare_runs
from spotshift.training.shadow_run import run_shadow_validation
from tests.training_support import declare_tiny_job

GCP, AWS = "gcp/us-central1", "aws/us-east-1"


@pytest.mark.slow
def test_faithful_resume_passes_and_changed_learning_rate_fails(spotshift_home: Path) -> None:
    declare_tiny_job(spotshift_home, total_steps=200, every=25)
    backend = LocalProcessBackend()
    run_training(backend, build_request("tiny", GCP, steps=25))
    with pytest.raises(ConfigError, match="migrate it first"):
        run_shadow_validation(backend, "tiny", source_location=GCP, target_location=AWS, steps=5)
    migrate_checkpoint(
        open_store(region_store_url(GCP)), "tiny", open_store(region_store_url(AWS)), LocalKeyProvider()
    )

    ok = run_shadow_validation(backend, "tiny", source_location=GCP, target_location=AWS, steps=8)
    assert ok.passed and ok.reasons == []
    assert ok.max_loss_diff == 0.0 and ok.max_grad_norm_rel_diff == 0.0 and ok.max_activation_rel_diff == 0.0
    assert ok.checkpoint_bytes_equal and ok.source_checkpoint_hash == ok.target_checkpoint_hash
    assert len(ok.source_losses) == 8 and ok.steps == 8

    bad = run_shadow_validation(
        backend, "tiny", source_location=GCP, target_location=AWS, steps=8, perturb={"learning_rate": 1e-2}
    )
    assert not bad.passed and bad.max_loss_diff > 0.01
    assert any(r.startswith("loss divergence") for r in bad.reasons)
    assert not bad.checkpoint_bytes_equal and bad.perturb == {"learning_rate": 1e-2}
    row = bad.row()
    assert row["passed"] is False and row["checkpoint_id"] == ok.checkpoint_id and row["steps"] == 8


def _side(losses: list[float], grad: float = 1.0, std: float = 1.0, h: str = "a") -> dict:
    steps = [
        {"step": i + 1, "loss": x, "grad_norm": grad, "activations": {"blocks.0": [0.01, std, 4.0]}}
        for i, x in enumerate(losses)
    ]
    return {"steps": steps, "checkpoint": {"content_hash": h, "plain_bytes": 10}}


def test_comparison_thresholds() -> None:
    resumed = {"content_hash": "c" * 64, "checkpoint_id": "s0000000001-" + "c" * 16}
    kw = {"job": "j", "source_location": GCP, "target_location": AWS, "resumed": resumed}
    same = compare_runs(_side([3.0, 2.9]), _side([3.0, 2.9]), thresholds=ShadowThresholds(), **kw)
    assert same.passed and same.checkpoint_bytes_equal
    # GPU-like noise: tiny differences pass (bits differ: a warning, not a failure, by default)
    noisy = compare_runs(
        _side([3.0, 2.9]), _side([3.0, 2.9004], grad=1.001, h="b"), thresholds=ShadowThresholds(), **kw
    )
    assert noisy.passed and not noisy.checkpoint_bytes_equal
    strict = ShadowThresholds(require_identical_checkpoint=True)
    assert not compare_runs(_side([3.0]), _side([3.0], h="b"), thresholds=strict, **kw).passed
    grad = compare_runs(_side([3.0]), _side([3.0], grad=1.2), thresholds=ShadowThresholds(), **kw)
    assert not grad.passed and grad.reasons[0].startswith("gradient-norm")
    act = compare_runs(_side([3.0]), _side([3.0], std=1.5), thresholds=ShadowThresholds(), **kw)
    assert not act.passed and act.reasons[0].startswith("activation")
    nan = compare_runs(_side([3.0]), _side([float("nan")]), thresholds=ShadowThresholds(), **kw)
    assert not nan.passed
