"""Issue 19 in Dagster: ``private_pools`` bursts and repatriates, ``devenvs`` reports, the
``idle_downsize_sensor`` requests ``hibernate_job`` once per idle spell, and the job hibernates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg

from spotshift.clock import VirtualClock, load_clock
from spotshift.devenvs import process, runtime, state
from spotshift.devenvs.env import DevEnv, add_devenv
from spotshift.pools.scheduler import submit
from spotshift.pools.state import load_pool_state
from tests.migration_support import declare_pool_world, write_quotes

T0 = datetime(2025, 3, 3, 0, tzinfo=UTC)


def load_defs():
    import importlib

    import definitions

    return importlib.reload(definitions).defs


def _at(t: datetime) -> None:
    VirtualClock.starting(t, speed=0).save()  # frozen virtual time


def test_definitions_carry_the_issue_19_names(spotshift_home: Path) -> None:
    repo = load_defs().get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert {"devenvs", "private_pools"} <= keys
    assert "idle_downsize_sensor" in {s.name for s in repo.sensor_defs}
    assert "hibernate_job" in {j.name for j in repo.get_all_jobs()}


def test_private_pools_asset_bursts_and_brings_back(spotshift_home: Path) -> None:
    declare_pool_world(spotshift_home, dataset_location="aws/us-east-1", t0=T0)
    submit("dc1", "base", now=T0)
    doc = submit("dc1", "urgent", now=T0)
    assert [b["job"] for b in doc["burst"]] == ["urgent"]
    defs = load_defs()
    _at(T0 + timedelta(hours=8))
    result = dg.materialize(
        [defs.get_assets_def("private_pools")],
        instance=dg.DagsterInstance.ephemeral(),
        resources={"warehouse": defs.resources["warehouse"]},
    )
    assert result.success
    md = result.asset_materializations_for_node("private_pools")[0].metadata
    (rep,) = md["pools"].value
    assert rep["repatriations"] == 1 and rep["bursts"] == 1 and md["burst_hours"].value == 8.0
    assert [r["job"] for r in load_pool_state("dc1")["running"]] == ["urgent"]


def test_idle_sensor_requests_hibernate_job_once_and_the_job_hibernates(spotshift_home: Path) -> None:
    ws = spotshift_home / "ws"
    ws.mkdir()
    (ws / "notes.md").write_text("# idle\n" * 100)
    add_devenv(
        DevEnv(
            name="nb",
            workspace=str(ws),
            command="sleep 600",
            gpu_model="A100",
            gpu_count=8,
            team="research",
            location="aws/us-east-1",
        )
    )
    write_quotes("snap-1", T0, {"aws/us-east-1": 10.0})
    _at(T0)
    doc = runtime.start("nb", now=T0)
    try:
        defs = load_defs()
        instance = dg.DagsterInstance.ephemeral()
        sensor = defs.get_sensor_def("idle_downsize_sensor")
        _at(T0 + timedelta(hours=1))
        assert isinstance(sensor(dg.build_sensor_context(instance=instance)), dg.SkipReason)
        _at(T0 + timedelta(hours=5))
        res = sensor(dg.build_sensor_context(instance=instance))
        (req,) = res.run_requests
        assert req.run_key == f"nb:{T0.isoformat()}"  # the idle spell's identity, not now()
        again = sensor(dg.build_sensor_context(instance=instance))
        assert [r.run_key for r in again.run_requests] == [req.run_key]  # same spell, same key
        run = defs.get_job_def("hibernate_job").execute_in_process(
            run_config=req.run_config, instance=instance
        )
        assert run.success
        assert state.load_env_state("nb")["status"] == "hibernated" and not ws.exists()
        result = dg.materialize([defs.get_assets_def("devenvs")], instance=instance)
        md = result.asset_materializations_for_node("devenvs")[0].metadata
        assert md["waste_avoided_by_team"].value["research"]["gpu_hours"] == 0.0  # hibernated just now
        _at(T0 + timedelta(hours=7))
        result = dg.materialize([defs.get_assets_def("devenvs")], instance=instance)
        md = result.asset_materializations_for_node("devenvs")[0].metadata
        assert md["idle_gpu_hours_avoided"].value == 16.0 and md["usd_avoided"].value == 60.0
        assert load_clock().now() == T0 + timedelta(hours=7)
    finally:
        process.stop(doc.get("pid"), doc.get("pid_start"))
