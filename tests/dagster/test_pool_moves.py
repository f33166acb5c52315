"""Issue 19 in Dagster: ``pool_move_sensor`` turns the pools' bursts and returns into ``migration_job``
runs with deterministic run keys (once: a key with a ``raw.migrations`` row is done), adds the pool's
site to the ``regions`` partitions, and ``private_pools`` records the ledger as ``raw.pool_events``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from spotshift import warehouse
from spotshift.pools.scheduler import submit
from tests.dagster.test_hybrid import load_defs
from tests.migration_support import declare_pool_world

T0 = datetime(2025, 3, 3, 0, tzinfo=UTC)


def test_pool_move_sensor_requests_each_move_once(spotshift_home: Path) -> None:
    declare_pool_world(spotshift_home, dataset_location="onprem/dc1", t0=T0)
    submit("dc1", "base", now=T0)
    submit("dc1", "urgent", now=T0)

    defs = load_defs()
    sensor = defs.get_sensor_def("pool_move_sensor")
    instance = dg.DagsterInstance.ephemeral()
    resources = {k: defs.resources[k] for k in ("warehouse", "compute")}
    result = sensor(dg.build_sensor_context(instance=instance, definitions=defs, resources=resources))
    keys = {r.run_key: r for r in result.run_requests}
    place = f"base:-->onprem/dc1:pool-dc1@{T0.isoformat()}"
    burst = f"urgent:-->aws/us-east-1:pool-dc1@{T0.isoformat()}"
    assert set(keys) == {place, burst}
    config = keys[burst].run_config["ops"]["plan_move"]["config"]
    assert (config["trigger"], config["to_location"], config["from_location"]) == (
        "burst",
        "aws/us-east-1",
        "",
    )
    assert keys[place].run_config["ops"]["plan_move"]["config"]["market"] == "owned"
    assert result.dynamic_partitions_requests[0].partition_keys == ["onprem/dc1"]
    # the ledger is in the warehouse; a move with a raw.migrations row is not requested again
    with warehouse.connect() as con:
        events = con.execute("SELECT job, event FROM raw.pool_events ORDER BY event_id").fetchall()
        assert ("urgent", "burst") in events and ("base", "started") in events
        con.execute(
            "INSERT INTO raw.migrations (migration_id, job, trigger, status) VALUES (?, 'urgent', 'burst', 'cut_over')",
            [burst],
        )
    again = sensor(dg.build_sensor_context(instance=instance, definitions=defs, resources=resources))
    assert {r.run_key for r in again.run_requests} == {place}
