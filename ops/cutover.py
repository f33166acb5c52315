"""Cutting an inference endpoint over, as op jobs over :mod:`spotshift.migration.endpoint_cutover`.

``cutover_job`` (requested by ``cutover_stage_sensor`` once per finished stage, run key
``<endpoint>:<cutover id>:<stage>``)::

    advance_cutover -> validate_cutover_stage

``advance_cutover`` moves what the clock alone moves (a stage whose hold passed, a failback window
that closed), then makes the endpoint's replicas follow the plan of the phase and stage it is in
(target replicas launched, source replicas drained, within 1.25x the steady state) through the
``launcher`` resource; ``validate_cutover_stage`` records ``cutover_validation`` for the stage with one
blocking check per criterion (``p99_latency``, ``error_rate``, ``cost_per_million_tokens``,
``output_agreement``) and the stage's ``raw.cutovers`` rows. A failed check fails the op, so the run
fails -> ``cutover_failure_sensor`` -> ``cutover_rollback_job`` (target weight 0; idempotent when
the router already did it; the source scaled back, the target drained). In the UI the runs of one cutover are its stages in order, like the
steps of a training migration, and the failed check names the criterion.
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from resources.compute import ReplicaLauncherResource
from spotshift.errors import SpotshiftError
from spotshift.migration import endpoint_cutover as ec
from spotshift.serving import cutover as co

CUTOVER_VALIDATION = dg.AssetKey("cutover_validation")


class StageConfig(dg.Config):
    """The finished stage to validate."""

    endpoint: str
    cutover_id: str
    stage: str


def stage_checks(state: co.CutoverState, stage: str) -> tuple[dict[str, Any], list[dg.AssetCheckResult]]:
    """Materialization metadata and one check result per criterion for ``stage`` of ``state``."""
    verdicts = co.stage_verdicts(state, stage)
    rows = [r for r in state.stage_rows if r["stage"] == stage]
    row = rows[-1] if rows else {}
    meta: dict[str, Any] = {
        "endpoint": state.endpoint,
        "cutover_id": state.cutover_id,
        "stage": stage,
        "status": row.get("status", state.phase),
        "to_location": state.to_location,
        "from_locations": ", ".join(state.source_locations),
        "phase": state.phase,
        "reason": state.reason or "",
        "verdicts": dg.MetadataValue.json(verdicts),
    }
    for k in ("source_p99_ms", "target_p99_ms", "source_usd_per_mtok", "target_usd_per_mtok", "agreement"):
        if row.get(k) is not None:
            meta[k] = float(row[k])
    results = [
        dg.AssetCheckResult(
            check_name=name,
            passed=v["passed"] is not False,
            severity=dg.AssetCheckSeverity.ERROR,
            description=v["detail"],
            metadata={
                "endpoint": state.endpoint,
                "stage": stage,
                "failed_windows": v["failed_windows"],
                "passed_windows": v["passed_windows"],
                "judged": v["passed"] is not None,
            },
        )
        for name, v in verdicts.items()
    ]
    return meta, results


def follow_plan(context: dg.OpExecutionContext, endpoint: str, launcher: ReplicaLauncherResource) -> None:
    """One pass of the replicas following the cutover's plan; what it did as output metadata."""
    try:
        step = ec.scale_replicas(endpoint, launcher.launcher())
    except SpotshiftError as exc:
        raise dg.Failure(f"cutover of {endpoint}: replicas not scaled: {exc}") from None
    context.log.info(
        f"cutover replicas of {endpoint}: source {step.after['source']} + target {step.after['target']} "
        f"(plan {step.plan['source']} + {step.plan['target']}, cap {step.cap}); launched "
        f"{len(step.launched)}, drained {len(step.drained)}"
    )
    context.add_output_metadata(
        {
            "replicas_source": step.after["source"],
            "replicas_target": step.after["target"],
            "launched": len(step.launched),
            "drained": len(step.drained),
            "fleet_cap": step.cap,
            "scaled": dg.MetadataValue.json(step.to_dict()),
        }
    )


@dg.op(name=ec.ADVANCE_OP, required_resource_keys={"warehouse", "launcher"})
def advance_cutover(context: dg.OpExecutionContext, config: StageConfig) -> str:
    """What the virtual clock moves (a held stage advances, a closed failback window
    decommissions); then the replicas follow the plan of where the cutover now is."""
    st = ec.check(config.endpoint, record=False)
    context.log.info(
        f"cutover {st.cutover_id} of {st.endpoint}: {st.phase} {st.current.label if st.current else ''}"
    )
    follow_plan(context, config.endpoint, context.resources.launcher)
    return config.endpoint


@dg.op(name=ec.VALIDATE_OP, required_resource_keys={"warehouse"})
def validate_cutover_stage(
    context: dg.OpExecutionContext, config: StageConfig, endpoint: str
) -> Iterator[Any]:
    """``cutover_validation`` for the stage with its blocking checks; ``raw.cutovers`` rows."""
    st = co.require_state(endpoint)
    if st.cutover_id != config.cutover_id:
        raise dg.Failure(
            f"cutover {config.cutover_id} of {endpoint} is not the endpoint's current one ({st.cutover_id})"
        )
    written = context.resources.warehouse.append("raw.cutovers", list(st.stage_rows))
    meta, results = stage_checks(st, config.stage)
    meta["rows_recorded"] = written
    yield dg.AssetMaterialization(CUTOVER_VALIDATION, metadata=meta)
    for r in results:
        yield dg.AssetCheckEvaluation(
            asset_key=CUTOVER_VALIDATION,
            check_name=r.check_name,
            passed=r.passed,
            metadata=dict(r.metadata or {}),
            severity=r.severity,
            description=r.description,
            blocking=True,
        )
    failed = [r for r in results if not r.passed]
    if failed:
        raise dg.Failure(
            f"cutover {st.cutover_id} of {endpoint} failed {config.stage}: "
            + "; ".join(f"{r.check_name}: {r.description}" for r in failed)
        )
    yield dg.Output(None)


@dg.job(name=ec.CUTOVER_JOB, tags={"spotshift/kind": "cutover"}, description=__doc__)
def cutover_job() -> None:
    validate_cutover_stage(advance_cutover())


class RollbackConfig(dg.Config):
    """The endpoint to put back on its source."""

    endpoint: str
    reason: str = "cutover_job failed"


@dg.op(name=ec.ROLLBACK_OP, required_resource_keys={"warehouse", "launcher"})
def roll_back_cutover(context: dg.OpExecutionContext, config: RollbackConfig) -> None:
    """Target weight 0 (or a promoted cutover failed back); the stage rows recorded; the source
    scaled back to the steady state and the target drained."""
    st = ec.rollback(config.endpoint, config.reason, record=False)
    context.resources.warehouse.append("raw.cutovers", list(st.stage_rows))
    context.log.info(
        f"cutover {st.cutover_id} of {st.endpoint}: {st.phase}; target weight {st.target_weight:g}"
    )
    follow_plan(context, config.endpoint, context.resources.launcher)


@dg.job(name=ec.CUTOVER_ROLLBACK_JOB, tags={"spotshift/kind": "cutover"})
def cutover_rollback_job() -> None:
    """Put an endpoint back on its source (requested by ``cutover_failure_sensor``)."""
    roll_back_cutover()


defs = dg.Definitions(jobs=[cutover_job, cutover_rollback_job])
