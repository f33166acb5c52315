"""``checkpoints`` (per training job) and ``checkpoint_replicas`` (per job x region).

``checkpoints`` advances a job's trainer for a bounded number of steps (or picks up its newest
committed checkpoint, or stops its live trainer with one); ``checkpoint_replicas`` brings the newest
checkpoint into a region's store, as an encrypted tensor delta when the region holds an older one.
The work is in :mod:`spotshift.training.runs` and :mod:`spotshift.checkpoint.migrate`.
"""

from typing import Any

import dagster as dg

from assets.partitions import job_region_partitions, jobs_partitions
from resources.compute import ComputeBackendResource
from resources.keys import KeyProviderResource
from resources.warehouse import WarehouseResource
from spotshift.training.runs import advance_job, replicate_latest

TAG_LOCATION = "spotshift/location"


class CheckpointsConfig(dg.Config):
    """``action``: run (train ``steps`` then checkpoint) | latest (pick up the newest) | stop (live trainer)."""

    action: str = "run"
    location: str = (
        ""  # empty: tag spotshift/location, else where the job last checkpointed, else start_location
    )
    steps: int = 0  # 0: the job's checkpoint_every_steps


def checkpoint_metadata(ref: dict[str, Any] | None) -> dict[str, Any]:
    """Materialization metadata of a checkpoint ref."""
    if not ref:
        return {}
    return {
        "checkpoint_id": ref["checkpoint_id"],
        "step": ref["step"],
        "content_hash": ref["content_hash"],
        "url": dg.MetadataValue.url(ref["url"]) if "://" in ref["url"] else ref["url"],
        "store": ref["store_url"],
    }


@dg.asset(partitions_def=jobs_partitions, group_name="training", kinds={"pytorch"})
def checkpoints(
    context: dg.AssetExecutionContext,
    config: CheckpointsConfig,
    compute: ComputeBackendResource,
    keys: KeyProviderResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    """The newest committed (encrypted, verified) checkpoint of a training job, after advancing it."""
    out = advance_job(
        compute.backend(),
        context.partition_key,
        action=config.action,
        location=config.location or context.run.tags.get(TAG_LOCATION) or None,
        steps=config.steps or None,
        key_provider=keys.spec_or_none(),
        run_id=context.run_id,
        database=warehouse.database,
    )
    context.log.info(f"{context.partition_key}: {out['mode']} in {out['location']}")
    skipped = (out.get("result") or {}).get("skipped_checkpoints") or []
    for s in skipped:
        context.log.warning(f"skipped checkpoint {context.partition_key}/{s['checkpoint_id']}: {s['reason']}")
    return dg.MaterializeResult(
        metadata={
            "mode": out["mode"],
            "location": out["location"],
            "steps_run": out.get("steps_run") or 0,
            **checkpoint_metadata(out.get("checkpoint")),
            **({"skipped_checkpoints": dg.MetadataValue.json(skipped)} if skipped else {}),
        }
    )


@dg.asset(
    partitions_def=job_region_partitions,
    group_name="training",
    deps=[checkpoints],  # job partition -> every (job, region) partition of it (inferred by Dagster)
)
def checkpoint_replicas(
    context: dg.AssetExecutionContext, keys: KeyProviderResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """The job's newest checkpoint in the region's store (tensor delta when the region has an older one)."""
    dims = context.partition_key.keys_by_dimension  # type: ignore[attr-defined]
    report = replicate_latest(dims["job"], dims["region"], keys.provider(), database=warehouse.database)
    if report.method != "present":
        warehouse.append("raw.transfers", [report.transfer_row(context.run_id)])
    context.log.info(
        f"{dims['job']} -> {dims['region']}: {report.method}, {report.bytes_sent} of {report.bytes_full} bytes"
    )
    return dg.MaterializeResult(
        metadata={
            "method": report.method,
            "checkpoint_id": report.checkpoint_id,
            "step": report.step,
            "content_hash": report.content_hash,
            "source_location": report.src_location or "",
            "base": report.base or "",
            "bytes_full": report.bytes_full,
            "bytes_sent": report.bytes_sent,
            "ratio": round(report.ratio, 6),
            "seconds": round(report.seconds, 4),
        }
    )


defs = dg.Definitions(assets=[checkpoints, checkpoint_replicas])
