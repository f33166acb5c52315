"""``placement_plan`` materializes per job partition into a temp SPOTSHIFT_HOME; the jobs sensor adds partitions."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from spotshift import registry, warehouse
from spotshift.clock import VirtualClock
from spotshift.jobs import add_job
from spotshift.placement import state
from tests.unit.placement.builders import make_job, make_quote


def load_defs():
    import importlib

    import definitions

    return importlib.reload(definitions).defs


def seed_quotes(snapshot: str = "s1") -> None:
    now = datetime(2025, 3, 1, tzinfo=UTC)
    quotes = [
        make_quote("gcp/us-central1", 10.0),
        make_quote("gcp/us-east1", 8.0),
        make_quote("gcp/us-central1", 30.0, market="on_demand"),
        make_quote("aws/us-east-1", 5.0, gpu_count=4, instance_type="p3.8xlarge"),
    ]
    with warehouse.connect() as con:
        warehouse.append_rows(
            con,
            "main.gpu_quotes",
            [
                {**q.to_dict(), "observed_at": q.observed_at, "snapshot_id": snapshot, "polled_at": now}
                for q in quotes
            ],
        )


def test_definitions_load_with_placement(spotshift_home: Path) -> None:
    repo = load_defs().get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert "placement_plan" in keys
    assert "declared_jobs_sensor" in {s.name for s in repo.sensor_defs}


def test_placement_plan_materializes_and_records(spotshift_home: Path) -> None:
    VirtualClock.starting(datetime(2025, 3, 1, 1, tzinfo=UTC), speed=0).save()  # frozen virtual time
    registry.upsert("datasets", {"name": "corpus", "location": "gcp/us-central1"})
    add_job(make_job(name="llm-ft"))
    seed_quotes()
    defs = load_defs()
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("jobs", ["llm-ft"])
    asset = defs.get_assets_def("placement_plan")
    result = dg.materialize(
        [asset],
        partition_key="llm-ft",
        instance=instance,
        resources={"warehouse": defs.resources["warehouse"]},
    )
    assert result.success
    mat = result.asset_materializations_for_node("placement_plan")[0]
    md = mat.metadata
    assert md["action"].value == "place" and md["target"].value == "gcp/us-east1"
    table = md["ranked_candidates"].value
    assert [r.data["location"] for r in table.records][:2] == ["gcp/us-east1", "gcp/us-central1"]
    assert {
        "effective_gpu_hour_usd",
        "transfer_penalty_gpu_hour_usd",
        "locality_bonus_gpu_hour_usd",
        "risk_gpu_hour_usd",
    } <= {c.name for c in table.schema.columns}
    assert "best-ranked feasible candidate" in md["decision"].value
    checks = result.get_asset_check_evaluations()
    assert [(c.check_name, c.passed) for c in checks] == [("target_within_job_limits", True)]
    limits = checks[0].metadata  # measured values as numbers the UI can plot
    assert isinstance(limits["violation_count"], dg.IntMetadataValue) and limits["violation_count"].value == 0
    assert isinstance(limits["target_usd_per_hour"], dg.FloatMetadataValue)
    assert limits["target_usd_per_hour"].value > 0
    if "max_usd_per_hour" in limits:  # only when the job sets a ceiling
        assert limits["target_usd_per_hour"].value <= limits["max_usd_per_hour"].value
    assert limits["target_topology_score"].value >= limits["min_topology_score"].value
    with warehouse.connect(read_only=True) as con:
        assert con.execute("select job, action, best_location from raw.decisions").fetchall() == [
            ("llm-ft", "place", "gcp/us-east1")
        ]
        n = con.execute("select count(*) from main.placement_candidates").fetchall()[0][0]
    assert n == 4

    # once running in us-east1 a new snapshot where us-central1 got much cheaper triggers a move decision
    state.record_placement(
        "llm-ft",
        location="gcp/us-east1",
        market="spot",
        instance_type="a2-highgpu-8g",
        now=datetime(2025, 3, 1, tzinfo=UTC),
    )
    with warehouse.connect() as con:
        warehouse.append_rows(
            con,
            "main.gpu_quotes",
            [
                {
                    **q.to_dict(),
                    "observed_at": q.observed_at,
                    "snapshot_id": "s2",
                    "polled_at": datetime(2025, 3, 2, tzinfo=UTC),
                }
                for q in [make_quote("gcp/us-central1", 2.0), make_quote("gcp/us-east1", 8.0)]
            ],
        )
    again = dg.materialize(
        [asset],
        partition_key="llm-ft",
        instance=instance,
        resources={"warehouse": defs.resources["warehouse"]},
    )
    md = again.asset_materializations_for_node("placement_plan")[0].metadata
    assert md["action"].value == "move" and md["target"].value == "gcp/us-central1"
    assert md["expected_savings_usd"].value > md["move_cost_usd"].value
    for key in ("expected_savings_usd", "move_cost_usd"):  # USD to the cent
        assert isinstance(md[key], dg.FloatMetadataValue) and md[key].value == round(md[key].value, 2)


def test_declared_jobs_sensor_adds_partitions(spotshift_home: Path) -> None:
    from sensors.jobs import declared_jobs_sensor as sensor

    instance = dg.DagsterInstance.ephemeral()
    skip = sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(skip, dg.SkipReason)
    registry.upsert("datasets", {"name": "corpus", "location": "gcp/us-central1"})
    add_job(make_job(name="a"))
    add_job(make_job(name="b"))
    res = sensor(dg.build_sensor_context(instance=instance))
    assert res.dynamic_partitions_requests[0].partition_keys == ["a", "b"]
    instance.add_dynamic_partitions("jobs", ["a", "b"])
    assert isinstance(sensor(dg.build_sensor_context(instance=instance)), dg.SkipReason)
