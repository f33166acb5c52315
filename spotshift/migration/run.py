"""The whole move lifecycle without Dagster: the same steps, the same facts, the same rollback.

:func:`run_move` is what ``spotshift move`` runs and what ``migration_job`` runs op by op; a
failure after :func:`~spotshift.migration.state.begin` (a step raised, or a blocking check failed)
is rolled back here the way ``migration_failure_sensor`` + ``rollback_job`` roll it back there.
:func:`plan_recovery` is the first step of ``preemption_recovery_job``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from spotshift import warehouse
from spotshift.clock import virtual_now
from spotshift.errors import ConfigError, SpotshiftError
from spotshift.jobs import get_job
from spotshift.migration import contract, cutover, steps
from spotshift.migration.compat import check_move
from spotshift.migration.plan import MovePlan, plan_from_decision, recovery_plan
from spotshift.migration.state import MoveEnv, MoveFailed, MoveState, ShadowOptions, begin, local_env
from spotshift.placement.inputs import decide_for_job
from spotshift.placement.state import load_state
from spotshift.training.runs import wait_for_exit


@dataclass
class MoveOutcome:
    """How a move ended: ``cut_over`` or ``rolled_back`` (with why), and each step's result."""

    plan: MovePlan
    status: str
    results: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    rollback: cutover.RollbackResult | None = None
    row: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (``spotshift move --json``)."""
        shadow = self.results.get("validate_shadow")
        return {
            "job": self.plan.job,
            "trigger": self.plan.trigger,
            "from_location": self.plan.from_location,
            "to_location": self.plan.to_location,
            "market": self.plan.market,
            "instance_type": self.plan.instance_type,
            "price_usd_hour": self.plan.price_usd_hour,
            "run_key": self.plan.run_key,
            "status": self.status,
            "steps": list(self.results),
            "error": self.error,
            "bytes_moved": self.row.get("bytes_moved"),
            "egress_usd": self.row.get("egress_usd"),
            "downtime_s": self.row.get("downtime_s"),
            "shadow": None
            if shadow is None
            else {v.name: {"passed": v.passed, "description": v.description} for v in shadow.verdicts},
            "unfit_until": self.rollback.unfit_until if self.rollback else None,
        }


def gate_replica(result: steps.ReplicaResult) -> None:
    """:class:`MoveFailed` when the replica is not the home store's snapshot, complete."""
    if result.check is not None and not result.check.passed:
        raise MoveFailed(f"replica of {result.dataset} in {result.region}: {result.check.problem}")


def gate_shadow(result: cutover.ShadowResult | None, plan: MovePlan) -> None:
    """:class:`MoveFailed` naming every blocking shadow rule that failed."""
    if result is not None and result.blocked:
        failed = "; ".join(f"{v.name}: {v.description}" for v in result.blocked)
        raise MoveFailed(f"shadow validation of {plan.job} in {plan.to_location} failed: {failed}")


def _chain(env: MoveEnv, state: MoveState, outcome: MoveOutcome) -> MoveState:
    plan, results = state.plan, outcome.results
    fp = results["fingerprint_dataset"] = steps.fingerprint_dataset(env, get_job(plan.job).dataset)
    state = state.after(fp)
    replica = results["replicate_dataset"] = steps.replicate_dataset(env, fp.dataset, plan.to_location)
    state = state.after(replica)
    gate_replica(replica)
    if plan.trigger != "preemption":  # a preempted source is gone: nothing to drain
        state = state.after(results.setdefault("drain_source", steps.drain_source(env, plan)))
    carry = results["carry_checkpoint"] = steps.carry_checkpoint(
        env, plan.job, plan.to_location, source=plan.from_location
    )
    state = state.after(carry)
    state = state.after(results.setdefault("resume_in_target", steps.resume_in_target(env, state)))
    if plan.validated:
        shadow = results["validate_shadow"] = cutover.validate_move(env, state)
        gate_shadow(shadow, plan)
    live = results["go_live"] = cutover.go_live(env, state)
    outcome.row = live.row
    return state.after(live)


def begin_move(env: MoveEnv, plan: MovePlan, shadow: ShadowOptions | None = None) -> MoveState:
    """The pre-move step of every move (``spotshift move``, ``migration_job``, ``preemption_recovery_job``):
    the checkpoint compatibility check (:func:`~spotshift.migration.compat.check_move`: a known-bad
    pair raises :class:`~spotshift.checkpoint.compat.IncompatibleCheckpoint` before anything starts),
    then :func:`~spotshift.migration.state.begin`."""
    return begin(env, plan, shadow, compat=check_move(env, plan).to_dict())


def run_move(
    env: MoveEnv, plan: MovePlan, *, shadow: ShadowOptions | None = None, unfit_hours: float = 24.0
) -> MoveOutcome:
    """Move ``plan.job`` to ``plan.to_location`` end to end; a failure rolls the move back (the target
    stopped, the source resumed, the target unfit for ``unfit_hours``) and is reported, not raised.
    A move the compatibility matrix refuses raises before it begins (nothing to roll back)."""
    state = begin_move(env, plan, shadow)
    outcome = MoveOutcome(plan, "moving")
    try:
        _chain(env, state, outcome)
    except SpotshiftError as exc:
        outcome.error = str(exc)
        outcome.rollback = cutover.roll_back(env, plan, reason=str(exc), unfit_hours=unfit_hours)
        state.after(outcome.rollback)
        outcome.status = "rolled_back"
        return outcome
    outcome.status = "cut_over"
    return outcome


def plan_to(con: Any, job: str, location: str, *, now: datetime) -> MovePlan:
    """The move of ``job`` to ``location``: the best eligible quote there in the latest decision
    (:class:`ConfigError` naming why when there is none, or when the job already runs there)."""
    from dataclasses import replace

    decision = decide_for_job(con, job, now=now)
    here = [c for c in decision.candidates if c.location == location]
    if not here:
        raise ConfigError(f"move {job} --to {location}: no quote for {location} in the latest prices")
    eligible = sorted((c for c in here if c.eligible), key=lambda c: c.score_gpu_hour_usd)
    if not eligible:
        why = "; ".join(sorted({r for c in here for r in c.rejected}))
        raise ConfigError(f"move {job} --to {location}: no eligible offer there ({why})")
    state = load_state(job)
    if state.status == "running" and state.location == location:
        raise ConfigError(f"move {job} --to {location}: the job already runs there")
    # the user chose the target: the decision's savings terms were for its own choice
    target = replace(
        decision, target=eligible[0], action="move" if decision.current_running else "place", terms=None
    )
    plan = plan_from_decision(target, state_version=load_state(job).version)
    by_hand = contract.move_run_key(job, plan.from_location, location, f"by-hand-v{state.version}")
    return replace(plan, run_key=by_hand)


def move_by_hand(
    job: str, location: str, *, shadow: ShadowOptions | None = None, run_id: str, log: Any = None
) -> MoveOutcome:
    """``spotshift move``: plan the move from the latest prices and run it on the embedded default."""
    env = local_env(run_id=run_id, log=log)
    with warehouse.connect(env.database) as con:
        plan = plan_to(con, job, location, now=virtual_now())
    return run_move(env, plan, shadow=shadow)


def plan_recovery(env: MoveEnv, notice: dict[str, Any]) -> tuple[MovePlan | None, str]:
    """Where to resume a preempted job (``notice``: job, location, notice_id, ...), and why.

    Waits for the preempted trainer to exit first (one live trainer per job). None when there is
    nothing to do: the notice is already handled (the job runs elsewhere), the job is finished, or
    the decision is to queue for capacity (the price sensor places the job when that changes).
    """
    job, location = str(notice["job"]), str(notice["location"])
    if wait_for_exit(env.backend, job, location=location):
        env.log(f"waited for the preempted trainer of {job} in {location} to exit")
    state, live = load_state(job), env.backend.status(job)
    if live is not None and live.alive and live.location != location:
        return None, f"notice {notice.get('notice_id')} is handled: {job} already runs in {live.location}"
    if state.status == "finished":
        return None, f"{job} is finished"
    with warehouse.connect(env.database) as con:
        plan, decision = recovery_plan(con, job, notice, now=virtual_now())
    return plan, f"{decision.action}: " + "; ".join(decision.reasons)
