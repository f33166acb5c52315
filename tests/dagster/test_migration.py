"""Issue 6 wiring: the sensors and the migration / recovery / rollback jobs, with real trainers.

The world of tests/migration_support.py (a tiny market, dataset and paced trainer); sensors evaluated with ``build_sensor_context``
against an ephemeral instance, jobs executed in process with explicit resources.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from ops.migration import migration_job, preemption_recovery_job, rollback_job
from resources.compute import ComputeBackendResource
from resources.keys import KeyProviderResource
from resources.stores import RegionStoresResource
from resources.warehouse import WarehouseResource
from sensors.preemption import preemption_sensor
from sensors.price_change import price_change_sensor
from sensors.run_status import migration_failure_sensor
from spotshift import registry, warehouse
from spotshift.checkpoint import compat
from spotshift.clock import load_clock
from spotshift.migration import contract
from spotshift.migration.plan import MovePlan
from spotshift.migration.state import load as load_move
from spotshift.placement.state import load_state
from spotshift.training.backend import open_backend
from spotshift.warehouse import first_row
from tests.migration_support import (
    AWS,
    AWS2,
    AZURE,
    JOB,
    START,
    declare_world,
    live_trainers,
    stop_all,
    wait_for_checkpoint,
    write_quotes,
)

CHAIN = [
    "dataset_fingerprints",
    "dataset_replicas",
    "checkpoints",
    "checkpoint_replicas",
    "retrain_run",
    "shadow_validation",
]


def _resources(home: Path) -> dict[str, Any]:
    return {
        "warehouse": WarehouseResource(database=str(home / "warehouse.duckdb")),
        "stores": RegionStoresResource(),
        "compute": ComputeBackendResource(),
        "keys": KeyProviderResource(),
    }


@pytest.fixture
def world(spotshift_home: Path) -> Iterator[dict[str, Any]]:
    """Job, dataset, first quote snapshot, a frozen clock with paced trainers; stops trainers after."""
    declare_world(spotshift_home)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("regions", [AWS, AWS2, AZURE])
    backend = open_backend("local")
    try:
        yield {
            "home": spotshift_home,
            "instance": instance,
            "resources": _resources(spotshift_home),
            "backend": backend,
        }
    finally:
        stop_all(backend)


def _tick(sensor: Any, world: dict[str, Any], cursor: str | None) -> tuple[list[Any], str | None]:
    ctx = dg.build_sensor_context(instance=world["instance"], cursor=cursor, resources=world["resources"])
    data = sensor.evaluate_tick(ctx)
    return list(data.run_requests or []), data.cursor


def _execute(
    job: Any, world: dict[str, Any], request: Any, op_selection: list[str] | None = None
) -> dg.ExecuteInProcessResult:
    """Run what a sensor requested, as the daemon would; ``op_selection`` stops it part-way."""
    return job.execute_in_process(
        run_config=request.run_config,
        instance=world["instance"],
        resources=world["resources"],
        tags={**request.tags, "dagster/run_key": request.run_key},
        op_selection=op_selection,
        raise_on_error=False,
    )


def _materialized(result: dg.ExecuteInProcessResult) -> list[str]:
    out: list[str] = []
    for e in result.all_events:
        if e.event_type_value == "ASSET_MATERIALIZATION":
            out.append(e.asset_key.to_user_string())
    return out


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {
        e.event_specific_data.check_name: e.event_specific_data.passed
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def _place(world: dict[str, Any]) -> str | None:
    requests, cursor = _tick(price_change_sensor, world, None)
    assert len(requests) == 1
    (placement,) = requests
    assert (
        placement.run_key.startswith(f"{JOB}:-->{AWS}:snap-1")
        and placement.tags[contract.TAG_TRIGGER] == "place"
    )
    again, cursor = _tick(price_change_sensor, world, cursor)
    assert again == []  # a re-evaluated tick requests no duplicate run
    result = _execute(migration_job, world, placement)
    assert result.success
    assert _materialized(result) == ["dataset_fingerprints", "dataset_replicas", "retrain_run"]
    (live,) = live_trainers(world["backend"])
    assert live.location == AWS and load_state(JOB).location == AWS
    wait_for_checkpoint(step=20)
    return cursor


@pytest.mark.slow
def test_price_move_runs_the_chain_in_order_and_a_failing_shadow_rolls_back(world: dict[str, Any]) -> None:
    # Azure runs another image: the move there is the first between these runtimes (a probe)
    registry.upsert(compat.SECTION, {"name": "azure", "torch": "2.13.0", "python": "3.11", "cuda": "12.4"})
    cursor = _place(world)

    # a week later Azure is much cheaper: the price sensor asks for exactly one move, with the contract key
    load_clock().advance(7 * 24 * 3600).save()
    write_quotes("snap-2", START + timedelta(days=7), {AWS: 10.0, AWS2: 12.0, AZURE: 4.0})
    requests, cursor = _tick(price_change_sensor, world, cursor)
    (move,) = requests
    assert move.run_key == f"{JOB}:{AWS}->{AZURE}:snap-2"
    assert _tick(price_change_sensor, world, cursor)[0] == []  # cursor: no duplicate
    with warehouse.connect() as con:
        actions = [
            r[0]
            for r in con.execute(
                "SELECT action FROM raw.decisions WHERE job = ? ORDER BY decided_at", [JOB]
            ).fetchall()
        ]
    assert actions[0] == "place" and actions[-1] == "move"

    result = _execute(migration_job, world, move)
    assert result.success, result.all_events[-1]
    assert _materialized(result) == CHAIN
    assert all(_checks(result).values()) and "loss_divergence" in _checks(result)
    (live,) = live_trainers(world["backend"])
    assert live.location == AZURE
    state = load_state(JOB)
    assert (state.location, state.status, state.last_move["from"]) == (AZURE, "running", AWS)
    with warehouse.connect() as con:
        (status, moved) = first_row(
            con, "SELECT status, bytes_moved FROM raw.migrations WHERE migration_id = ?", [move.run_key]
        )
    assert status == "cut_over" and moved > 0
    # the probation matched the shadow comparison: the runtime pair is proven, the probe marked as such
    with warehouse.connect() as con:
        facts = con.execute(
            "SELECT verdict, source_runtime, target_runtime FROM raw.checkpoint_compatibility WHERE run_id = ?",
            [result.run_id],
        ).fetchall()
        pair = compat.verdict(compat.load_matrix(con), compat.local_runtime(), compat.runtime_for(AZURE))
    assert sorted(f[0] for f in facts) == ["probing", "proven"]
    assert {f[1:] for f in facts} == {(compat.local_runtime().key, compat.runtime_for(AZURE).key)}
    assert pair.verdict == compat.PROVEN and result.run_id in pair.reason

    # a perturbed target (20x learning rate): the blocking shadow checks stop the move before cutover
    wait_for_checkpoint(step=state_step(world) + 10)
    plan = MovePlan(
        job=JOB,
        trigger="price",
        from_location=AZURE,
        to_location=AWS2,
        market="spot",
        instance_type="p4d.24xlarge",
        price_usd_hour=12.0,
        gpu_model="A100-40GB",
        gpu_count=8,
        snapshot_id="snap-2",
        run_key=f"{JOB}:{AZURE}->{AWS2}:perturbed",
    )
    bad = dg.RunRequest(
        run_key=plan.run_key,
        tags=plan.tags(),
        run_config=contract.move_run_config(plan.to_dict(), shadow_steps=6, perturb_learning_rate=0.05),
    )
    failed = _execute(migration_job, world, bad)
    assert not failed.success
    assert _materialized(failed) == CHAIN  # recorded, then blocked
    assert _checks(failed)["loss_divergence"] is False
    assert not any(
        e.step_key == "cut_over" for e in failed.all_events if e.event_type_value == "STEP_SUCCESS"
    )
    run = world["instance"].get_run_by_id(failed.run_id)
    recorded = load_move(JOB)  # the move ledger, not a run tag, keeps the plan for the rollback
    assert recorded is not None and recorded.run_id == failed.run_id and recorded.plan.to_location == AWS2

    # the run-failure sensor asks for the rollback; it resumes in the source and marks the target unfit
    failure = next(e for e in failed.all_events if e.event_type_value == "PIPELINE_FAILURE")
    ctx = dg.build_run_status_sensor_context(
        sensor_name="migration_failure_sensor",
        dagster_event=failure,
        dagster_instance=world["instance"],
        dagster_run=run,
    ).for_run_failure()
    rollback = migration_failure_sensor(ctx)
    assert isinstance(rollback, dg.RunRequest) and rollback.run_key == f"rollback:{failed.run_id}"
    result = _execute(rollback_job, world, rollback)
    assert result.success
    (live,) = live_trainers(world["backend"])
    state = load_state(JOB)
    assert live.location == AZURE and state.location == AZURE and AWS2 in state.unfit
    with warehouse.connect() as con:
        statuses = dict(con.execute("SELECT migration_id, status FROM raw.migrations").fetchall())
    assert statuses[plan.run_key] == "rolled_back"


def state_step(world: dict[str, Any]) -> int:
    from spotshift.training.runs import latest_ref

    ref = latest_ref(JOB, load_state(JOB).location)
    return ref["step"] if ref else 0


@pytest.mark.slow
def test_interrupted_migration_restarts_and_finishes_with_one_trainer(world: dict[str, Any]) -> None:
    _place(world)
    load_clock().advance(7 * 24 * 3600).save()
    write_quotes("snap-2", START + timedelta(days=7), {AWS: 10.0, AWS2: 12.0, AZURE: 4.0})
    (move,), _ = _tick(price_change_sensor, world, None)
    # the run dies after the target's probation (before the shadow comparison and the cutover)
    partial = _execute(migration_job, world, move, op_selection=["*resume_in_target"])
    assert partial.success and "shadow_validation" not in _materialized(partial)
    assert live_trainers(world["backend"]) == []  # drained, nothing started: never two trainers
    assert load_state(JOB).status == "migrating"
    # the price sensor leaves a migrating job alone
    assert _tick(price_change_sensor, world, None)[0] == []
    # restarted with the same plan, the run redoes what is missing and cuts over
    result = _execute(migration_job, world, move)
    assert result.success
    (live,) = live_trainers(world["backend"])
    assert live.location == AZURE and load_state(JOB).status == "running"


@pytest.mark.slow
def test_interrupted_migration_rolls_back_with_one_trainer(world: dict[str, Any]) -> None:
    _place(world)
    load_clock().advance(7 * 24 * 3600).save()
    write_quotes("snap-2", START + timedelta(days=7), {AWS: 10.0, AWS2: 12.0, AZURE: 4.0})
    (move,), _ = _tick(price_change_sensor, world, None)
    partial = _execute(migration_job, world, move, op_selection=["*sync_checkpoint"])
    assert partial.success and live_trainers(world["backend"]) == []
    request = dg.RunRequest(
        run_key=contract.rollback_run_key(partial.run_id),
        run_config=contract.rollback_run_config(JOB, failed_run_id=partial.run_id, reason="crashed"),
    )
    assert _execute(rollback_job, world, request).success
    (live,) = live_trainers(world["backend"])
    assert live.location == AWS and load_state(JOB).status == "running" and AZURE in load_state(JOB).unfit
    assert _execute(rollback_job, world, request).success  # idempotent
    assert len(live_trainers(world["backend"])) == 1


@pytest.mark.slow
def test_preemption_notice_to_recovery_elsewhere(world: dict[str, Any]) -> None:
    from spotshift.simulate.injector import PreemptionInjector
    from spotshift.simulate.traces import AvailabilityTrace

    gone = AvailabilityTrace(3600, (0,) * 48, "gone")  # AWS us-east-1 has no spot capacity at all
    # the simulated instance-metadata servers exist before any trainer starts, as on a real VM
    with PreemptionInjector({AWS: gone}, origin=START, backend=world["backend"]) as injector:
        _place(world)
        # well behind uniform progress: waiting for AWS capacity to return is not an option
        load_clock().advance(500 * 3600).save()
        (inj,) = injector.tick(load_clock().now())
        assert inj.location == AWS
        t0 = time.monotonic()
        requests: list[Any] = []
        cursor = None
        while not requests and time.monotonic() - t0 < 60:
            requests, cursor = _tick(preemption_sensor, world, cursor)
            time.sleep(0.2)
    (request,) = requests
    notice_id = request.run_key.split(":", 1)[1]
    assert request.run_key == f"{JOB}:{notice_id}"
    assert _tick(preemption_sensor, world, cursor)[0] == []  # no second recovery for one notice
    result = _execute(preemption_recovery_job, world, request)
    assert result.success
    assert "shadow_validation" not in _materialized(result) and "retrain_run" in _materialized(result)
    (live,) = live_trainers(world["backend"])
    assert live.location != AWS and load_state(JOB).location == live.location
    with warehouse.connect() as con:
        (kind, recovery_s) = first_row(
            con, "SELECT notice_kind, recovery_s FROM raw.preemptions WHERE notice_id = ?", [notice_id]
        )
    assert kind == "aws_imds" and recovery_s is not None and recovery_s >= 0


def test_preemption_sensor_cursor_survives_a_restart(world: dict[str, Any]) -> None:
    from spotshift.home import region_store_url
    from spotshift.sync.store_url import open_store

    store = open_store(region_store_url(AZURE))
    event = {
        "notice_id": "azure-abc",
        "job": JOB,
        "location": AZURE,
        "kind": "azure_scheduled_events",
        "noticed_at": START.isoformat(),
        "step": 40,
    }
    store.put_bytes("events/preemption/azure-abc.json", json.dumps(event).encode())
    (request,), cursor = _tick(preemption_sensor, world, None)
    assert request.run_key == f"{JOB}:azure-abc"
    assert request.run_config["ops"]["plan_recovery"]["config"]["location"] == AZURE
    # a restarted daemon hands the stored cursor back: nothing is requested twice
    assert _tick(preemption_sensor, world, json.loads(json.dumps(cursor)))[0] == []
    store.put_bytes("events/preemption/azure-bad.json", b"{not json")
    with pytest.raises(Exception, match="azure-bad.json"):
        _tick(preemption_sensor, world, cursor)


def test_migration_failure_sensor_skips_runs_without_a_plan(world: dict[str, Any]) -> None:
    result = migration_job.execute_in_process(
        run_config={
            "ops": {
                "plan_move": {
                    "config": {
                        "job": "nope",
                        "to_location": AWS,
                        "market": "spot",
                        "instance_type": "p4d.24xlarge",
                        "price_usd_hour": 1.0,
                        "trigger": "bogus",
                    }
                }
            }
        },
        instance=world["instance"],
        resources=world["resources"],
        raise_on_error=False,
    )
    assert not result.success
    run = world["instance"].get_run_by_id(result.run_id)
    failure = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
    ctx = dg.build_run_status_sensor_context(
        sensor_name="migration_failure_sensor",
        dagster_event=failure,
        dagster_instance=world["instance"],
        dagster_run=run,
    ).for_run_failure()
    out = migration_failure_sensor(ctx)
    assert isinstance(out, dg.SkipReason)
