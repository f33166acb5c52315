"""Datasets: content-defined fingerprints of each declared dataset, and its replicas in other regions.

``dataset_fingerprints`` (one partition per declared dataset) chunks the dataset's source and
commits the snapshot to its home region's store; ``dataset_replicas`` (dataset x region) copies
that snapshot to a region's store, sending only the chunks the region lacks. The check
``replica_matches_fingerprint`` proves a replica is the snapshot the home store's ``latest`` ref
names, with its chunks. Every transfer is a row of ``raw.transfers``. Each body is one step of
:mod:`spotshift.migration.steps`, recorded with ``recording.py`` (as the migration ops record it).
"""

import warnings
from typing import Any

import dagster as dg

import recording
from assets.partitions import dataset_region_partitions, datasets_partitions
from spotshift.errors import NotFoundError
from spotshift.migration import steps

# partitioned asset checks are a preview feature of Dagster 1.13; we use them knowingly
warnings.filterwarnings("ignore", message=".*Specifying a partitions_def on an AssetCheckSpec.*")


@dg.asset(
    partitions_def=datasets_partitions,
    group_name="datasets",
    required_resource_keys={"stores", "warehouse"},
    kinds={"python", "parquet"},
    description="Content-defined chunk fingerprint (Merkle root) of a declared dataset, committed to the "
    "dataset's home region store as an immutable manifest.",
)
def dataset_fingerprints(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    result = steps.fingerprint_dataset(recording.move_env(context), context.partition_key)
    return dg.MaterializeResult(
        metadata=recording.fingerprint_metadata(result), data_version=dg.DataVersion(result.root)
    )


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
    result = steps.replicate_dataset(
        recording.move_env(context),
        name,
        region,
        check_existing=config.check_existing_chunks,
        check=False,  # the blocking asset check replica_matches_fingerprint does it
    )
    return dg.MaterializeResult(
        metadata=recording.replica_metadata(result), data_version=dg.DataVersion(result.root)
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
    try:
        check = steps.check_replica(recording.move_env(context), name, region)
    except NotFoundError as exc:
        return dg.AssetCheckResult(passed=False, description=str(exc))
    return recording.replica_check(check, region)


defs = dg.Definitions(
    assets=[dataset_fingerprints, dataset_replicas], asset_checks=[replica_matches_fingerprint]
)
