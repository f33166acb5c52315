"""``checkpoints`` (per training job), ``checkpoint_replicas`` (per job x region) and
``checkpoint_compatibility`` (the runtime pairs moves have proven or found bad).

``checkpoints`` advances a job's trainer for a bounded number of steps (or picks up its newest
committed checkpoint, or stops its live trainer with one); ``checkpoint_replicas`` brings the newest
checkpoint into a region's store, as an encrypted tensor delta when the region holds an older one.
The work is in :mod:`spotshift.training.advance` and :mod:`spotshift.migration.steps` (``carry_checkpoint``,
the step the migration ops record too). ``checkpoint_compatibility`` is the matrix of
:mod:`spotshift.checkpoint.compat`, built from the facts the moves' probations record; every move
checks it before it begins (:mod:`spotshift.migration.compat`).
"""

import dagster as dg

import recording
from assets.partitions import job_region_partitions, jobs_partitions
from resources.compute import ComputeBackendResource
from resources.keys import KeyProviderResource
from resources.warehouse import WarehouseResource
from spotshift import warehouse as wh
from spotshift.checkpoint.compat import matrix_view
from spotshift.errors import NotFoundError
from spotshift.migration import contract, steps
from spotshift.training.advance import advance_job


class CheckpointsConfig(dg.Config):
    """``action``: run (train ``steps`` then checkpoint) | latest (pick up the newest) | stop (live trainer)."""

    action: str = "run"
    location: str = (
        ""  # empty: tag spotshift/location, else where the job last checkpointed, else start_location
    )
    steps: int = 0  # 0: the job's checkpoint_every_steps


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
        location=config.location or context.run.tags.get(contract.TAG_LOCATION) or None,
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
        metadata=recording.checkpoints_metadata(
            out["mode"],
            out["location"],
            out.get("checkpoint"),
            steps_run=out.get("steps_run") or 0,
            skipped=skipped,
        )
    )


@dg.asset(
    partitions_def=job_region_partitions,
    group_name="training",
    deps=[checkpoints],  # job partition -> every (job, region) partition of it (inferred by Dagster)
    required_resource_keys={"keys", "warehouse"},
)
def checkpoint_replicas(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """The job's newest checkpoint in the region's store (tensor delta when the region has an older one)."""
    dims = context.partition_key.keys_by_dimension  # type: ignore[attr-defined]
    result = steps.carry_checkpoint(recording.move_env(context), dims["job"], dims["region"])
    if result.report is None:
        raise NotFoundError(f"job {dims['job']!r} has no committed checkpoint to replicate")
    return dg.MaterializeResult(metadata=recording.carry_metadata(result))


@dg.asset(group_name="training", deps=[recording.SHADOW_VALIDATION])
def checkpoint_compatibility(warehouse: WarehouseResource) -> dg.MaterializeResult:
    """(source runtime, target runtime) pairs already proven by a move (its probation resumed the
    checkpoint in the target and matched the shadow comparison) or known bad (a probe failed there);
    a move of a known-bad pair is refused before any byte moves, an unproven pair is probed."""
    with wh.connect(warehouse.database) as con:
        view = matrix_view(con)
    rows = [
        f"| {p['verdict']} | {p['source_runtime']} | {p['target_runtime']} | {p['job']} | {p['reason']} |"
        for p in view["pairs"]
    ]
    table = "\n".join(
        ["| verdict | source runtime | target runtime | job | reason |", "|---|---|---|---|---|", *rows]
    )
    return dg.MaterializeResult(
        metadata={
            "proven": dg.MetadataValue.int(view["proven"]),
            "known_bad": dg.MetadataValue.int(view["known_bad"]),
            "pairs": dg.MetadataValue.json(view["pairs"]),
            "runtimes": dg.MetadataValue.json({"local": view["local"], **view["declared"]}),
            "matrix": dg.MetadataValue.md(table),
        }
    )


defs = dg.Definitions(assets=[checkpoints, checkpoint_replicas, checkpoint_compatibility])
