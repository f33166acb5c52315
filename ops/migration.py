"""Moving a training job, as three op jobs: each op calls one step of :mod:`spotshift.migration`
and records its typed result.

``migration_job`` (requested by ``price_change_sensor``; also the first placement of a job)::

    plan_move -> fingerprint_dataset -> sync_dataset -> drain_source -> sync_checkpoint
              -> resume_in_target -> validate_shadow -> cut_over

``preemption_recovery_job`` (requested by ``preemption_sensor``): the same chain from the emergency
checkpoint, without draining (the source is gone) and without the shadow wait::

    plan_recovery -> fingerprint_dataset -> sync_dataset -> sync_checkpoint -> resume_in_target -> cut_over

``rollback_job`` (requested by ``migration_failure_sensor``): stop the target, resume the job in the
source from its newest checkpoint, mark the target unfit for a cooldown.

The assets of the chain have different partitions (dataset x region, job x region, job), which
no single asset job can run; so each op records the materialization (and checks) of the asset it
stands for, for the partition it touched, with the same builders as the asset (``recording.py``):
``dataset_fingerprints[dataset]``, ``dataset_replicas[dataset|target]``, ``checkpoints[job]``,
``checkpoint_replicas[job|target]``, ``retrain_run[job]``, ``shadow_validation[job]``. A failing
blocking check (replica root, shadow thresholds) fails its op, so nothing after it runs and the
run fails -> ``migration_failure_sensor`` -> ``rollback_job``. The ops pass a typed
:class:`~spotshift.migration.state.MoveState` along, also kept in the move ledger, which is where
the rollback reads the failed move's plan. ``spotshift move`` runs the same steps without Dagster.

The three jobs run on ``move_executor`` (``ops/workers.py``): in-process by default, or each step on
a Celery worker of the region it touches when the home is configured for it; the ``IN_SOURCE`` /
``IN_TARGET`` op tags say which side that is. The steps hand each other their results through the
code location's IO manager (``ops/step_store.py``): a store every worker reaches when one is set.
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg

import recording
from ops.workers import move_executor
from spotshift.migration import contract, cutover, steps
from spotshift.migration.plan import MovePlan
from spotshift.migration.run import begin_move, gate_replica, gate_shadow
from spotshift.migration.run import plan_recovery as decide_recovery
from spotshift.migration.state import MoveFailed, MoveState, ShadowOptions, load

RESOURCES = {"compute", "stores", "keys", "warehouse"}
#: where a step runs under the Celery executor: a worker of the source's or the target's region
#: (ops/workers.py); plan_move and plan_recovery touch no region and go to the control queue
IN_SOURCE = {contract.CELERY_QUEUE_TAG: contract.QUEUE_SOURCE}
IN_TARGET = {contract.CELERY_QUEUE_TAG: contract.QUEUE_TARGET}


def _failure(exc: MoveFailed) -> dg.Failure:
    return dg.Failure(str(exc))


@dg.op(
    name=contract.PLAN_MOVE_OP,
    config_schema=recording.config_schema(MovePlan, ShadowOptions),
    required_resource_keys=RESOURCES,
)
def plan_move(context: dg.OpExecutionContext) -> MoveState:
    """The move the price sensor decided (or the job's first placement), recorded in the ledger once
    the checkpoint compatibility matrix lets it go (a known-bad pair raises ``IncompatibleCheckpoint``
    here: nothing moved, nothing to roll back)."""
    config = context.op_config
    plan = recording.config_of(MovePlan, config)
    return begin_move(recording.move_env(context), plan, recording.config_of(ShadowOptions, config))


class RecoveryConfig(dg.Config):
    """The preemption notice to recover from (the event the trainer wrote)."""

    job: str
    location: str
    notice_id: str
    noticed_at: str = ""
    step: int = 0


@dg.op(
    name=contract.PLAN_RECOVERY_OP, out=dg.Out(MoveState, is_required=False), required_resource_keys=RESOURCES
)
def plan_recovery(context: dg.OpExecutionContext, config: RecoveryConfig) -> Iterator[Any]:
    """Where to resume a preempted job: the decision with the preempted region's spot capacity gone.
    A decision to queue (wait for capacity) ends the run here: nothing to move yet."""
    env = recording.move_env(context)
    plan, why = decide_recovery(env, config.model_dump())
    context.log.info(why)
    if plan is not None:
        yield dg.Output(begin_move(env, plan))


@dg.op(required_resource_keys=RESOURCES, tags=IN_SOURCE)
def fingerprint_dataset(context: dg.OpExecutionContext, move: MoveState) -> Iterator[Any]:
    """``dataset_fingerprints[dataset]``: re-fingerprint the job's dataset (files cache: cheap when unchanged)."""
    from spotshift.jobs import get_job

    result = steps.fingerprint_dataset(recording.move_env(context), get_job(move.plan.job).dataset)
    yield dg.AssetMaterialization(
        recording.DATASET_FINGERPRINTS,
        partition=result.dataset,
        metadata=recording.fingerprint_metadata(result),
    )
    yield dg.Output(move.after(result))


@dg.op(required_resource_keys=RESOURCES, tags=IN_TARGET)
def sync_dataset(context: dg.OpExecutionContext, move: MoveState) -> Iterator[Any]:
    """``dataset_replicas[dataset|target]``: delta-sync the snapshot to the target; blocking root check."""
    result = steps.replicate_dataset(recording.move_env(context), move.dataset, move.plan.to_location)
    partition = dg.MultiPartitionKey({"dataset": result.dataset, "region": result.region})
    yield dg.AssetMaterialization(
        recording.DATASET_REPLICAS, partition=partition, metadata=recording.replica_metadata(result)
    )
    check = recording.replica_check(result.check, result.region)
    yield recording.check_evaluation(recording.DATASET_REPLICAS, recording.REPLICA_CHECK, check, partition)
    try:
        gate_replica(result)
    except MoveFailed as exc:
        raise _failure(exc) from None
    yield dg.Output(move.after(result))


@dg.op(required_resource_keys=RESOURCES, tags=IN_SOURCE)
def drain_source(context: dg.OpExecutionContext, move: MoveState) -> Iterator[Any]:
    """``checkpoints[job]``: stop the job's live trainer at a step boundary with a committed checkpoint;
    the move starts from the source's newest checkpoint."""
    result = steps.drain_source(recording.move_env(context), move.plan)
    if result.stopped:
        yield dg.AssetMaterialization(
            recording.CHECKPOINTS,
            partition=move.plan.job,
            metadata=recording.checkpoints_metadata("stopped", result.location, result.checkpoint),
        )
    yield dg.Output(move.after(result))


@dg.op(required_resource_keys=RESOURCES, tags=IN_TARGET)
def sync_checkpoint(context: dg.OpExecutionContext, move: MoveState) -> Iterator[Any]:
    """``checkpoint_replicas[job|target]``: the newest checkpoint into the target (tensor delta when it can)."""
    plan = move.plan
    result = steps.carry_checkpoint(
        recording.move_env(context), plan.job, plan.to_location, source=plan.from_location
    )
    # recorded when something came from elsewhere (a restarted run finds it "present": recorded again)
    if result.report is not None and result.report.src_location != plan.to_location:
        yield dg.AssetMaterialization(
            recording.CHECKPOINT_REPLICAS,
            partition=dg.MultiPartitionKey({"job": plan.job, "region": plan.to_location}),
            metadata=recording.carry_metadata(result),
        )
    yield dg.Output(move.after(result))


@dg.op(required_resource_keys=RESOURCES, tags=IN_TARGET)
def resume_in_target(context: dg.OpExecutionContext, move: MoveState) -> Iterator[Any]:
    """``retrain_run[job]``: the job resumed in the target. Before a price move's shadow validation it
    is a K-step probation from the drained checkpoint that commits nothing (the comparison's target
    side, so a failed target leaves no checkpoint behind); for a placement or a preemption recovery
    it is the live trainer."""
    try:
        result = steps.resume_in_target(recording.move_env(context), move)
    except MoveFailed as exc:  # the target's topology check refused it: roll back like a failed shadow
        raise _failure(exc) from None
    yield dg.AssetMaterialization(
        recording.RETRAIN_RUN, partition=move.plan.job, metadata=recording.retrain_metadata(result)
    )
    yield dg.Output(move.after(result))


@dg.op(required_resource_keys=RESOURCES, tags=IN_TARGET)
def validate_shadow(context: dg.OpExecutionContext, move: MoveState) -> Iterator[Any]:
    """``shadow_validation[job]``: source and target resumed from the drained checkpoint for K steps,
    compared; its blocking checks stop the move (and trigger the rollback) when they fail."""
    result = cutover.validate_move(recording.move_env(context), move)
    if result is not None:  # a first placement has nothing to compare against
        job = move.plan.job
        yield dg.AssetMaterialization(
            recording.SHADOW_VALIDATION, partition=job, metadata=recording.shadow_metadata(result.comparison)
        )
        for name, check in recording.shadow_checks(result.verdicts, job).items():
            yield recording.check_evaluation(recording.SHADOW_VALIDATION, name, check, job)
        try:
            gate_shadow(result, move.plan)
        except MoveFailed as exc:
            raise _failure(exc) from None
    yield dg.Output(move)


@dg.op(required_resource_keys=RESOURCES, tags=IN_TARGET)
def cut_over(context: dg.OpExecutionContext, move: MoveState) -> MoveState:
    """The job runs in the target: live trainer started (after a price move's probation), placement
    state updated, ``raw.migrations`` row, recovery time of a preemption."""
    result = cutover.go_live(recording.move_env(context), move)
    context.add_output_metadata(
        {k: v for k, v in result.row.items() if isinstance(v, (str, int, float)) and not isinstance(v, bool)}
    )
    return move.after(result)


class RollbackConfig(dg.Config):
    """The failed move to undo (read from the move ledger) and why it failed."""

    job: str
    failed_run_id: str = ""
    """The run that made the move; empty: the job's last recorded move, whichever run made it."""
    reason: str = ""
    unfit_hours: float = 24.0


@dg.op(name=contract.ROLL_BACK_OP, required_resource_keys=RESOURCES, tags=IN_SOURCE)
def roll_back(context: dg.OpExecutionContext, config: RollbackConfig) -> dict[str, Any]:
    """Stop the target, resume in the source from its own newest checkpoint, mark the target unfit."""
    move = load(config.job)
    if move is None:
        raise dg.Failure(f"rollback of {config.job}: the move ledger records no move of it")
    if config.failed_run_id and move.run_id != config.failed_run_id:
        raise dg.Failure(
            f"rollback of {config.job}: its last move was made by run {move.run_id}, not {config.failed_run_id}"
        )
    reason = config.reason or f"run {config.failed_run_id or move.run_id} failed"
    result = cutover.roll_back(
        recording.move_env(context), move.plan, reason=reason, unfit_hours=config.unfit_hours
    )
    move.after(result)
    return {"plan": move.plan.to_dict(), "stopped": result.stopped, "unfit_until": result.unfit_until}


@dg.job(
    name=contract.MIGRATION_JOB,
    executor_def=move_executor,
    tags={contract.TAG_KIND: "migration"},
    description="Move a training job: delta sync, checkpoint "
    "migration, resume in the target, shadow validation, cutover (rolled back on failure).",
)
def migration_job() -> None:
    move = plan_move()
    move = sync_dataset(fingerprint_dataset(move))
    move = sync_checkpoint(drain_source(move))
    cut_over(validate_shadow(resume_in_target(move)))


@dg.job(
    name=contract.RECOVERY_JOB,
    executor_def=move_executor,
    tags={contract.TAG_KIND: "preemption_recovery"},
    description="Resume a preempted job elsewhere from its "
    "emergency checkpoint: the migration chain without the shadow wait.",
)
def preemption_recovery_job() -> None:
    move = plan_recovery()
    move = sync_dataset(fingerprint_dataset(move))
    cut_over(resume_in_target(sync_checkpoint(move)))


@dg.job(
    name=contract.ROLLBACK_JOB,
    executor_def=move_executor,
    tags={contract.TAG_KIND: "rollback"},
    description="Undo a failed move: stop the target, resume in the "
    "source, mark the target unfit for a cooldown.",
)
def rollback_job() -> None:
    roll_back()


defs = dg.Definitions(jobs=[migration_job, preemption_recovery_job, rollback_job])
