"""The inference control loop in Dagster: definitions load; ``inference_endpoints`` and
``traffic_policy`` materialize over a real registered replica; ``inference_autoscale_sensor`` asks for
one run per decision (a re-evaluated tick asks for the same run key, the next tick for none);
``scale_endpoint_job`` starts a real ``spotshift serve`` replica and later drains one; a replica's
preemption notice goes through the trainers' notice path and moves spot elsewhere."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from spotshift import warehouse
from spotshift.cli import main
from spotshift.serving import replica_api as api
from spotshift.serving.control import decision_to_doc, plan_scaling
from spotshift.serving.endpoints import get_endpoint
from spotshift.serving.launcher import LocalReplicaLauncher
from spotshift.serving.scaling_types import ScalerMemory, ScalingParams
from tests.training_support import declare_tiny_job
from tests.unit.placement.builders import make_quote

pytestmark = pytest.mark.slow

CENTRAL, EAST = "gcp/us-central1", "gcp/us-east1"
START_TIMEOUT_S = 240.0  # torch import + checkpoint verification on a loaded 2-core machine


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Job `tiny` trained in gcp/us-central1; endpoint `chat` (us-east users, gcp only); quotes for two
    regions: us-central1 spot 1.00 (< 0.6 x reserved 1.89), us-east1 spot 1.20 (not), on-demand 3.00."""
    home = tmp_path_factory.mktemp("inference") / "home"
    home.mkdir()
    keys = ("SPOTSHIFT_HOME", "DAGSTER_HOME", "SPOTSHIFT_WAREHOUSE", "SPOTSHIFT_CONFIG")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ["SPOTSHIFT_HOME"] = str(home)
    for k in keys[1:]:
        os.environ.pop(k, None)
    try:
        declare_tiny_job(home, total_steps=400, every=40)
        assert main(["train", "tiny", "--location", CENTRAL, "--steps", "40"]) == 0
        args = ["endpoints", "add", "chat", "--model", "tiny", "--slo-ms", "1000", "--users", "us-east=1"]
        assert main([*args, "--allow", "gcp/*"]) == 0
        now = datetime.now(UTC)
        quotes = [
            make_quote(CENTRAL, 1.0, gpu_count=1),
            make_quote(CENTRAL, 3.0, market="on_demand", gpu_count=1),
            make_quote(EAST, 1.2, gpu_count=1),
            make_quote(EAST, 3.0, market="on_demand", gpu_count=1),
        ]
        with warehouse.connect() as con:
            warehouse.append_rows(
                con,
                "main.gpu_quotes",
                [{**q.to_dict(), "observed_at": now, "snapshot_id": "q1", "polled_at": now} for q in quotes],
            )
        yield home
    finally:
        for rec in api.live_replicas("chat", include_draining=True):
            with contextlib.suppress(OSError):
                os.kill(rec.pid, signal.SIGKILL)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _defs() -> dg.Definitions:
    import definitions

    return importlib.reload(definitions).defs


def _usage(minutes_ago: float, tokens_s: float, replica_id: str) -> None:
    start = (datetime.now(UTC) - timedelta(minutes=minutes_ago)).replace(second=0, microsecond=0)
    row = {
        "window_start": start,
        "window_end": start + timedelta(minutes=1),
        "location": CENTRAL,
        "market": "on_demand",
        "requests": int(tokens_s * 60 / 40),
        "tokens": int(tokens_s * 60),
        "endpoint": "chat",
        "replica_id": replica_id,
    }
    warehouse.record_facts({"raw.inference_usage": [row]})


def _live(n: int, timeout_s: float = START_TIMEOUT_S) -> list[api.ReplicaRecord]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        live = api.live_replicas("chat", include_draining=True)
        if len(live) == n:
            return live
        time.sleep(0.5)
    raise AssertionError(
        f"expected {n} live replicas, have {api.live_replicas('chat', include_draining=True)}"
    )


def _meta(result: Any, key: str) -> dict[str, Any]:
    mats = [m for m in result.get_asset_materialization_events() if m.asset_key.to_user_string() == key]
    return {k: v.value for k, v in mats[0].materialization.metadata.items()}


def test_definitions_hold_the_inference_contract_names(home: Path) -> None:
    repo = _defs().get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert {"inference_endpoints", "traffic_policy"} <= keys
    sensor = repo.get_sensor_def("inference_autoscale_sensor")
    assert sensor.minimum_interval_seconds == 60 and sensor.job_name == "scale_endpoint_job"
    assert repo.get_job("scale_endpoint_job") is not None


def test_assets_sensor_and_scale_job_on_real_replicas(home: Path) -> None:
    defs = _defs()
    launcher = LocalReplicaLauncher()
    first = launcher.wait_registered(
        launcher.start("chat", EAST, "on_demand", usd_per_hour=3.0), START_TIMEOUT_S
    )
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("endpoints", ["chat"])
    resources = {"launcher": defs.resources["launcher"]}
    result = dg.materialize(
        [defs.get_assets_def("inference_endpoints"), defs.get_assets_def("traffic_policy")],
        instance=instance,
        partition_key="chat",
        resources=resources,
    )
    assert result.success
    inv = _meta(result, "inference_endpoints")
    assert inv["ready_replicas"] == 1 and inv["on_demand_replicas"] == 1 and inv["regions"] == 1
    assert inv["by_region"][EAST][0]["replica_id"] == first.replica_id
    pol = _meta(result, "traffic_policy")
    assert pol["weights"] == {first.replica_id: 1.0} and pol["violations"] == []
    assert "us-east: cheapest within the SLO" in pol["policy"]["weights"][0]["reasons"][0]

    # demand 3,000 tokens/s now: 1.2 x 3000 / 2400 -> 2 replicas wanted (us-east users: on-demand in
    # us-east1, the one spot-eligible region cannot carry the floor alone), one runs
    sensor = defs.get_sensor_def("inference_autoscale_sensor")
    ctx = lambda cursor: dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)  # noqa: E731
    assert sensor(ctx(None)).run_requests == []  # no usage measured yet: the hand-started replica stays
    _usage(20, 3000.0, first.replica_id)
    r1, r1_again = sensor(ctx(None)), sensor(ctx(None))
    assert len(r1.run_requests) == 1, r1
    assert [r.run_key for r in r1_again.run_requests] == [r1.run_requests[0].run_key]  # re-evaluated tick
    assert sensor(ctx(r1.cursor)).run_requests == []  # the next tick: nothing new, no second run
    run_key = r1.run_requests[0].run_key
    assert run_key.startswith("chat:")
    config = r1.run_requests[0].run_config
    decision = json.loads(config["ops"]["apply_scaling_decision"]["config"]["decision"])
    assert sum(x["count"] for x in decision["launches"]) == 1 and not decision["terminations"]
    rules = {r["location"]: r["allowed"] for r in decision["spot_rules"]}
    assert rules == {CENTRAL: True, EAST: False}  # 1.00 < 0.6 x 1.89; 1.20 is not
    assert decision["planned"] == [[EAST, "on_demand", 2]], decision["reasons"]

    job = defs.get_job_def("scale_endpoint_job")
    run = job.execute_in_process(run_config=config, instance=instance, resources=resources)
    assert run.success
    live = _live(2)
    added = next(r for r in live if r.replica_id != first.replica_id)
    launch = decision["launches"][0]
    assert (added.location, added.market) == (launch["location"], launch["market"])
    with warehouse.connect(read_only=True) as con:
        rows = con.execute(
            "SELECT action, launches FROM raw.scaling_decisions WHERE endpoint='chat'"
        ).fetchall()
    assert rows == [(decision["action"], 1)]

    # demand falls to 100 tokens/s: with no downscale delay, one replica is stopped (drained)
    _usage(1, 100.0, first.replica_id)
    plan = plan_scaling(
        get_endpoint("chat"),
        launcher,
        now=datetime.now(UTC),
        memory=ScalerMemory.from_json(json.loads(r1.cursor)["chat"]["memory"]),
        params=ScalingParams(downscale_delay_s=0.0),
    )
    assert len(plan.decision.terminations) == 1 and not plan.decision.launches, plan.decision.reasons
    gone = plan.decision.terminations[0].replica_id
    down = {
        "ops": {
            "apply_scaling_decision": {"config": {"decision": json.dumps(decision_to_doc(plan.decision))}}
        }
    }
    run = job.execute_in_process(run_config=down, instance=instance, resources=resources)
    assert run.success
    stopped = run.output_for_node("apply_scaling_decision")["stopped"]
    assert [(s["replica_id"], s["drained"]) for s in stopped] == [(gone, True)]
    assert [r.replica_id for r in api.live_replicas("chat", include_draining=True)] == [
        r.replica_id for r in live if r.replica_id != gone
    ]
    with warehouse.connect(read_only=True) as con:
        n = con.execute("SELECT count(*) FROM raw.scaling_decisions WHERE terminations = 1").fetchone()[0]
    assert n == 1


def test_replica_preemption_takes_the_notice_path_and_moves_spot_to_the_next_cheapest(home: Path) -> None:
    from spotshift.serving.notices import record_replica_notice
    from spotshift.training.preemption import PreemptionNotice

    now = datetime.now(UTC)
    montreal, virginia = "gcp/northamerica-northeast1", "gcp/us-east4"
    quotes = [
        make_quote(loc, price, market=market, gpu_count=1)
        for loc, spot in ((CENTRAL, 1.0), (EAST, 1.2), (montreal, 1.05), (virginia, 1.1))
        for market, price in (("spot", spot), ("on_demand", 3.0))
    ]
    with warehouse.connect() as con:
        warehouse.append_rows(
            con,
            "main.gpu_quotes",
            [{**q.to_dict(), "observed_at": now, "snapshot_id": "q2", "polled_at": now} for q in quotes],
        )
    _usage(0, 12_000.0, "load")
    ep, launcher = get_endpoint("chat"), LocalReplicaLauncher()
    before = plan_scaling(ep, launcher, now=now).decision
    spot_before = {loc for loc, m, _ in before.planned if m == "spot"}
    assert CENTRAL in spot_before, before.reasons

    notice = PreemptionNotice("gcp_metadata", now, now + timedelta(seconds=30), provider_ref="t1")
    notice.assign_id("chat-gcp-us-central1-1-1", CENTRAL)
    record_replica_notice("chat", "chat-gcp-us-central1-1-1", CENTRAL, notice)

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("regions", [CENTRAL])  # a quoted region: the sensor reads its store
    sensor = _defs().get_sensor_def("preemption_sensor")
    assert not getattr(sensor(dg.build_sensor_context(instance=instance)), "run_requests", None)

    after = plan_scaling(ep, launcher, now=now + timedelta(seconds=60)).decision
    spot_after = {loc for loc, m, _ in after.planned if m == "spot"}
    assert CENTRAL not in spot_after and spot_after, after.reasons
    assert sum(n for *_, n in after.planned) >= sum(n for *_, n in before.planned)


def test_the_live_autoscaler_never_launches_past_the_team_budget(home: Path) -> None:
    # the sensor's planning path reads the endpoint's team budget: over it, launches are withheld
    assert main(["budgets", "set", "frugal", "--monthly-usd", "0.01"]) == 0
    args = ["endpoints", "add", "capped", "--model", "tiny", "--slo-ms", "1000", "--users", "us-east=1"]
    assert main([*args, "--allow", "gcp/*", "--team", "frugal"]) == 0
    start = (datetime.now(UTC) - timedelta(minutes=5)).replace(second=0, microsecond=0)
    row = {
        "window_start": start, "window_end": start + timedelta(minutes=1), "location": EAST,
        "market": "on_demand", "requests": 4500, "tokens": 180000, "endpoint": "capped",
        "replica_id": "capped-r0",
    }  # fmt: skip
    warehouse.record_facts({"raw.inference_usage": [row]})
    launcher = LocalReplicaLauncher()
    capped = plan_scaling(get_endpoint("capped"), launcher, now=datetime.now(UTC)).decision
    assert capped.action == "hold" and not capped.launches, capped.reasons
    assert "past its 0.01 USD monthly limit" in capped.reasons[-1]
    assert main(["budgets", "set", "frugal", "--monthly-usd", "1000000"]) == 0
    funded = plan_scaling(get_endpoint("capped"), launcher, now=datetime.now(UTC)).decision
    assert funded.launches, funded.reasons
