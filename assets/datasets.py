"""Datasets: content-defined fingerprints of each declared dataset, and its replicas in other regions.

``dataset_fingerprints`` (one partition per declared dataset) chunks the dataset's source and
commits the snapshot to its home region's store; ``dataset_replicas`` (dataset x region) copies
that snapshot to a region's store, sending only the chunks the region lacks. The check
``replica_matches_fingerprint`` proves a replica is the fingerprinted snapshot, with its chunks.
Every transfer is a row of ``raw.transfers``. The work is in :mod:`spotshift.sync`.
"""

import json
import warnings
from typing import Any

import dagster as dg

from assets.partitions import dataset_region_partitions, datasets_partitions
from spotshift.units import usd

# partitioned asset checks are a preview feature of Dagster 1.13; we use them knowingly
warnings.filterwarnings("ignore", message=".*Specifying a partitions_def on an AssetCheckSpec.*")


def _transfer_metadata(stats: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "root": stats.root,
        "bytes_full": dg.MetadataValue.int(stats.bytes_full),
        "bytes_scanned": dg.MetadataValue.int(stats.bytes_scanned),
        "bytes_changed": dg.MetadataValue.int(stats.bytes_changed),
        "bytes_sent": dg.MetadataValue.int(stats.bytes_sent),
        "chunks_total": dg.MetadataValue.int(stats.chunks_total),
        "chunks_sent": dg.MetadataValue.int(stats.chunks_sent),
        "seconds": dg.MetadataValue.float(round(stats.seconds, 3)),
        "egress_usd": dg.MetadataValue.float(usd(stats.egress_usd) or 0.0),
        "store": dg.MetadataValue.url(stats.dst) if "://" in stats.dst else stats.dst,
    }
    if stats.transfer_amplification is not None:
        meta["transfer_amplification"] = dg.MetadataValue.float(round(stats.transfer_amplification, 4))
    return meta


@dg.asset(
    partitions_def=datasets_partitions,
    group_name="datasets",
    required_resource_keys={"stores", "warehouse"},
    kinds={"python", "parquet"},
    description="Content-defined chunk fingerprint (Merkle root) of a declared dataset, committed to the "
    "dataset's home region store as an immutable manifest.",
)
def dataset_fingerprints(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    return fingerprint_dataset_partition(
        context.resources.stores,
        context.resources.warehouse,
        context.partition_key,
        run_id=context.run_id,
        log=context.log,
    )


def fingerprint_dataset_partition(
    stores: Any, warehouse: Any, name: str, *, run_id: str, log: Any
) -> dg.MaterializeResult:
    """Fingerprint dataset ``name`` and commit the snapshot to its home store (what
    ``dataset_fingerprints`` materializes; the migration ops call it too)."""
    from spotshift.sync.datasets import get_dataset, snapshot_dataset

    dataset = get_dataset(name)
    home = stores.store_for(dataset.location)
    fp, stats = snapshot_dataset(dataset, home)
    warehouse.append("raw.transfers", [stats.to_row(run_id)])
    m = fp.manifest
    summary = m.summary()
    log.info(
        f"{dataset.name}: root {m.root}, {summary['files']} files, {summary['bytes']} bytes; "
        f"read {fp.stats.bytes_read} bytes, {fp.stats.cache_hits} files from cache; sent {stats.bytes_sent} bytes"
    )
    return dg.MaterializeResult(
        metadata={
            **_transfer_metadata(stats),
            "files": dg.MetadataValue.int(summary["files"]),
            "bytes": dg.MetadataValue.int(summary["bytes"]),
            "chunks": dg.MetadataValue.int(summary["chunks"]),
            "unique_chunks": dg.MetadataValue.int(summary["unique_chunks"]),
            "bytes_read": dg.MetadataValue.int(fp.stats.bytes_read),
            "cache_hits": dg.MetadataValue.int(fp.stats.cache_hits),
            "location": dataset.location,
            "source": dataset.source,
            "chunking": dg.MetadataValue.json(m.params.to_dict()),
        },
        data_version=dg.DataVersion(m.root),
    )


def fingerprint_root(instance: dg.DagsterInstance, dataset: str) -> str | None:
    """Root recorded by the latest materialization of ``dataset_fingerprints[dataset]``."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dataset_fingerprints.key, asset_partitions=[dataset]), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return None
    value = records[0].asset_materialization.metadata.get("root")
    return str(value.value) if value is not None else None


class ReplicaConfig(dg.Config):
    """How to bring a replica up to date."""

    check_existing_chunks: bool = False
    """Also look up every chunk of an already-current replica and resend missing ones (a HEAD per chunk)."""


def _replica_keys(context: Any) -> tuple[str, str]:
    keys = context.partition_key.keys_by_dimension
    return keys["dataset"], keys["region"]


@dg.asset(
    partitions_def=dataset_region_partitions,
    group_name="datasets",
    required_resource_keys={"stores", "warehouse"},
    kinds={"python"},
    # the "dataset" dimension maps onto dataset_fingerprints' partitions (inferred by Dagster)
    deps=[dataset_fingerprints],
    # keep replicas that exist in step with a new fingerprint; never create new ones (egress costs money)
    automation_condition=(
        dg.AutomationCondition.any_deps_updated()
        & ~dg.AutomationCondition.missing()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("existing replica, new fingerprint"),
    description="A dataset's fingerprinted snapshot in a region's store, delta-synced from its home region "
    "(only missing chunks are sent; egress is priced per provider/region).",
)
def dataset_replicas(context: dg.AssetExecutionContext, config: ReplicaConfig) -> dg.MaterializeResult:
    name, region = _replica_keys(context)
    return replicate_dataset_partition(
        context.instance,
        context.resources.stores,
        context.resources.warehouse,
        name,
        region,
        run_id=context.run_id,
        log=context.log,
        check_existing=config.check_existing_chunks,
    )


def replicate_dataset_partition(
    instance: dg.DagsterInstance,
    stores: Any,
    warehouse: Any,
    name: str,
    region: str,
    *,
    run_id: str,
    log: Any,
    check_existing: bool = False,
) -> dg.MaterializeResult:
    """Bring dataset ``name``'s fingerprinted snapshot into ``region``'s store (what ``dataset_replicas``
    materializes; the migration ops call it too). The transfer is a ``raw.transfers`` row."""
    from spotshift.errors import NotFoundError
    from spotshift.sync.datasets import get_dataset, replicate_dataset

    dataset = get_dataset(name)
    root = fingerprint_root(instance, name)
    if root is None:
        raise NotFoundError(
            f"dataset {name!r} has no fingerprint yet: materialize dataset_fingerprints[{name}] first"
        )
    stats = replicate_dataset(
        dataset,
        root,
        stores.store_for(dataset.location),
        stores.store_for(region),
        region,
        check_existing=check_existing,
    )
    warehouse.append("raw.transfers", [stats.to_row(run_id)])
    log.info(
        f"{name} -> {region}: sent {stats.chunks_sent} chunks, {stats.bytes_sent} bytes "
        f"of {stats.bytes_full}; egress ${stats.egress_usd:.4f}"
    )
    return dg.MaterializeResult(
        metadata={**_transfer_metadata(stats), "src_location": dataset.location, "dst_location": region},
        data_version=dg.DataVersion(root),
    )


@dg.asset_check(
    asset=dataset_replicas,
    partitions_def=dataset_region_partitions,
    blocking=True,
    required_resource_keys={"stores"},
    description="The region's replica is the fingerprinted snapshot: its pointer names the fingerprint's root, "
    "the manifest verifies, and every chunk is present with the right size.",
)
def replica_matches_fingerprint(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    name, region = _replica_keys(context)
    return replica_check_result(context.instance, context.resources.stores, name, region)


def replica_check_result(
    instance: dg.DagsterInstance, stores: Any, name: str, region: str
) -> dg.AssetCheckResult:
    """The ``replica_matches_fingerprint`` verdict for one (dataset, region)."""
    from spotshift.sync.datasets import check_replica

    expected = fingerprint_root(instance, name)
    if expected is None:
        return dg.AssetCheckResult(
            passed=False, description=f"dataset_fingerprints[{name}] was never materialized"
        )
    result = check_replica(stores.store_for(region), name, expected)
    return dg.AssetCheckResult(
        passed=result.passed,
        description=result.problem or f"replica in {region} is snapshot {expected}, all chunks present",
        metadata={
            "expected_root": expected,
            "replica_root": result.replica_root or "",
            "chunks_checked": dg.MetadataValue.int(result.chunks_checked),
            "chunks_missing_or_wrong_size": dg.MetadataValue.int(len(result.missing)),
            "missing_or_wrong_size": dg.MetadataValue.json(result.missing[:20]),
            "detail": dg.MetadataValue.json(json.loads(json.dumps(result.to_dict()))),
        },
    )


defs = dg.Definitions(
    assets=[dataset_fingerprints, dataset_replicas], asset_checks=[replica_matches_fingerprint]
)
