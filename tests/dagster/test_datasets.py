"""The datasets assets: definitions load, fingerprints and replicas materialize, the replica check bites."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from assets.datasets import dataset_fingerprints, dataset_replicas, replica_matches_fingerprint
from resources.stores import RegionStoresResource
from resources.warehouse import WarehouseResource
from sensors.datasets import dataset_registry_sensor
from spotshift import warehouse
from spotshift.home import warehouse_path
from spotshift.sync.chunking import ChunkParams
from spotshift.sync.datasets import Dataset, add_dataset
from spotshift.sync.fingerprint import fingerprint

HOME, TARGET = "gcp/us-central1", "aws/us-east-1"
PARAMS = ChunkParams.resolve(16 * 1024, 64 * 1024, 256 * 1024)


def test_definitions_load_with_datasets_assets_check_and_sensor() -> None:
    import definitions

    repo = definitions.defs.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert {"dataset_fingerprints", "dataset_replicas"} <= keys
    assert "dataset_registry_sensor" in {s.name for s in repo.sensor_defs}
    checks = {k.name for k in repo.asset_graph.asset_check_keys}
    assert "replica_matches_fingerprint" in checks
    assert "stores" in definitions.defs.resources


@pytest.fixture
def setup(spotshift_home: Path, tmp_path: Path) -> tuple[dg.Definitions, dg.DagsterInstance, Path]:
    src = tmp_path / "corpus"
    (src / "shard").mkdir(parents=True)
    for i in range(3):
        (src / "shard" / f"part{i}.txt").write_bytes(bytes(range(256)) * (2000 + i * 500))
    (src / "README").write_text("tiny corpus\n")
    add_dataset(Dataset.declare("corpus", str(src), location=HOME, params=PARAMS))
    instance = dg.DagsterInstance.ephemeral()
    defs = dg.Definitions(
        assets=[dataset_fingerprints, dataset_replicas],
        asset_checks=[replica_matches_fingerprint],
        sensors=[dataset_registry_sensor],
        jobs=[
            dg.define_asset_job("fingerprint_job", selection=[dataset_fingerprints]),
            dg.define_asset_job("replica_job", selection=dg.AssetSelection.assets(dataset_replicas)),
            dg.define_asset_job(
                "check_job",
                selection=dg.AssetSelection.checks(replica_matches_fingerprint),
            ),
        ],
        resources={
            "warehouse": WarehouseResource(database=str(warehouse_path())),
            "stores": RegionStoresResource(),
        },
    )
    return defs, instance, src


def _run(
    defs: dg.Definitions, name: str, instance: dg.DagsterInstance, key: str, run_config: dict | None = None
) -> dg.ExecuteInProcessResult:
    job = defs.resolve_job_def(name)
    if name == "check_job":
        # a check-only run of one partition, as the UI launches it (the job has no assets to take
        # the partitions definition from, so the partition goes in the run tags)
        tags = {"dagster/partition": str(key)}
        tags.update({f"dagster/partition/{d}": k for d, k in key.keys_by_dimension.items()})  # type: ignore[attr-defined]
        return job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
    return job.execute_in_process(
        instance=instance, partition_key=key, raise_on_error=False, run_config=run_config
    )


def _check_passed(result: dg.ExecuteInProcessResult) -> bool:
    evals = result.get_asset_check_evaluations()
    assert len(evals) == 1
    return evals[0].passed


def test_sensor_registers_partitions_and_requests_fingerprints(setup: tuple) -> None:
    defs, instance, _ = setup
    ctx = dg.build_sensor_context(instance=instance, definitions=defs)
    result = dataset_registry_sensor(ctx)
    assert isinstance(result, dg.SensorResult)
    assert [r.partition_key for r in result.run_requests] == ["corpus"]
    added = {tuple(req.partition_keys) for req in result.dynamic_partitions_requests}
    assert added == {("corpus",), (HOME,)}
    # re-evaluated with the new cursor and partitions: nothing new, no second run
    for req in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    again = dataset_registry_sensor(
        dg.build_sensor_context(instance=instance, cursor=result.cursor, definitions=defs)
    )
    assert isinstance(again, dg.SkipReason)


def test_fingerprint_and_replica_materialize_and_check(setup: tuple) -> None:
    defs, instance, src = setup
    instance.add_dynamic_partitions("datasets", ["corpus"])
    instance.add_dynamic_partitions("regions", [HOME, TARGET])

    fp = _run(defs, "fingerprint_job", instance, "corpus")
    assert fp.success
    meta = fp.asset_materializations_for_node("dataset_fingerprints")[0].metadata
    expected_root = fingerprint(src, PARAMS).root
    assert meta["root"].value == expected_root and meta["files"].value == 4

    key = dg.MultiPartitionKey({"dataset": "corpus", "region": TARGET})
    rep = _run(defs, "replica_job", instance, key)
    assert rep.success, rep.all_events
    rmeta = rep.asset_materializations_for_node("dataset_replicas")[0].metadata
    assert rmeta["root"].value == expected_root and rmeta["chunks_sent"].value > 0
    # USD to the cent in the UI (a few KB cost less than a cent); the warehouse keeps the exact figure
    assert isinstance(rmeta["egress_usd"], dg.FloatMetadataValue)
    assert rmeta["egress_usd"].value == round(rmeta["egress_usd"].value, 2)
    assert _check_passed(rep)

    with warehouse.connect() as con:
        rows = con.execute(
            "select src_location, dst_location, chunks_sent, egress_usd > 0 from raw.transfers order by started_at"
        ).fetchall()
    assert [r[:2] for r in rows] == [(HOME, HOME), (HOME, TARGET)] and rows[1][3]

    # the check fails when a chunk of the replica disappears ...
    from spotshift.home import region_store_url
    from spotshift.sync.store_url import open_store

    target = open_store(region_store_url(TARGET))
    from spotshift.sync.refs import load_manifest

    # a chunk object, or a pack file (small chunks) and with it every chunk it holds
    victim = sorted([*target.list_keys("chunks/"), *target.list_keys("packs/")])[0]
    locations = load_manifest(target, expected_root)[0].locations
    lost = sum(1 for p, _ in locations.values() if p == victim.rsplit("/", 1)[-1]) or 1
    target.delete(victim)
    broken = _run(defs, "check_job", instance, key)
    assert not _check_passed(broken)
    measured = broken.get_asset_check_evaluations()[0].metadata  # plottable counts, not only text
    assert measured["chunks_missing_or_wrong_size"].value == lost and measured["chunks_checked"].value > 1
    # ... and when the source has a new fingerprint the replica does not have yet
    repair = {"ops": {"dataset_replicas": {"config": {"check_existing_chunks": True}}}}
    repaired = _run(defs, "replica_job", instance, key, repair)
    assert repaired.success, repaired.get_asset_check_evaluations()[0].description
    assert _check_passed(repaired)
    assert (
        repaired.asset_materializations_for_node("dataset_replicas")[0].metadata["chunks_sent"].value == lost
    )
    (src / "shard" / "part9.txt").write_text("new shard\n")
    assert _run(defs, "fingerprint_job", instance, "corpus").success
    check = _run(defs, "check_job", instance, key)
    evaluation = check.get_asset_check_evaluations()[0]
    assert not evaluation.passed and "differs from the fingerprint root" in (evaluation.description or "")
    again = _run(defs, "replica_job", instance, key)
    assert again.success and _check_passed(again)
    sent = again.asset_materializations_for_node("dataset_replicas")[0].metadata["chunks_sent"].value
    assert sent == 1  # only the new shard's chunk moved
    detail = evaluation.metadata["detail"].value
    assert json.loads(json.dumps(detail))["dataset"] == "corpus"


def test_automation_refreshes_existing_replicas_only(setup: tuple) -> None:
    defs, instance, src = setup
    instance.add_dynamic_partitions("datasets", ["corpus"])
    instance.add_dynamic_partitions("regions", [HOME, TARGET, "azure/westeurope"])
    assert _run(defs, "fingerprint_job", instance, "corpus").success
    key = dg.MultiPartitionKey({"dataset": "corpus", "region": TARGET})
    assert _run(defs, "replica_job", instance, key).success
    first = dg.evaluate_automation_conditions(
        defs, instance, asset_selection=dg.AssetSelection.assets(dataset_replicas)
    )
    assert first.total_requested == 0
    (src / "README").write_text("changed\n")
    assert _run(defs, "fingerprint_job", instance, "corpus").success
    second = dg.evaluate_automation_conditions(
        defs, instance, asset_selection=dg.AssetSelection.assets(dataset_replicas), cursor=first.cursor
    )
    requested = second.get_requested_partitions(dataset_replicas.key)
    assert requested == {key}  # not the regions that never had a replica


def test_replica_without_fingerprint_fails_clearly(setup: tuple) -> None:
    defs, instance, _ = setup
    instance.add_dynamic_partitions("datasets", ["corpus"])
    instance.add_dynamic_partitions("regions", [TARGET])
    result = _run(
        defs, "replica_job", instance, dg.MultiPartitionKey({"dataset": "corpus", "region": TARGET})
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    error = failure.event_specific_data.error  # type: ignore[union-attr]
    assert error.cause.cls_name == "NotFoundError" and "has no fingerprint yet" in error.cause.message


def test_assets_run_on_s3_region_stores(setup: tuple, s3_env: str, moto_endpoint: str) -> None:
    """The dagster-aws S3Resource-based stores: the same assets, replicas in an S3 bucket."""
    from resources.stores import S3RegionStoresResource

    defs, instance, _ = setup
    stores = S3RegionStoresResource(bucket=s3_env, prefix="spotshift", endpoint_url=moto_endpoint)
    instance.add_dynamic_partitions("datasets", ["corpus"])
    instance.add_dynamic_partitions("regions", [TARGET])
    resources = {"warehouse": WarehouseResource(database=str(warehouse_path())), "stores": stores}
    for job, key in (
        ("fingerprint_job", "corpus"),
        ("replica_job", dg.MultiPartitionKey({"dataset": "corpus", "region": TARGET})),
    ):
        result = defs.resolve_job_def(job).execute_in_process(
            instance=instance, partition_key=key, resources=resources
        )
        assert result.success
    assert _check_passed(result)
    keys = list(stores.store_for(TARGET).list_keys("refs/"))
    assert keys == ["refs/corpus/latest"]
    assert stores.store_for(TARGET).url == f"s3://{s3_env}/spotshift/aws/us-east-1"


def test_gcs_region_stores_resource(gcs_env: str) -> None:
    from resources.stores import GCSRegionStoresResource

    store = GCSRegionStoresResource(bucket=gcs_env, prefix="p").store_for("gcp/europe-west4")
    assert store.url == f"gs://{gcs_env}/p/gcp/europe-west4"
    assert store.put_bytes("k", b"v") and store.get_bytes("k") == b"v"


def test_stores_resource_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from resources.stores import GCSRegionStoresResource, S3RegionStoresResource, stores_resource_from_env
    from spotshift.errors import ConfigError

    monkeypatch.delenv("SPOTSHIFT_STORES_URL", raising=False)
    assert isinstance(stores_resource_from_env(), RegionStoresResource)
    monkeypatch.setenv("SPOTSHIFT_STORES_URL", "s3://bkt/pre")
    s3 = stores_resource_from_env()
    assert isinstance(s3, S3RegionStoresResource) and (s3.bucket, s3.prefix) == ("bkt", "pre")
    monkeypatch.setenv("SPOTSHIFT_STORES_URL", "gs://bkt")
    assert isinstance(stores_resource_from_env(), GCSRegionStoresResource)
    monkeypatch.setenv("SPOTSHIFT_STORES_URL", "ftp://x")
    with pytest.raises(ConfigError, match="SPOTSHIFT_STORES_URL"):
        stores_resource_from_env()


@pytest.mark.parametrize("base", ["s3://bkt/pre/", "s3://bkt", "gs://bkt", "gs://bkt/a/b", "file", ""])
def test_dagster_and_the_library_find_a_region_in_the_same_store(
    base: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One reading of SPOTSHIFT_STORES_URL: the stores resource the Dagster assets write through
    opens the very store the library (checkpoints, trainers, ``spotshift move``) reads."""
    from resources.stores import stores_resource_from_env
    from spotshift.home import region_store_url

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    if base == "file":
        base = (tmp_path / "stores").as_uri()
    if base:
        monkeypatch.setenv("SPOTSHIFT_STORES_URL", base)
    else:
        monkeypatch.delenv("SPOTSHIFT_STORES_URL", raising=False)
    for location in ("aws/us-east-1", "gcp/europe-west4"):
        assert stores_resource_from_env().store_for(location).url == region_store_url(location)
