"""Moving a training job, as three op jobs whose steps materialize the contract assets in order.

``migration_job`` (requested by ``price_change_sensor``; also the first placement of a job)::

    plan_move -> fingerprint_dataset -> sync_dataset -> drain_source -> sync_checkpoint
              -> resume_in_target -> validate_shadow -> cut_over

``preemption_recovery_job`` (requested by ``preemption_sensor``): the same chain from the emergency
checkpoint, without draining (the source is gone) and without the shadow wait::

    plan_recovery -> fingerprint_dataset -> sync_dataset -> sync_checkpoint -> resume_in_target -> cut_over

``rollback_job`` (requested by ``migration_failure_sensor``): stop the target, resume the job in the
source from the checkpoint the move started from, mark the target unfit for a cooldown.

The assets of the chain have different partitions (dataset x region, job x region, job), which
no single asset job can run; so each step here calls the same functions as the asset it stands
for and records that asset's materialization (and its checks) for the partition it touched:
``dataset_fingerprints[dataset]``, ``dataset_replicas[dataset|target]``, ``checkpoints[job]``,
``checkpoint_replicas[job|target]``, ``retrain_run[job]``, ``shadow_validation[job]``. A failing
blocking check (replica root, shadow thresholds) fails its step, so nothing after it runs and the
run fails -> ``migration_failure_sensor`` -> ``rollback_job``.

For a price move the target first runs a bounded probation (``retrain_run``: K steps from the
drained checkpoint); only after the shadow comparison passes does ``cut_over`` start the live
trainer there. The source is drained before the target starts, so at most one trainer of a job is
ever live (the compute backend's per-job lock enforces it), and every step is idempotent: a run
restarted after a crash redoes what is missing and converges.
"""

import json
import time
from collections.abc import Iterator
from typing import Any

import dagster as dg

from assets.checkpoints import checkpoint_metadata, checkpoint_replicas, checkpoints
from assets.datasets import (
    dataset_fingerprints,
    dataset_replicas,
    fingerprint_dataset_partition,
    replica_check_result,
    replicate_dataset_partition,
)
from assets.training import retrain_run, shadow_metadata, shadow_validation, shadow_verdicts
from resources.compute import ComputeBackendResource
from resources.keys import KeyProviderResource
from resources.warehouse import WarehouseResource
from spotshift.clock import virtual_now
from spotshift.placement import moves
from spotshift.placement.moves import MovePlan

TAG_PLAN = "spotshift/plan"


class MoveConfig(dg.Config):
    """The move to make (a :class:`~spotshift.placement.moves.MovePlan`) and how to validate it."""

    job: str
    to_location: str
    market: str
    instance_type: str
    price_usd_hour: float
    from_location: str = ""
    trigger: str = "price"
    zone: str = ""
    list_price_usd_hour: float | None = None
    gpu_model: str = ""
    gpu_count: int = 1
    snapshot_id: str = ""
    run_key: str = ""
    expected_savings_usd: float = 0.0
    notice_id: str = ""
    from_checkpoint: str = ""
    shadow_steps: int = 20
    """K: steps the probation run and both shadow sides take from the drained checkpoint."""
    max_loss_diff: float = 0.01
    perturb_learning_rate: float = 0.0
    """> 0: the target side of the shadow comparison trains with this learning rate (a failing validation)."""

    def plan(self) -> MovePlan:
        fields = MovePlan.__dataclass_fields__
        return MovePlan(**{k: v for k, v in self.model_dump().items() if k in fields})


class RecoveryConfig(dg.Config):
    """The preemption notice to recover from (the event the trainer wrote)."""

    job: str
    location: str
    notice_id: str
    noticed_at: str = ""
    step: int = 0


def move_run_config(plan: MovePlan, **options: Any) -> dict[str, Any]:
    """Run config of ``migration_job`` for ``plan`` (``options``: shadow_steps, max_loss_diff,
    perturb_learning_rate)."""
    return {"ops": {"plan_move": {"config": {**plan.to_dict(), **options}}}}


def _move(plan: MovePlan, **extra: Any) -> dict[str, Any]:
    # the state passed along a chain; a price move's shadow options (shadow_steps,
    # perturb_learning_rate, max_loss_diff) come from MoveConfig through ``extra``
    return {
        "plan": plan.to_dict(),
        "started_at": virtual_now().isoformat(),
        "bytes_moved": 0,
        "egress_usd": 0.0,
        **extra,
    }


def _plan(move: dict[str, Any]) -> MovePlan:
    return MovePlan.from_dict(move["plan"])


def _announce(context: dg.OpExecutionContext, plan: MovePlan) -> None:
    # the run-failure sensor reads the plan back from the run to roll it back
    context.instance.add_run_tags(context.run_id, {TAG_PLAN: json.dumps(plan.to_dict(), sort_keys=True)})
    moves.begin(plan, now=virtual_now())
    src = plan.from_location or "(not running)"
    context.log.info(
        f"{plan.trigger} move of {plan.job}: {src} -> {plan.to_location} ({plan.market} {plan.instance_type})"
    )


@dg.op(out=dg.Out(dict))
def plan_move(context: dg.OpExecutionContext, config: MoveConfig) -> dict[str, Any]:
    """The move the price sensor decided (or the job's first placement)."""
    plan = config.plan()
    _announce(context, plan)
    return _move(
        plan,
        shadow_steps=config.shadow_steps,
        perturb_learning_rate=config.perturb_learning_rate,
        max_loss_diff=config.max_loss_diff,
    )


@dg.op(out=dg.Out(dict, is_required=False))
def plan_recovery(
    context: dg.OpExecutionContext,
    config: RecoveryConfig,
    compute: ComputeBackendResource,
    warehouse: WarehouseResource,
) -> Iterator[Any]:
    """Where to resume a preempted job: the decision with the preempted region's spot capacity gone.
    A decision to queue (wait for capacity) ends the run here: nothing to move yet."""
    from spotshift.placement.state import load_state
    from spotshift.training.runs import wait_for_exit

    backend = compute.backend()
    if wait_for_exit(backend, config.job, location=config.location):
        context.log.info(f"waited for the preempted trainer of {config.job} in {config.location} to exit")
    state, live = load_state(config.job), backend.status(config.job)
    if live is not None and live.alive and live.location != config.location:
        context.log.info(
            f"notice {config.notice_id} is handled: {config.job} already runs in {live.location}"
        )
        return
    if state.status == "finished":
        return
    with warehouse.get_connection() as con:
        plan, decision = moves.recovery_plan(con, config.job, config.model_dump(), now=virtual_now())
    context.log.info(f"{decision.action}: " + "; ".join(decision.reasons))
    if plan is None:
        return
    _announce(context, plan)
    yield dg.Output(_move(plan))


@dg.op(required_resource_keys={"stores", "warehouse"})
def fingerprint_dataset(context: dg.OpExecutionContext, move: dict[str, Any]) -> Iterator[Any]:
    """``dataset_fingerprints[dataset]``: re-fingerprint the job's dataset (files cache: cheap when unchanged)."""
    from spotshift.jobs import get_job

    dataset = get_job(_plan(move).job).dataset
    result = fingerprint_dataset_partition(
        context.resources.stores, context.resources.warehouse, dataset, run_id=context.run_id, log=context.log
    )
    yield (dg.AssetMaterialization(dataset_fingerprints.key, partition=dataset, metadata=result.metadata))
    yield dg.Output({**move, "dataset": dataset})


@dg.op(required_resource_keys={"stores", "warehouse"})
def sync_dataset(context: dg.OpExecutionContext, move: dict[str, Any]) -> Iterator[Any]:
    """``dataset_replicas[dataset|target]``: delta-sync the snapshot to the target; blocking root check."""
    plan, dataset = _plan(move), move["dataset"]
    stores, warehouse = context.resources.stores, context.resources.warehouse
    result = replicate_dataset_partition(
        context.instance, stores, warehouse, dataset, plan.to_location, run_id=context.run_id, log=context.log
    )
    partition = dg.MultiPartitionKey({"dataset": dataset, "region": plan.to_location})
    yield (dg.AssetMaterialization(dataset_replicas.key, partition=partition, metadata=result.metadata))
    verdict = replica_check_result(context.instance, stores, dataset, plan.to_location)
    yield _check_evaluation(dataset_replicas.key, "replica_matches_fingerprint", verdict, partition)
    if not verdict.passed:
        raise dg.Failure(f"replica of {dataset} in {plan.to_location}: {verdict.description}")
    meta = result.metadata or {}
    yield dg.Output(
        {
            **move,
            "bytes_moved": move["bytes_moved"] + _value(meta.get("bytes_sent"), 0),
            "egress_usd": move["egress_usd"] + _value(meta.get("egress_usd"), 0.0),
        }
    )


@dg.op
def drain_source(
    context: dg.OpExecutionContext,
    move: dict[str, Any],
    compute: ComputeBackendResource,
    warehouse: WarehouseResource,
) -> Iterator[Any]:
    """``checkpoints[job]``: stop the job's live trainer (wherever it runs) at a step boundary with a
    committed checkpoint; the move starts from the source's newest checkpoint."""
    from spotshift.training.runs import latest_ref, stop_with_checkpoint

    plan = _plan(move)
    backend = compute.backend()
    info = backend.status(plan.job)
    drained_at = None
    if info is not None and info.alive:
        out = stop_with_checkpoint(
            backend, plan.job, reason=f"migration {plan.run_key}", database=warehouse.database
        )
        drained_at = time.time()
        yield (
            dg.AssetMaterialization(
                checkpoints.key,
                partition=plan.job,
                metadata={
                    "mode": "stopped",
                    "location": out["location"],
                    **checkpoint_metadata(out["checkpoint"]),
                },
            )
        )
    # a restarted run finds the source already drained: its newest checkpoint is still the start
    ref = latest_ref(plan.job, plan.from_location) if plan.from_location else None
    yield dg.Output(
        {
            **move,
            "from_checkpoint": ref["checkpoint_id"] if ref else "",
            "drained_at_wall": drained_at or move.get("drained_at_wall"),
        }
    )


@dg.op
def sync_checkpoint(
    context: dg.OpExecutionContext,
    move: dict[str, Any],
    keys: KeyProviderResource,
    warehouse: WarehouseResource,
) -> Iterator[Any]:
    """``checkpoint_replicas[job|target]``: the newest checkpoint into the target (tensor delta when it can)."""
    from spotshift.errors import ConfigError
    from spotshift.training.runs import current_location, latest_ref, replicate_latest

    plan = _plan(move)
    source = plan.from_location
    if not source:  # placing a job that ran before (a failed recovery): its newest checkpoint, wherever
        try:
            source = current_location(plan.job, warehouse.database)
        except ConfigError:
            source = ""
    if not source or source == plan.to_location or latest_ref(plan.job, source) is None:
        yield dg.Output(move)  # nothing to carry over (a first placement), or it is already there
        return
    report = replicate_latest(plan.job, plan.to_location, keys.provider(), source_location=source)
    transfer = report.transfer_row(context.run_id)
    if report.method != "present":
        warehouse.append("raw.transfers", [transfer])
    partition = dg.MultiPartitionKey({"job": plan.job, "region": plan.to_location})
    yield (
        dg.AssetMaterialization(
            checkpoint_replicas.key,
            partition=partition,
            metadata={
                "method": report.method,
                "checkpoint_id": report.checkpoint_id,
                "step": report.step,
                "source_location": report.src_location or "",
                "bytes_full": report.bytes_full,
                "bytes_sent": report.bytes_sent,
                "ratio": round(report.ratio, 6),
                "seconds": round(report.seconds, 4),
            },
        )
    )
    yield dg.Output(
        {
            **move,
            "from_checkpoint": move.get("from_checkpoint") or report.checkpoint_id,
            "bytes_moved": move["bytes_moved"] + report.bytes_sent,
            "egress_usd": move["egress_usd"] + (transfer.get("egress_usd") or 0.0),
        }
    )


@dg.op
def resume_in_target(
    context: dg.OpExecutionContext,
    move: dict[str, Any],
    compute: ComputeBackendResource,
    keys: KeyProviderResource,
    warehouse: WarehouseResource,
) -> Iterator[Any]:
    """``retrain_run[job]``: the job resumed in the target. Before a price move's shadow validation it
    is a K-step probation from the drained checkpoint that commits nothing (the comparison's target
    side, so a failed target leaves no checkpoint behind); for a placement or a preemption recovery
    it is the live trainer."""
    from spotshift.training import runs
    from spotshift.training.shadow import run_shadow_side

    plan = _plan(move)
    backend = compute.backend()
    if plan.trigger == "price":
        t0 = time.monotonic()
        perturb = (
            {"learning_rate": move["perturb_learning_rate"]} if move["perturb_learning_rate"] > 0 else None
        )
        probation = run_shadow_side(
            backend,
            plan.job,
            side="target",
            location=plan.to_location,
            steps=move["shadow_steps"],
            checkpoint_id=move["from_checkpoint"],
            perturb=perturb,
            key_provider=keys.spec_or_none(),
            run_id=context.run_id,
            usage=plan.usage(),
        )
        losses = [s["loss"] for s in probation["steps"]]
        meta: dict[str, Any] = {
            "mode": "probation",
            "target_location": plan.to_location,
            "resumed_from": probation["resumed"]["checkpoint_id"],
            "steps_run": len(losses),
            "loss_first": losses[0],
            "loss_last": losses[-1],
            "seconds": round(time.monotonic() - t0, 3),
        }
        move = {**move, "probation": probation}
    else:
        out = runs.start_live(
            backend,
            plan.job,
            plan.to_location,
            usage=plan.usage(),
            key_provider=keys.spec_or_none(),
            run_id=context.run_id,
            database=warehouse.database,
        )
        meta = {k: v for k, v in out.items() if k not in ("result", "checkpoint") and v is not None}
        meta.update(checkpoint_metadata(out.get("checkpoint")))
    yield dg.AssetMaterialization(retrain_run.key, partition=plan.job, metadata=meta)
    yield dg.Output(move)


@dg.op
def validate_shadow(
    context: dg.OpExecutionContext,
    move: dict[str, Any],
    compute: ComputeBackendResource,
    keys: KeyProviderResource,
    warehouse: WarehouseResource,
) -> Iterator[Any]:
    """``shadow_validation[job]``: source and target resumed from the drained checkpoint for K steps,
    compared; its blocking checks stop the move (and trigger the rollback) when they fail."""
    from spotshift.training.shadow import ShadowThresholds, run_shadow_validation

    plan = _plan(move)
    if not plan.from_location:
        yield dg.Output(move)  # a first placement has nothing to compare against
        return
    cmp = run_shadow_validation(
        compute.backend(),
        plan.job,
        source_location=plan.from_location,
        target_location=plan.to_location,
        steps=move["shadow_steps"],
        checkpoint_id=move.get("from_checkpoint"),
        thresholds=ShadowThresholds(max_loss_diff=move["max_loss_diff"]),
        target_result=move.get("probation"),
        key_provider=keys.spec_or_none(),
        run_id=context.run_id,
        usage={"target": plan.usage()},
    )
    warehouse.append("raw.shadow_validations", [cmp.row()])
    meta = shadow_metadata(cmp)
    yield (dg.AssetMaterialization(shadow_validation.key, partition=plan.job, metadata=meta))
    failed = []
    for name, verdict in shadow_verdicts(cmp.to_dict()).items():
        yield _check_evaluation(shadow_validation.key, name, verdict, plan.job)
        if not verdict.passed and verdict.severity == dg.AssetCheckSeverity.ERROR:
            failed.append(f"{name}: {verdict.description}")
    if failed:
        raise dg.Failure(f"shadow validation of {plan.job} in {plan.to_location} failed: {'; '.join(failed)}")
    yield dg.Output(move)


@dg.op
def cut_over(
    context: dg.OpExecutionContext,
    move: dict[str, Any],
    compute: ComputeBackendResource,
    keys: KeyProviderResource,
    warehouse: WarehouseResource,
) -> dict[str, Any]:
    """The job runs in the target: live trainer started (after a price move's probation), placement
    state updated, ``raw.migrations`` row, recovery time of a preemption."""
    from spotshift.clock import parse_utc
    from spotshift.placement.params import PlacementParams
    from spotshift.training import runs

    plan = _plan(move)
    if plan.trigger == "price":
        runs.start_live(
            compute.backend(),
            plan.job,
            plan.to_location,
            usage=plan.usage(),
            key_provider=keys.spec_or_none(),
            run_id=context.run_id,
            database=warehouse.database,
        )
    drained = move.get("drained_at_wall")
    with warehouse.get_connection() as con:
        row = moves.cut_over(
            con,
            plan,
            now=virtual_now(),
            started_at=parse_utc(move["started_at"]),
            run_id=context.run_id,
            cooldown_hours=PlacementParams().cooldown_hours,
            downtime_s=(time.time() - drained) if drained else None,
            bytes_moved=move["bytes_moved"],
            egress_usd=move["egress_usd"],
        )
    context.add_output_metadata(
        {k: v for k, v in row.items() if isinstance(v, (str, int, float)) and not isinstance(v, bool)}
    )
    return {**move, "cut_over": True}


class RollbackConfig(dg.Config):
    """The failed move (its plan, from the failed run's tags) and why it failed."""

    plan_json: str
    failed_run_id: str = ""
    reason: str = ""
    unfit_hours: float = 24.0


@dg.op
def roll_back(
    context: dg.OpExecutionContext,
    config: RollbackConfig,
    compute: ComputeBackendResource,
    keys: KeyProviderResource,
    warehouse: WarehouseResource,
) -> dict[str, Any]:
    """Stop the target, resume in the source from its own newest checkpoint, mark the target unfit."""
    from spotshift.training import runs

    plan = MovePlan.from_dict(json.loads(config.plan_json))
    backend = compute.backend()
    now = virtual_now()

    def stop_trainer() -> bool:
        info = backend.status(plan.job)
        if info is None or not info.alive:
            return False
        runs.stop_with_checkpoint(
            backend, plan.job, reason=f"rollback of {plan.run_key}", database=warehouse.database
        )
        return True

    def restart_source() -> dict[str, Any]:
        return runs.start_live(
            backend,
            plan.job,
            plan.from_location,
            key_provider=keys.spec_or_none(),
            run_id=context.run_id,
            database=warehouse.database,
            accept_older=True,
        )

    reason = config.reason or f"run {config.failed_run_id} failed"
    with warehouse.get_connection() as con:
        out = moves.roll_back(
            con,
            plan,
            now=now,
            run_id=context.run_id,
            reason=reason[:500],
            unfit_hours=config.unfit_hours,
            restart_source=restart_source,
            stop_trainer=stop_trainer,
        )
    context.log.info(f"rolled back {plan.run_key}: {reason[:300]}")
    return {"plan": plan.to_dict(), "stopped": out["stopped"], "unfit_until": out["unfit_until"]}


def _value(meta_value: Any, default: Any) -> Any:
    if meta_value is None:
        return default
    return getattr(meta_value, "value", meta_value)


def _check_evaluation(
    asset_key: dg.AssetKey, name: str, verdict: dg.AssetCheckResult, partition: Any
) -> dg.AssetCheckEvaluation:
    """An asset check's verdict as an event a step records for ``partition`` of ``asset_key``."""
    return dg.AssetCheckEvaluation(
        asset_key=asset_key,
        check_name=name,
        passed=verdict.passed,
        metadata=dict(verdict.metadata or {}),
        severity=verdict.severity,
        description=verdict.description,
        blocking=True,
        partition=str(partition),
    )


@dg.job(
    tags={"spotshift/kind": "migration"},
    description="Move a training job: delta sync, checkpoint "
    "migration, resume in the target, shadow validation, cutover (rolled back on failure).",
)
def migration_job() -> None:
    move = plan_move()
    move = sync_dataset(fingerprint_dataset(move))
    move = sync_checkpoint(drain_source(move))
    cut_over(validate_shadow(resume_in_target(move)))


@dg.job(
    tags={"spotshift/kind": "preemption_recovery"},
    description="Resume a preempted job elsewhere from its "
    "emergency checkpoint: the migration chain without the shadow wait.",
)
def preemption_recovery_job() -> None:
    move = plan_recovery()
    move = sync_dataset(fingerprint_dataset(move))
    cut_over(resume_in_target(sync_checkpoint(move)))


@dg.job(
    tags={"spotshift/kind": "rollback"},
    description="Undo a failed move: stop the target, resume in the "
    "source, mark the target unfit for a cooldown.",
)
def rollback_job() -> None:
    roll_back()


defs = dg.Definitions(jobs=[migration_job, preemption_recovery_job, rollback_job])
