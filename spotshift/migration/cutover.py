"""The end of a move: the shadow validation decides, then go live or roll back.

* :func:`validate_move` — source and target resumed from the drained checkpoint, K steps each,
  compared (the target side is the probation that already ran); its verdicts come from
  :func:`spotshift.training.shadow.verdicts`.
* :func:`go_live` — the job runs in the target: live trainer started (after a price move's
  probation), placement state updated (cooldown after a price move), ``raw.migrations`` row with
  status ``cut_over``, and for a preemption recovery the notice's ``recovered_at``/``recovery_s``.
* :func:`roll_back` — the target failed (a blocked shadow check, a failed step): stop any trainer
  of the job, resume it in the source from its own newest checkpoint, mark the target unfit for
  a cooldown, ``raw.migrations`` row with status ``rolled_back``.

Both ends are idempotent: re-running them after a crash converges on the same state, and neither
ever leaves two live trainers of one job (the compute backend's per-job lock refuses a second).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from spotshift import warehouse
from spotshift.clock import parse_utc, virtual_now
from spotshift.migration.compat import record_probe
from spotshift.migration.plan import MovePlan
from spotshift.migration.state import MoveEnv, MoveState, save
from spotshift.migration.steps import RetrainResult, live_in_target
from spotshift.placement.params import PlacementParams
from spotshift.placement.state import load_state, mark_unfit, record_placement, set_status
from spotshift.training import relocate, runs
from spotshift.training.shadow import (
    ShadowComparison,
    ShadowThresholds,
    ShadowVerdict,
    verdicts,
)
from spotshift.training.shadow_run import run_shadow_validation
from spotshift.warehouse import first_row, record_facts


@dataclass
class ShadowResult:
    """The comparison and its verdicts (by check name)."""

    comparison: ShadowComparison
    verdicts: list[ShadowVerdict]

    @property
    def blocked(self) -> list[ShadowVerdict]:
        """Failed verdicts that stop the move."""
        return [v for v in self.verdicts if not v.passed and v.blocking]

    def apply(self, state: MoveState) -> MoveState:
        return state


def validate_shadow(
    env: MoveEnv,
    job: str,
    *,
    source: str,
    target: str,
    steps: int,
    checkpoint_id: str | None = None,
    thresholds: ShadowThresholds | None = None,
    perturb: dict[str, Any] | None = None,
    target_result: dict[str, Any] | None = None,
    usage: dict[str, dict[str, Any]] | None = None,
) -> ShadowResult:
    """Source and target resumed from the same checkpoint, K steps each, compared; the comparison
    is a ``raw.shadow_validations`` row. ``target_result``: the probation already ran the target."""
    cmp = run_shadow_validation(
        env.backend,
        job,
        source_location=source,
        target_location=target,
        steps=steps,
        checkpoint_id=checkpoint_id,
        thresholds=thresholds,
        perturb=perturb,
        target_result=target_result,
        key_provider=env.key_spec,
        run_id=env.run_id,
        usage=usage,
    )
    env.record("raw.shadow_validations", [cmp.row()])
    return ShadowResult(cmp, verdicts(cmp))


def validate_move(env: MoveEnv, state: MoveState) -> ShadowResult | None:
    """The move's shadow validation against its probation (None: a placement has no source). When
    the probation probed an unproven runtime pair, its outcome goes into the compatibility matrix
    (:func:`~spotshift.migration.compat.record_probe`: proven, or known bad)."""
    plan = state.plan
    if not plan.from_location:
        return None
    result = validate_shadow(
        env,
        plan.job,
        source=plan.from_location,
        target=plan.to_location,
        steps=state.shadow.shadow_steps,
        checkpoint_id=state.from_checkpoint or None,
        thresholds=ShadowThresholds(max_loss_diff=state.shadow.max_loss_diff),
        perturb=state.shadow.perturb(),
        target_result=state.probation,
        usage={"target": plan.usage()},
    )
    failed = "; ".join(f"{v.name}: {v.description}" for v in result.blocked)
    record_probe(
        env,
        state,
        passed=not failed,
        reason=f"shadow comparison blocked: {failed}"
        if failed
        else "probation matched the shadow comparison",
    )
    return result


@dataclass
class CutOverResult:
    """The job runs in the target: its ``raw.migrations`` row (and a recovery's time)."""

    row: dict[str, Any]
    live: RetrainResult | None  # the trainer started after a probation

    def apply(self, state: MoveState) -> MoveState:
        return save(replace(state, status="cut_over"))


def go_live(env: MoveEnv, state: MoveState) -> CutOverResult:
    """Cut over: the live trainer in the target (after a price move's probation), placement state
    (cooldown after a price move), ``raw.migrations`` row, recovery time of a preemption."""
    plan = state.plan
    live = live_in_target(env, plan) if plan.validated else None
    drained = state.drained_at_wall
    with warehouse.connect(env.database) as con:
        row = record_cut_over(
            con,
            plan,
            now=virtual_now(),
            started_at=parse_utc(state.started_at),
            run_id=env.run_id,
            cooldown_hours=PlacementParams().cooldown_hours,
            downtime_s=(time.time() - drained) if drained else None,
            bytes_moved=state.bytes_moved,
            egress_usd=state.egress_usd,
        )
    return CutOverResult(row, live)


@dataclass
class RollbackResult:
    """A failed move undone: target stopped, source resumed (price moves), target unfit."""

    plan: MovePlan
    stopped: bool
    resumed: dict[str, Any] | None
    unfit_until: str
    reason: str

    def apply(self, state: MoveState) -> MoveState:
        return save(replace(state, status="rolled_back"))


def roll_back(env: MoveEnv, plan: MovePlan, *, reason: str, unfit_hours: float = 24.0) -> RollbackResult:
    """Stop any trainer of the job (with a checkpoint), resume it in the source from the source's own
    newest checkpoint, mark the target unfit for ``unfit_hours``; ``raw.migrations`` row. Idempotent."""

    def stop_trainer() -> bool:
        info = env.backend.status(plan.job)
        if info is None or not info.alive:
            return False
        runs.stop_with_checkpoint(
            env.backend, plan.job, reason=f"rollback of {plan.run_key}", database=env.database
        )
        return True

    def restart_source() -> dict[str, Any]:
        return relocate.start_live(
            env.backend,
            plan.job,
            plan.from_location,
            key_provider=env.key_spec,
            run_id=env.run_id,
            database=env.database,
            accept_older=True,
        )

    with warehouse.connect(env.database) as con:
        out = undo_move(
            con,
            plan,
            now=virtual_now(),
            run_id=env.run_id,
            reason=reason[:500],
            unfit_hours=unfit_hours,
            restart_source=restart_source,
            stop_trainer=stop_trainer,
        )
    env.log(f"rolled back {plan.run_key}: {reason[:300]}")
    return RollbackResult(plan, out["stopped"], out["resumed"], out["unfit_until"], reason)


def migration_row(
    plan: MovePlan,
    *,
    status: str,
    started_at: datetime,
    ended_at: datetime,
    run_id: str,
    downtime_s: float | None = None,
    bytes_moved: int | None = None,
    egress_usd: float | None = None,
) -> dict[str, Any]:
    """The ``raw.migrations`` row of a finished move."""
    return {
        "migration_id": plan.run_key or f"{plan.job}:{plan.from_location or '-'}->{plan.to_location}",
        "job": plan.job,
        # a rolled-back move keeps the trigger that started it (price, ...): the status says it was undone
        "trigger": plan.trigger,
        "from_location": plan.from_location,
        "to_location": plan.to_location,
        "started_at": started_at,
        "ended_at": ended_at,
        "status": status,
        "downtime_s": downtime_s,
        "bytes_moved": bytes_moved,
        "egress_usd": egress_usd,
        "expected_savings_usd": plan.expected_savings_usd,
        "run_id": run_id,
    }


def _record_once(con: Any, row: dict[str, Any]) -> bool:
    # keyed by (migration_id, status, run_id): a re-executed step records nothing twice
    return record_facts({"raw.migrations": [row]}, con=con).rows("raw.migrations") > 0


def record_cut_over(
    con: Any,
    plan: MovePlan,
    *,
    now: datetime,
    started_at: datetime,
    run_id: str,
    cooldown_hours: float,
    downtime_s: float | None = None,
    bytes_moved: int | None = None,
    egress_usd: float | None = None,
) -> dict[str, Any]:
    """The job runs in the target now: placement state, ``raw.migrations``, recovery time. Idempotent."""
    record_placement(
        plan.job,
        location=plan.to_location,
        market=plan.market,
        instance_type=plan.instance_type,
        now=now,
        price_usd_hour=plan.price_usd_hour,
        zone=plan.zone,
        trigger=plan.trigger,
        run_key=plan.run_key,
        cooldown_hours=cooldown_hours if plan.validated else 0.0,
        status="running",
    )
    row = migration_row(
        plan,
        status="cut_over",
        started_at=started_at,
        ended_at=now,
        run_id=run_id,
        downtime_s=downtime_s,
        bytes_moved=bytes_moved,
        egress_usd=egress_usd,
    )
    _record_once(con, row)
    recovery_s = None
    if plan.trigger == "preemption" and plan.notice_id:
        recovery_s = record_recovery(con, plan.notice_id, recovered_at=now)
    return {**row, "recovery_s": recovery_s}


def record_recovery(con: Any, notice_id: str, *, recovered_at: datetime) -> float | None:
    """Fill ``recovered_at``/``recovery_s`` of a preemption (notice to training resumed elsewhere)."""
    row = first_row(
        con,
        "SELECT noticed_at FROM raw.preemptions WHERE notice_id = ? ORDER BY noticed_at LIMIT 1",
        [notice_id],
    )
    if row is None or row[0] is None:
        return None
    noticed = row[0] if isinstance(row[0], datetime) else parse_utc(str(row[0]))
    if noticed.tzinfo is None:
        from datetime import UTC

        noticed = noticed.replace(tzinfo=UTC)
    recovery_s = max(0.0, (recovered_at - noticed).total_seconds())
    con.execute(
        "UPDATE raw.preemptions SET recovered_at = ?, recovery_s = ? WHERE notice_id = ?",
        [recovered_at.replace(tzinfo=None) if recovered_at.tzinfo else recovered_at, recovery_s, notice_id],
    )
    return recovery_s


def undo_move(
    con: Any,
    plan: MovePlan,
    *,
    now: datetime,
    run_id: str,
    reason: str,
    unfit_hours: float,
    restart_source: Any,
    stop_trainer: Any,
) -> dict[str, Any]:
    """Undo a failed move: no trainer in the target, the job resumed in the source, the target unfit.

    ``stop_trainer()`` stops any live trainer of the job (with a checkpoint); ``restart_source()``
    resumes the job in ``plan.from_location`` from ``plan.from_checkpoint`` and returns when it runs.
    A plan without a source (a placement or a recovery from a region that is gone) has nothing to
    resume: the job is left ``preempted`` for the next decision to place it again. Idempotent.
    """
    stopped = stop_trainer()
    mark_unfit(plan.job, plan.to_location, until=now + timedelta(hours=unfit_hours), reason=reason, now=now)
    resumed = None
    if plan.from_location and plan.validated:
        resumed = restart_source()
        before = load_state(plan.job)
        record_placement(
            plan.job,
            location=plan.from_location,
            market=before.market or "spot",
            instance_type=before.instance_type or plan.instance_type,
            now=now,
            price_usd_hour=before.price_usd_hour,
            zone=before.zone,
            trigger="rollback",
            run_key=plan.run_key,
            status="running",
        )
    else:
        set_status(plan.job, "preempted", now=now)
    row = migration_row(plan, status="rolled_back", started_at=now, ended_at=now, run_id=run_id)
    _record_once(con, row)
    return {
        "stopped": stopped,
        "resumed": resumed,
        "reason": reason,
        "unfit_until": (now + timedelta(hours=unfit_hours)).isoformat(),
        "row": json.loads(json.dumps(row, default=str)),
    }
