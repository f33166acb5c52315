"""``retrain_run`` (resume a job in a target region) and ``shadow_validation`` with its blocking checks.

Locations come from run config, else run tags ``spotshift/from`` / ``spotshift/to`` (what the
migration sensors set), else the last ``retrain_run`` of the job. Each body is one step of
:mod:`spotshift.migration` recorded with ``recording.py``, as the migration ops record it. The
checks convert the library's shadow verdicts (:func:`spotshift.training.shadow.verdicts`); a
failing check (severity ERROR, ``blocking=True``) stops every asset downstream in the run.
"""

import warnings

import dagster as dg

import recording
from assets.checkpoints import checkpoint_replicas, checkpoints
from assets.partitions import jobs_partitions
from spotshift.migration import contract, cutover, steps
from spotshift.training.shadow import MAX_LOSS_DIFF, ShadowComparison, ShadowThresholds, verdicts

RESOURCES = {"compute", "keys", "warehouse"}


class RetrainConfig(dg.Config):
    target_location: str = ""  # empty: tag spotshift/to
    steps: int = 0  # 0: the job's checkpoint_every_steps (bounded, waited for)
    detach: bool = False  # run the rest of the job in the background; return after its first step


@dg.asset(
    partitions_def=jobs_partitions,
    group_name="training",
    deps=[checkpoints, checkpoint_replicas],  # a job's partition <- all its (job, region) replicas
    kinds={"pytorch"},
    required_resource_keys=RESOURCES,
)
def retrain_run(context: dg.AssetExecutionContext, config: RetrainConfig) -> dg.MaterializeResult:
    """The job resumed in the target region from the checkpoint replicated there."""
    target = config.target_location or context.run.tags.get(contract.TAG_TO, "")
    if not target:
        raise dg.Failure(
            f"retrain_run {context.partition_key}: no target location "
            f"(config target_location or tag {contract.TAG_TO})"
        )
    result = steps.retrain(
        recording.move_env(context),
        context.partition_key,
        target,
        steps=config.steps or None,
        detach=config.detach,
    )
    return dg.MaterializeResult(metadata=recording.retrain_metadata(result))


class ShadowConfig(dg.Config):
    source_location: str = ""  # empty: tag spotshift/from, else the source of the last retrain_run
    target_location: str = ""  # empty: tag spotshift/to, else the target of the last retrain_run
    checkpoint_id: str = (
        ""  # empty: the checkpoint the last retrain_run resumed from, else the newest in the source
    )
    steps: int = 20
    max_loss_diff: float = MAX_LOSS_DIFF
    max_grad_norm_rel_diff: float = ShadowThresholds.max_grad_norm_rel_diff
    max_activation_rel_diff: float = ShadowThresholds.max_activation_rel_diff
    require_identical_checkpoint: bool = False
    perturb_learning_rate: float = (
        0.0  # > 0: the target trains with this learning rate (a failing validation)
    )


@dg.asset(
    partitions_def=jobs_partitions,
    group_name="training",
    deps=[retrain_run],
    kinds={"pytorch"},
    required_resource_keys=RESOURCES,
)
def shadow_validation(context: dg.AssetExecutionContext, config: ShadowConfig) -> dg.MaterializeResult:
    """Source and target resumed from the same checkpoint, K steps each, compared (seed 000 thresholds)."""
    job = context.partition_key
    last = recording.recorded_metadata(context.instance, recording.RETRAIN_RUN, job) or {}
    tags = context.run.tags
    source = config.source_location or tags.get(contract.TAG_FROM) or last.get("source_location", "")
    target = config.target_location or tags.get(contract.TAG_TO) or last.get("target_location", "")
    if not source or not target or source == target or contract.NONE in (source, target):
        raise dg.Failure(f"shadow_validation {job}: need two locations, got {source!r} and {target!r}")
    result = cutover.validate_shadow(
        recording.move_env(context),
        job,
        source=source,
        target=target,
        steps=config.steps,
        checkpoint_id=config.checkpoint_id or last.get("resumed_from") or None,
        thresholds=ShadowThresholds(
            config.max_loss_diff,
            config.max_grad_norm_rel_diff,
            config.max_activation_rel_diff,
            config.require_identical_checkpoint,
        ),
        perturb={"learning_rate": config.perturb_learning_rate} if config.perturb_learning_rate > 0 else None,
    )
    return dg.MaterializeResult(metadata=recording.shadow_metadata(result.comparison))


def _check(name: str) -> dg.AssetChecksDefinition:
    """The asset check ``name``: the library's verdict of that name on the recorded comparison."""

    def check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        recorded = recording.recorded_metadata(
            context.instance, recording.SHADOW_VALIDATION, context.partition_key
        )
        if recorded is None:
            raise dg.Failure(f"shadow_validation {context.partition_key} has no materialization to check")
        (verdict,) = [v for v in verdicts(ShadowComparison.from_dict(recorded)) if v.name == name]
        return recording.shadow_check(verdict, context.partition_key)

    check.__name__ = name
    # partitioned checks are a Dagster preview feature; one check result per job partition is what we need
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.asset_check(
            asset=shadow_validation, name=name, blocking=True, partitions_def=jobs_partitions
        )(check)


loss_divergence = _check("loss_divergence")
grad_norms = _check("grad_norms")
activations = _check("activations")
checkpoint_bytes = _check("checkpoint_bytes")

defs = dg.Definitions(
    assets=[retrain_run, shadow_validation],
    asset_checks=[loss_divergence, grad_norms, activations, checkpoint_bytes],
)
