"""The training assets, checks and op, materialized into a temporary SPOTSHIFT_HOME.

checkpoints -> checkpoint_replicas (full, then tensor delta) -> retrain_run (resume in the target)
-> shadow_validation: passing for a faithful resume; failing (blocking) for a changed learning rate,
which stops the asset downstream of it. Plus emergency_checkpoint on a live trainer.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from spotshift.warehouse import first_row
from tests.training_support import declare_tiny_job

GCP, AWS = "gcp/us-central1", "aws/us-east-1"


def test_definitions_expose_the_training_contracts() -> None:
    import definitions

    repo = definitions.defs.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert {"checkpoints", "checkpoint_replicas", "retrain_run", "shadow_validation"} <= keys
    checks = {
        k.name: k
        for k in repo.asset_graph.asset_check_keys
        if k.asset_key.to_user_string() == "shadow_validation" and not k.name.startswith("source_")
    }  # source_*: the dbt source tests of the raw tables shadow_validation writes
    assert set(checks) == {"loss_divergence", "grad_norms", "activations", "checkpoint_bytes"}
    assert all(repo.asset_graph.get_check_spec(k).blocking for k in checks.values())
    assert "emergency_checkpoint_job" in {j.name for j in repo.get_all_jobs()}
    assert {"compute", "keys", "warehouse"} <= set(definitions.build_resources())
    graph = repo.asset_graph
    assert graph.get(dg.AssetKey("retrain_run")).parent_keys >= {dg.AssetKey("checkpoint_replicas")}
    assert graph.get(dg.AssetKey("shadow_validation")).parent_keys == {dg.AssetKey("retrain_run")}


@dg.asset(partitions_def=dg.DynamicPartitionsDefinition(name="jobs"), deps=["shadow_validation"])
def cutover_probe() -> None:
    """Stands for what comes after shadow_validation (cutover): must not run after a failed validation."""


def _resources(home: Path) -> dict[str, Any]:
    from resources.compute import ComputeBackendResource
    from resources.keys import KeyProviderResource
    from resources.warehouse import WarehouseResource

    return {
        "warehouse": WarehouseResource(database=str(home / "warehouse.duckdb")),
        "compute": ComputeBackendResource(),
        "keys": KeyProviderResource(),
    }


def _meta(result: dg.ExecuteInProcessResult, key: str) -> dict[str, Any]:
    mats = result.asset_materializations_for_node(key)
    assert mats, f"{key} not materialized"
    return {k: v.value for k, v in mats[-1].metadata.items()}


@pytest.mark.slow
def test_training_chain_and_blocking_shadow_checks(spotshift_home: Path) -> None:
    from assets.checkpoints import checkpoint_replicas, checkpoints
    from assets.training import (
        activations,
        checkpoint_bytes,
        grad_norms,
        loss_divergence,
        retrain_run,
        shadow_validation,
    )

    checks = [loss_divergence, grad_norms, activations, checkpoint_bytes]
    declare_tiny_job(spotshift_home, total_steps=400, every=30)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("jobs", ["tiny"])
    instance.add_dynamic_partitions("regions", [GCP, AWS])
    res = _resources(spotshift_home)

    def run(assets: list, partition: Any, **kw: Any) -> dg.ExecuteInProcessResult:
        return dg.materialize(assets, partition_key=partition, instance=instance, resources=res, **kw)

    first = _meta(run([checkpoints], "tiny"), "checkpoints")
    assert first["mode"] == "trained" and first["step"] == 30 and first["location"] == GCP
    aws_key = dg.MultiPartitionKey({"job": "tiny", "region": AWS})
    rep1 = _meta(run([checkpoint_replicas], aws_key), "checkpoint_replicas")
    assert rep1["method"] == "full" and rep1["bytes_sent"] == rep1["bytes_full"]
    second = _meta(
        run([checkpoints], "tiny", run_config={"ops": {"checkpoints": {"config": {"steps": 10}}}}),
        "checkpoints",
    )
    assert second["step"] == 40 and second["steps_run"] == 10
    rep2 = _meta(run([checkpoint_replicas], aws_key), "checkpoint_replicas")
    assert rep2["method"] == "tensor_delta" and rep2["bytes_sent"] < rep2["bytes_full"] and rep2["step"] == 40
    gcp_key = dg.MultiPartitionKey({"job": "tiny", "region": GCP})
    assert _meta(run([checkpoint_replicas], gcp_key), "checkpoint_replicas")["method"] == "present"

    moved = _meta(
        run(
            [retrain_run],
            "tiny",
            tags={"spotshift/from": GCP, "spotshift/to": AWS},
            run_config={"ops": {"retrain_run": {"config": {"steps": 10}}}},
        ),
        "retrain_run",
    )
    assert moved["target_location"] == AWS and moved["source_location"] == GCP
    assert moved["step"] == 50 and moved["resumed_from"].startswith("s0000000040-")

    ok = run(
        [shadow_validation, *checks, cutover_probe],
        "tiny",
        run_config={"ops": {"shadow_validation": {"config": {"steps": 6}}}},
    )
    assert ok.success
    meta = _meta(ok, "shadow_validation")
    assert meta["passed"] is True and meta["source_location"] == GCP and meta["target_location"] == AWS
    assert meta["checkpoint"].startswith("s0000000040-")  # what retrain_run resumed from
    evals = {e.check_name: e for e in ok.get_asset_check_evaluations()}
    assert set(evals) == {"loss_divergence", "grad_norms", "activations", "checkpoint_bytes"}
    assert all(e.passed for e in evals.values())
    assert ok.asset_materializations_for_node("cutover_probe")

    bad = run(
        [shadow_validation, *checks, cutover_probe],
        "tiny",
        run_config={"ops": {"shadow_validation": {"config": {"steps": 6, "perturb_learning_rate": 0.01}}}},
        raise_on_error=False,
    )
    assert not bad.success
    bad_meta = _meta(bad, "shadow_validation")
    assert bad_meta["passed"] is False and bad_meta["max_loss_diff"] > 0.01
    failed = {e.check_name: e for e in bad.get_asset_check_evaluations()}
    assert (
        not failed["loss_divergence"].passed
        and failed["loss_divergence"].severity == dg.AssetCheckSeverity.ERROR
    )
    assert not bad.asset_materializations_for_node("cutover_probe")  # blocked

    from spotshift import warehouse

    with warehouse.connect(spotshift_home / "warehouse.duckdb") as con:
        passed = con.execute("select passed from raw.shadow_validations order by validated_at").fetchall()
        methods = con.execute("select method from raw.transfers order by started_at").fetchall()
        usage = first_row(con, "select count(*) from raw.compute_usage")[0]
    assert passed == [(True,), (False,)]
    assert methods == [("full",), ("tensor_delta",)]
    assert usage >= 3 + 4  # three training runs and four shadow runs


def test_shadow_check_results_carry_measured_values_as_numbers() -> None:
    """Every shadow check records its measured value and limit as plottable numbers."""
    import recording
    from spotshift.training.shadow import ShadowComparison, verdicts

    cmp = ShadowComparison(
        validation_id="v1",
        job="tiny",
        source_location="aws/us-east-1",
        target_location="gcp/us-central1",
        checkpoint_id="c" * 32,
        checkpoint="s6-cccc",
        steps=6,
        max_loss_diff=0.02,
        max_grad_norm_rel_diff=0.01,
        max_activation_rel_diff=0.03,
        checkpoint_bytes_equal=False,
        source_checkpoint_hash="a" * 64,
        target_checkpoint_hash="b" * 64,
        source_checkpoint_bytes=1000,
        target_checkpoint_bytes=1004,
        passed=False,
        reasons=[],
        thresholds={
            "max_loss_diff": 0.01,
            "max_grad_norm_rel_diff": 0.05,
            "max_activation_rel_diff": 0.05,
            "require_identical_checkpoint": False,
        },
    )
    checks = recording.shadow_checks(verdicts(cmp), "tiny")
    loss = checks["loss_divergence"]
    assert not loss.passed
    assert isinstance(loss.metadata["max_loss_diff"], dg.FloatMetadataValue)
    assert loss.metadata["max_loss_diff"].value == 0.02 and loss.metadata["limit"].value == 0.01
    assert (
        checks["grad_norms"].passed and checks["grad_norms"].metadata["max_grad_norm_rel_diff"].value == 0.01
    )
    assert checks["activations"].metadata["limit"].value == 0.05
    assert checks["checkpoint_bytes"].metadata["target_checkpoint_bytes"].value == 1004.0


@pytest.mark.slow
def test_emergency_checkpoint_op_stops_a_live_trainer(spotshift_home: Path) -> None:
    from ops.checkpoint import emergency_checkpoint_job
    from spotshift.training.backend import LocalProcessBackend
    from spotshift.training.runs import build_request

    declare_tiny_job(spotshift_home, total_steps=100000, every=100000)
    backend = LocalProcessBackend()
    backend.start(build_request("tiny", GCP, min_step_seconds=0.005))
    deadline = time.monotonic() + 120
    while (backend.progress("tiny") or 0) < 5:
        assert backend.status("tiny").alive
        assert time.monotonic() < deadline, "the trainer took no 5 steps within 120 s"
        time.sleep(0.02)
    defs = dg.Definitions(jobs=[emergency_checkpoint_job], resources=_resources(spotshift_home))
    job = defs.get_job_def("emergency_checkpoint_job")
    result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), tags={"spotshift/job": "tiny"})
    out = result.output_for_node("emergency_checkpoint")
    assert out["stopped"] is True and out["location"] == GCP and out["checkpoint"]["step"] >= 5
    assert not backend.status("tiny").alive
    again = job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), tags={"spotshift/job": "tiny"})
    assert again.output_for_node("emergency_checkpoint")["stopped"] is False  # idempotent: newest checkpoint
    assert again.output_for_node("emergency_checkpoint")["checkpoint"] == out["checkpoint"]
