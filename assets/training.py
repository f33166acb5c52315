"""``retrain_run`` (resume a job in a target region) and ``shadow_validation`` with its blocking checks.

Locations come from run config, else run tags ``spotshift/from`` / ``spotshift/to`` (what the
migration sensors set), else the last ``retrain_run`` of the job. A failing check (severity ERROR,
``blocking=True``) stops every asset downstream of ``shadow_validation`` in the run.
"""

import warnings
from typing import Any

import dagster as dg

from assets.checkpoints import checkpoint_metadata, checkpoint_replicas, checkpoints
from assets.partitions import jobs_partitions
from resources.compute import ComputeBackendResource
from resources.keys import KeyProviderResource
from resources.warehouse import WarehouseResource
from spotshift.training.runs import resume_in_target
from spotshift.training.shadow import ShadowThresholds, run_shadow_validation

TAG_FROM = "spotshift/from"
TAG_TO = "spotshift/to"


class RetrainConfig(dg.Config):
    target_location: str = ""  # empty: tag spotshift/to
    steps: int = 0  # 0: the job's checkpoint_every_steps (bounded, waited for)
    detach: bool = False  # run the rest of the job in the background; return after its first step


@dg.asset(
    partitions_def=jobs_partitions,
    group_name="training",
    deps=[checkpoints, checkpoint_replicas],  # a job's partition <- all its (job, region) replicas
    kinds={"pytorch"},
)
def retrain_run(
    context: dg.AssetExecutionContext,
    config: RetrainConfig,
    compute: ComputeBackendResource,
    keys: KeyProviderResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    """The job resumed in the target region from the checkpoint replicated there."""
    target = config.target_location or context.run.tags.get(TAG_TO, "")
    if not target:
        raise dg.Failure(
            f"retrain_run {context.partition_key}: no target location (config target_location or tag {TAG_TO})"
        )
    out = resume_in_target(
        compute.backend(),
        context.partition_key,
        target,
        steps=config.steps or None,
        detach=config.detach,
        key_provider=keys.spec_or_none(),
        run_id=context.run_id,
        database=warehouse.database,
    )
    meta: dict[str, Any] = {
        k: v for k, v in out.items() if k not in ("result", "checkpoint") and v is not None
    }
    return dg.MaterializeResult(metadata={**meta, **checkpoint_metadata(out.get("checkpoint"))})


class ShadowConfig(dg.Config):
    source_location: str = ""  # empty: tag spotshift/from, else the source of the last retrain_run
    target_location: str = ""  # empty: tag spotshift/to, else the target of the last retrain_run
    checkpoint_id: str = (
        ""  # empty: the checkpoint the last retrain_run resumed from, else the newest in the source
    )
    steps: int = 20
    max_loss_diff: float = 0.01
    max_grad_norm_rel_diff: float = 0.05
    max_activation_rel_diff: float = 0.05
    require_identical_checkpoint: bool = False
    perturb_learning_rate: float = (
        0.0  # > 0: the target trains with this learning rate (a failing validation)
    )


def _last_retrain(context: dg.AssetExecutionContext) -> dict[str, Any]:
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=retrain_run.key, asset_partitions=[context.partition_key]), limit=1
    ).records
    if not records:
        return {}
    mat = records[0].asset_materialization
    return {k: v.value for k, v in (mat.metadata if mat else {}).items()}


@dg.asset(partitions_def=jobs_partitions, group_name="training", deps=[retrain_run], kinds={"pytorch"})
def shadow_validation(
    context: dg.AssetExecutionContext,
    config: ShadowConfig,
    compute: ComputeBackendResource,
    keys: KeyProviderResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    """Source and target resumed from the same checkpoint, K steps each, compared (DESIGN §3 thresholds)."""
    last = _last_retrain(context)
    tags = context.run.tags
    source = config.source_location or tags.get(TAG_FROM) or last.get("source_location", "")
    target = config.target_location or tags.get(TAG_TO) or last.get("target_location", "")
    if not source or not target or source == target:
        raise dg.Failure(
            f"shadow_validation {context.partition_key}: need two locations, got {source!r} and {target!r}"
        )
    cmp = run_shadow_validation(
        compute.backend(),
        context.partition_key,
        source_location=source,
        target_location=target,
        steps=config.steps,
        checkpoint_id=config.checkpoint_id or last.get("resumed_from") or None,
        thresholds=ShadowThresholds(
            config.max_loss_diff,
            config.max_grad_norm_rel_diff,
            config.max_activation_rel_diff,
            config.require_identical_checkpoint,
        ),
        perturb={"learning_rate": config.perturb_learning_rate} if config.perturb_learning_rate > 0 else None,
        key_provider=keys.spec_or_none(),
        run_id=context.run_id,
    )
    warehouse.append("raw.shadow_validations", [cmp.row()])
    return dg.MaterializeResult(metadata=shadow_metadata(cmp))


def shadow_metadata(cmp: Any) -> dict[str, Any]:
    """Materialization metadata of a :class:`~spotshift.training.shadow.ShadowComparison`."""
    meta = {k: v for k, v in cmp.to_dict().items() if k not in ("source_losses", "target_losses")}
    meta["loss_curves"] = dg.MetadataValue.json({"source": cmp.source_losses, "target": cmp.target_losses})
    return meta


def _comparison(context: dg.AssetCheckExecutionContext) -> dict[str, Any]:
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=shadow_validation.key, asset_partitions=[context.partition_key]),
        limit=1,
    ).records
    mat = records[0].asset_materialization if records else None
    if mat is None:
        raise dg.Failure(f"shadow_validation {context.partition_key} has no materialization to check")
    return {k: v.value for k, v in mat.metadata.items()}


#: the shadow checks' verdict functions, by check name (shared with the migration ops)
SHADOW_VERDICTS: dict[str, Any] = {}


def shadow_verdicts(cmp: dict[str, Any]) -> dict[str, dg.AssetCheckResult]:
    """Every shadow check's result for one comparison (``shadow_validation``'s metadata values)."""
    return {name: verdict(cmp) for name, verdict in SHADOW_VERDICTS.items()}


def _check(name: str, passed_of, describe, measured, *, blocking_severity=dg.AssetCheckSeverity.ERROR):  # noqa: ANN001, ANN202
    def verdict(cmp: dict[str, Any]) -> dg.AssetCheckResult:
        passed, severity = passed_of(cmp)
        return dg.AssetCheckResult(
            passed=passed,
            severity=severity or blocking_severity,
            description=describe(cmp),
            # the measured value and its limit as numbers: the UI plots them across migrations
            metadata={
                "job": cmp["job"],
                "steps": dg.MetadataValue.int(int(cmp["steps"])),
                **{k: dg.MetadataValue.float(float(v)) for k, v in measured(cmp).items()},
            },
        )

    SHADOW_VERDICTS[name] = verdict

    def check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        return verdict(_comparison(context))

    check.__name__ = name
    # partitioned checks are a Dagster preview feature; one check result per job partition is what we need
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.asset_check(
            asset=shadow_validation, name=name, blocking=True, partitions_def=jobs_partitions
        )(check)


def _thr(cmp: dict[str, Any], key: str) -> float:
    return float(cmp["thresholds"][key])


loss_divergence = _check(
    "loss_divergence",
    lambda c: (c["max_loss_diff"] <= _thr(c, "max_loss_diff"), None),
    lambda c: (
        f"max |loss diff| {c['max_loss_diff']:.3g} over {c['steps']} steps (limit {_thr(c, 'max_loss_diff')})"
    ),
    lambda c: {"max_loss_diff": c["max_loss_diff"], "limit": _thr(c, "max_loss_diff")},
)
grad_norms = _check(
    "grad_norms",
    lambda c: (c["max_grad_norm_rel_diff"] <= _thr(c, "max_grad_norm_rel_diff"), None),
    lambda c: (
        f"max relative grad-norm diff {c['max_grad_norm_rel_diff']:.3g} (limit {_thr(c, 'max_grad_norm_rel_diff')})"
    ),
    lambda c: {
        "max_grad_norm_rel_diff": c["max_grad_norm_rel_diff"],
        "limit": _thr(c, "max_grad_norm_rel_diff"),
    },
)
activations = _check(
    "activations",
    lambda c: (c["max_activation_rel_diff"] <= _thr(c, "max_activation_rel_diff"), None),
    lambda c: (
        f"max relative activation-statistic diff {c['max_activation_rel_diff']:.3g} "
        f"(limit {_thr(c, 'max_activation_rel_diff')})"
    ),
    lambda c: {
        "max_activation_rel_diff": c["max_activation_rel_diff"],
        "limit": _thr(c, "max_activation_rel_diff"),
    },
)
checkpoint_bytes = _check(
    "checkpoint_bytes",
    lambda c: (
        bool(c["checkpoint_bytes_equal"]),
        dg.AssetCheckSeverity.ERROR
        if c["thresholds"]["require_identical_checkpoint"]
        else dg.AssetCheckSeverity.WARN,
    ),
    lambda c: (
        f"resulting checkpoints: source {c['source_checkpoint_hash'][:16]} "
        f"({c['source_checkpoint_bytes']} bytes), target {c['target_checkpoint_hash'][:16]} ({c['target_checkpoint_bytes']} bytes)"
    ),
    lambda c: {
        "checkpoint_bytes_equal": 1.0 if c["checkpoint_bytes_equal"] else 0.0,
        "source_checkpoint_bytes": c["source_checkpoint_bytes"],
        "target_checkpoint_bytes": c["target_checkpoint_bytes"],
    },
)

defs = dg.Definitions(
    assets=[retrain_run, shadow_validation],
    asset_checks=[loss_divergence, grad_norms, activations, checkpoint_bytes],
)
