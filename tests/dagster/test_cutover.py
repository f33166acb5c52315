"""Dagster side of a cutover: the stage sensor's run keys, ``cutover_job`` with its blocking checks,
the run-failure sensor's rollback, ``raw.cutovers`` rows, the replicas following each stage through
the launcher resource; windows come from the library as the router would write them (the router
itself is tested in tests/unit/serving/test_cutover_router.py). The source replicas are real
processes (``sleep``) the launcher drains with SIGTERM; target launches are real ``spotshift serve``
processes that exit at once (no endpoint declared here), so the target side stays empty."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from ops.cutover import cutover_job, cutover_rollback_job
from resources.compute import ReplicaLauncherResource
from resources.warehouse import WarehouseResource
from sensors.cutover import cutover_failure_sensor, cutover_stage_sensor
from spotshift import warehouse
from spotshift.clock import VirtualClock, load_clock
from spotshift.migration import endpoint_cutover as ec
from spotshift.serving import cutover as co
from spotshift.serving import replica_api as api

T0 = datetime(2026, 1, 5, tzinfo=UTC)


def _window(tgt_ms: float) -> co.Window:
    w = co.Window(0.0, 1.0)
    for i in range(30):
        w.source.add(50.0 + i % 3, True, 10, ec.usd_per_mtok(3.0, 2400))
        w.target.add(tgt_ms + i % 3, True, 10, ec.usd_per_mtok(1.8, 2400))
    w.mirrored = w.agreed = 10
    return w


def _default_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


@pytest.fixture
def world(spotshift_home: Path) -> Iterator[dict[str, Any]]:
    VirtualClock.starting(T0, 0.0).save()
    # SIGTERM as a fresh process has it: in the full suite one run's drains each waited the whole
    # 60 s stop timeout (the sleeps ignored SIGTERM, a disposition or mask left by an earlier test
    # in the same worker — not found yet) and the replicas stayed up
    procs = [subprocess.Popen(["sleep", "600"], preexec_fn=_default_sigterm) for _ in range(4)]
    for i, proc in enumerate(procs):
        api.register(
            api.ReplicaRecord(
                f"chat-s{i}",
                "chat",
                f"http://127.0.0.1:{9100 + i}",
                "gcp/us-central1",
                "spot",
                3.0,
                proc.pid,
                time.time(),
                "ck",
            )
        )
    ec.start(
        "chat",
        ec.StartOptions("aws/us-east-1", shadow="5:1h", stages="5:1h,100:0", usd_per_hour=1.8),
        record=False,
    )
    try:
        yield {
            "instance": dg.DagsterInstance.ephemeral(),
            "resources": {
                "warehouse": WarehouseResource(database=str(spotshift_home / "warehouse.duckdb")),
                "launcher": ReplicaLauncherResource(kind="local"),
            },
        }
    finally:
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.kill()
                proc.wait()


def _scaled(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    """What the replicas did in a run (the op's ``scaled`` output metadata)."""
    for e in result.all_events:
        if e.event_type_value == "STEP_OUTPUT":
            meta = e.event_specific_data.metadata
            if "scaled" in meta:
                return meta["scaled"].value
    raise AssertionError("no replica step in the run")


def _window_in(tgt_ms: float, hours: float = 0.0) -> co.CutoverState:
    if hours:
        load_clock().advance(hours * 3600).save()
    return co.update_state("chat", lambda st: co.decide(st, _window(tgt_ms), load_clock().now()))


def _tick(world: dict[str, Any], cursor: str | None) -> tuple[list[dg.RunRequest], str | None]:
    ctx = dg.build_sensor_context(instance=world["instance"], cursor=cursor, resources=world["resources"])
    data = cutover_stage_sensor.evaluate_tick(ctx)
    return list(data.run_requests or []), data.cursor


def _run(job: Any, world: dict[str, Any], request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    return job.execute_in_process(
        run_config=request.run_config,
        instance=world["instance"],
        resources=world["resources"],
        tags={**request.tags, "dagster/run_key": request.run_key},
        raise_on_error=False,
    )


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {
        e.event_specific_data.check_name: e.event_specific_data.passed
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def test_the_stage_sensor_advances_on_the_clock_and_runs_each_stage_once(world: dict[str, Any]) -> None:
    cid = co.require_state("chat").cutover_id
    assert _tick(world, None)[0] == []  # nothing finished yet
    _window_in(50.0)  # a passing window in shadow-5; its 1 h hold not over
    assert _tick(world, None)[0] == []
    load_clock().advance(3601).save()
    requests, cursor = _tick(world, None)  # the sensor advances on the clock: shadow-5 finished
    assert [r.run_key for r in requests] == [f"chat:{cid}:shadow-5"]
    assert co.require_state("chat").current.label == "live-5"
    again, cursor = _tick(world, cursor)
    assert again == []  # a re-evaluated tick requests nothing twice
    result = _run(cutover_job, world, requests[0])
    assert result.success
    assert _checks(result) == dict.fromkeys(co.CRITERIA, True)
    mats = [
        e.asset_key.to_user_string()
        for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION"
    ]
    assert mats == ["cutover_validation"]
    _window_in(50.0, hours=1.01)  # live-5 passes after its hold: promoted
    requests, cursor = _tick(world, cursor)
    assert [r.run_key for r in requests] == [f"chat:{cid}:live-5", f"chat:{cid}:live-100"]
    runs = [_run(cutover_job, world, r) for r in requests]
    assert all(r.success for r in runs)
    with warehouse.connect(read_only=True) as con:
        rows = con.execute("SELECT stage, status FROM raw.cutovers ORDER BY stage_index").fetchall()
    assert rows == [("shadow-5", "passed"), ("live-5", "passed"), ("live-100", "promoted")]
    # promoted: the source drained to its floor through the launcher (SIGTERM, process gone)
    scaled = _scaled(runs[0])
    assert scaled["phase"] == "promoted" and scaled["plan"] == {"source": 1, "target": 4}
    assert len([d for d in scaled["drained"] if d["side"] == "source"]) == 3
    assert scaled["peak"] <= 5
    assert len(api.live_replicas("chat")) == 1


def test_a_failed_check_fails_the_run_and_the_failure_sensor_rolls_back(world: dict[str, Any]) -> None:
    _window_in(50.0)
    load_clock().advance(3601).save()
    requests, cursor = _tick(world, None)
    assert _run(cutover_job, world, requests[0]).success
    st = _window_in(200.0)  # live-5: the target is 4x slower -> the router's analysis rolled back
    assert st.phase == "rolled_back"
    requests, _ = _tick(world, cursor)
    (req,) = requests
    assert req.run_key.endswith(":live-5")
    failed = _run(cutover_job, world, req)
    assert not failed.success
    checks = _checks(failed)
    assert checks["p99_latency"] is False and checks["error_rate"] is True
    failure = next(e for e in failed.all_events if e.event_type_value == "PIPELINE_FAILURE")
    ctx = dg.build_run_status_sensor_context(
        sensor_name="cutover_failure_sensor",
        dagster_event=failure,
        dagster_instance=world["instance"],
        dagster_run=world["instance"].get_run_by_id(failed.run_id),
    ).for_run_failure()
    rollback = cutover_failure_sensor(ctx)
    assert isinstance(rollback, dg.RunRequest) and rollback.run_key == f"cutover-rollback:{failed.run_id}"
    assert _run(cutover_rollback_job, world, rollback).success
    after = co.require_state("chat")
    assert after.phase == "rolled_back" and after.target_weight == 0.0
    assert _scaled(failed)["plan"] == {"source": 4, "target": 0}
    assert len([r for r in api.live_replicas("chat") if r.location == "gcp/us-central1"]) == 4
    with warehouse.connect(read_only=True) as con:
        statuses = dict(con.execute("SELECT stage, status FROM raw.cutovers").fetchall())
    assert statuses == {"shadow-5": "passed", "live-5": "rolled_back"}


def test_definitions_name_the_cutover_contract() -> None:
    from definitions import defs

    repo = defs.get_repository_def()
    assert repo.has_job("cutover_job") and repo.has_job("cutover_rollback_job")
    assert repo.has_sensor_def("cutover_stage_sensor") and repo.has_sensor_def("cutover_failure_sensor")
    graph = defs.resolve_asset_graph()
    key = dg.AssetKey("cutover_validation")
    assert key in graph.get_all_asset_keys()
    names = {k.name for k in graph.asset_check_keys if k.asset_key == key}
    assert names == set(co.CRITERIA)
    assert all(graph.get_check_spec(k).blocking for k in graph.asset_check_keys if k.asset_key == key)
