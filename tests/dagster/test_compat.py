"""``checkpoint_compatibility`` and the move chain's compatibility gate, in Dagster.

The proven pair after a successful move is asserted in test_migration.py's price move (a real
probation matched the shadow comparison); here: the asset materializes the matrix, and a known-bad
pair stops ``migration_job`` in ``plan_move`` before any byte moves (no transfer, nothing in the
target's store, no move in the ledger, nothing for the failure sensor to roll back).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from assets.checkpoints import checkpoint_compatibility
from ops.migration import migration_job
from resources.compute import ComputeBackendResource
from resources.keys import KeyProviderResource
from resources.stores import RegionStoresResource
from resources.warehouse import WarehouseResource
from sensors.run_status import migration_failure_sensor
from spotshift import registry, warehouse
from spotshift.checkpoint import compat
from spotshift.clock import virtual_now
from spotshift.migration import contract
from spotshift.migration.plan import MovePlan
from spotshift.migration.state import load as load_move
from spotshift.sync.store_url import open_store
from spotshift.training.runs import store_url_for
from tests.fixtures_costs import generate_facts
from tests.migration_support import AWS, AZURE, JOB, declare_world, write_checkpoint_in


def _resources(home: Path) -> dict[str, Any]:
    return {
        "warehouse": WarehouseResource(database=str(home / "warehouse.duckdb")),
        "stores": RegionStoresResource(),
        "compute": ComputeBackendResource(),
        "keys": KeyProviderResource(),
    }


def test_checkpoint_compatibility_materializes_the_matrix(spotshift_home: Path) -> None:
    warehouse.record_facts({compat.TABLE: generate_facts()["checkpoint_compatibility"]})
    result = dg.materialize([checkpoint_compatibility], resources=_resources(spotshift_home))
    assert result.success
    (mat,) = result.asset_materializations_for_node("checkpoint_compatibility")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert (meta["proven"], meta["known_bad"]) == (1, 1)
    verdicts = {(p["target_runtime"], p["verdict"]) for p in meta["pairs"]}
    assert ("torch=2.13.0 python=3.11 cuda=12.4 nccl=2.21.5", "proven") in verdicts
    assert "known_bad" in meta["matrix"] and meta["runtimes"]["local"]["declared_by"] == "local"


@pytest.fixture
def refused_world(spotshift_home: Path) -> dict[str, Any]:
    """A checkpoint of tiny in AWS written by this runtime, Azure declared with an old CUDA image, and
    the pair recorded known bad by an earlier move."""
    declare_world(spotshift_home)
    registry.upsert(compat.SECTION, {"name": "azure", "torch": "2.9.1", "python": "3.10", "cuda": "12.1"})
    ref = write_checkpoint_in(AWS)
    fact = compat.compat_fact(
        run_id="earlier-move",
        job=JOB,
        checkpoint_id=ref.checkpoint_id,
        source_location=AWS,
        target_location=AZURE,
        source=compat.local_runtime(),
        target=compat.runtime_for(AZURE),
        verdict=compat.KNOWN_BAD,
        reason="probation failed in the target: the checkpoint did not load",
        recorded_at=virtual_now(),
    )
    warehouse.record_facts({compat.TABLE: [fact]})
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("regions", [AWS, AZURE])
    return {"home": spotshift_home, "instance": instance, "resources": _resources(spotshift_home)}


def test_a_known_bad_pair_refuses_the_move_before_any_byte_moves(refused_world: dict[str, Any]) -> None:
    plan = MovePlan(
        job=JOB,
        trigger="price",
        from_location=AWS,
        to_location=AZURE,
        market="spot",
        instance_type="p4d.24xlarge",
        price_usd_hour=4.0,
        gpu_model="A100-40GB",
        gpu_count=8,
        snapshot_id="snap-1",
        run_key=f"{JOB}:{AWS}->{AZURE}:snap-1",
    )
    result = migration_job.execute_in_process(
        run_config=contract.move_run_config(plan.to_dict(), shadow_steps=4),
        instance=refused_world["instance"],
        resources=refused_world["resources"],
        tags={**plan.tags(), "dagster/run_key": plan.run_key},
        raise_on_error=False,
    )
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert [e.step_key for e in failures] == [contract.PLAN_MOVE_OP]
    error = failures[0].event_specific_data.error.cause  # what the op raised, wrapped by Dagster
    assert error.cls_name == "IncompatibleCheckpoint"  # typed, not a generic failure
    assert "refused" in error.message and "did not load" in error.message
    assert not any(e.event_type_value == "ASSET_MATERIALIZATION" for e in result.all_events)
    # not a byte moved: no transfer recorded, the target's store is empty, the move never began
    with warehouse.connect() as con:
        assert con.execute("SELECT count(*) FROM raw.transfers").fetchone() == (0,)
    assert list(open_store(store_url_for(AZURE)).list_keys("")) == []
    assert load_move(JOB) is None
    # and the failure sensor has nothing to roll back
    run = refused_world["instance"].get_run_by_id(result.run_id)
    failure = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
    ctx = dg.build_run_status_sensor_context(
        sensor_name="migration_failure_sensor",
        dagster_event=failure,
        dagster_instance=refused_world["instance"],
        dagster_run=run,
    ).for_run_failure()
    assert isinstance(migration_failure_sensor(ctx), dg.SkipReason)
