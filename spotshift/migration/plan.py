"""Planning a move and closing it: the plan a migration carries, cutover, rollback, and their facts.

A :class:`MovePlan` is what ``price_change_sensor`` (from a :class:`~spotshift.placement.decision.Decision`),
``preemption_sensor`` (from a notice, via :func:`recovery_plan`) or ``spotshift move`` hands to the
lifecycle (:mod:`spotshift.migration.steps`). The steps run the chain (delta sync, checkpoint
migration, probation, shadow validation) and finish here:

* :func:`cut_over` — the job now runs in the target: placement state updated (cooldown after a
  price move), ``raw.migrations`` row with status ``cut_over``, and for a preemption recovery the
  notice's ``recovered_at``/``recovery_s`` in ``raw.preemptions``.
* :func:`roll_back` — the target failed (a blocked shadow check, a failed step): stop any trainer
  of the job, resume it in the source from the checkpoint the migration started from, mark the
  target unfit for a cooldown, ``raw.migrations`` row with status ``rolled_back``.

Both are idempotent: re-running them after a crash converges on the same state, and neither ever
leaves two live trainers of one job (the compute backend's per-job lock refuses a second).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from spotshift.budgets import record_alerts
from spotshift.errors import ConfigError, build_record
from spotshift.facts import ingest_facts
from spotshift.jobs import load_jobs
from spotshift.migration import contract
from spotshift.placement.batch import decide_all, record_decisions
from spotshift.placement.decision import Decision
from spotshift.placement.economics import decide
from spotshift.placement.inputs import assemble_inputs
from spotshift.placement.state import PlacementState, load_state, load_states, set_status
from spotshift.pools.scheduler import pool_managed_jobs

TRIGGERS = ("place", "price", "preemption", "burst", "return")
#: triggers of a move between a private pool's site and a cloud (spotshift.pools.lifecycle)
POOL_TRIGGERS = ("burst", "return")


@dataclass(frozen=True)
class MovePlan:
    """Where a job goes, on what, and why. ``from_location`` is empty when the job was not running."""

    job: str
    to_location: str
    market: str
    instance_type: str
    price_usd_hour: float
    trigger: str = "price"
    from_location: str = ""
    zone: str = ""
    list_price_usd_hour: float | None = None
    gpu_model: str = ""
    gpu_count: int = 1
    snapshot_id: str = ""
    run_key: str = ""
    expected_savings_usd: float = 0.0
    notice_id: str = ""
    from_checkpoint: str = ""  # checkpoint the move starts from (set once the source is drained)

    def __post_init__(self) -> None:
        if self.trigger not in TRIGGERS:
            raise ConfigError(
                f"move of {self.job!r}: trigger {self.trigger!r} not one of {', '.join(TRIGGERS)}"
            )
        if "/" not in self.to_location:
            raise ConfigError(f"move of {self.job!r}: target {self.to_location!r} is not provider/region")
        if self.from_location and self.from_location == self.to_location:
            raise ConfigError(f"move of {self.job!r}: source and target are both {self.to_location}")

    @property
    def validated(self) -> bool:
        """Whether the target first runs a probation checked by the shadow validation (and the live
        trainer starts at go-live): a price move, or a burst/return of a job with a source to compare
        against. A placement or a recovery starts the live trainer right away."""
        return self.trigger == "price" or (self.trigger in POOL_TRIGGERS and bool(self.from_location))

    def usage(self) -> dict[str, Any]:
        """What prices the trainer's ``raw.compute_usage`` interval in the target."""
        return {
            "market": self.market,
            "instance_type": self.instance_type,
            "gpu_model": self.gpu_model,
            "gpu_count": self.gpu_count,
            "price_usd_hour": self.price_usd_hour,
            "list_price_usd_hour": self.list_price_usd_hour,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (run config, tags, logs)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> MovePlan:
        """Inverse of :meth:`to_dict`; unknown keys are errors."""
        return build_record(cls, raw, "move plan")

    def tags(self) -> dict[str, str]:
        """Run tags of the runs that execute this plan (:func:`spotshift.migration.contract.move_tags`)."""
        return contract.move_tags(self.job, self.trigger, self.from_location, self.to_location)


def list_price(decision: Decision, location: str, instance_type: str) -> float | None:
    """On-demand price of ``instance_type`` in ``location`` among the decision's candidates."""
    for c in decision.candidates:
        q = c.quote
        if q.location == location and q.instance_type == instance_type and q.market == "on_demand":
            return q.price_usd_hour
    return None


def plan_from_decision(
    decision: Decision, *, trigger: str | None = None, notice_id: str = "", state_version: int | None = None
) -> MovePlan:
    """The move a decision asks for; :class:`ConfigError` when it does not change the placement.

    A price move's run key is the decision's ``<job>:<from>-><to>:<quote snapshot id>``. Placing a
    job that is not running appends ``:v<placement state version>``: the same snapshot can see the
    job preempted and placed more than once, and each placement is a new event.
    """
    if not decision.changes_placement or decision.target is None:
        raise ConfigError(
            f"decision {decision.decision_id} ({decision.action}) does not move job {decision.job!r}"
        )
    q = decision.target.quote
    running = decision.current is not None and decision.current_running
    source = decision.current.location if running and decision.current is not None else ""
    terms = decision.terms
    run_key = decision.run_key()
    return MovePlan(
        job=decision.job,
        trigger=trigger or ("price" if running else "place"),
        from_location=source,
        to_location=q.location,
        market=q.market,
        instance_type=q.instance_type,
        zone=q.zone,
        price_usd_hour=q.price_usd_hour,
        list_price_usd_hour=q.price_usd_hour
        if q.market == "on_demand"
        else list_price(decision, q.location, q.instance_type),
        gpu_model=q.gpu_model,
        gpu_count=q.gpu_count,
        snapshot_id=decision.snapshot_id,
        run_key=run_key
        if running or state_version is None
        else contract.placement_run_key(run_key, state_version),
        expected_savings_usd=terms.expected_savings_usd if terms is not None else 0.0,
        notice_id=notice_id,
    )


def recovery_plan(
    con: Any, job: str, notice: dict[str, Any], *, now: datetime, params: Any = None
) -> tuple[MovePlan | None, Decision]:
    """Where to resume a preempted job: the decision with the preempted location's spot capacity gone.

    ``notice`` is the event the trainer wrote (``events/preemption/<id>.json``: job, location,
    notice_id, ...). The placement state is marked ``preempted`` first, so the decision places the
    job again rather than weighing a move. The plan is None when the decision is to queue (wait
    for spot capacity while the job is ahead of uniform progress, or nothing qualifies): the price
    sensor places the job when the decision changes.
    """
    from dataclasses import replace

    set_status(job, "preempted", now=now)
    inputs = assemble_inputs(con, job, now=now)
    preempted = str(notice.get("location", ""))
    no_spot = dict(inputs.no_spot)
    if preempted:
        no_spot[preempted] = f"preempted (notice {notice.get('notice_id', '?')})"
    decision = decide(replace(inputs, no_spot=no_spot, current_running=False), params)
    if decision.target is None:
        return None, decision
    plan = plan_from_decision(decision, trigger="preemption", notice_id=str(notice.get("notice_id", "")))
    # the checkpoint is in the preempted region's store: that is where the move starts from
    plan = replace(
        plan,
        from_location=preempted if preempted != plan.to_location else "",
        run_key=contract.recovery_run_key(job, str(notice.get("notice_id", ""))),
    )
    return plan, decision


def jobs_to_decide(
    con: Any,
    backend: Any,
    *,
    busy: set[str],
    now: datetime,
    jobs: list[Any] | None = None,
    states: Mapping[str, PlacementState] | None = None,
) -> list[str]:
    """Declared jobs the price sensor should run the economics for, in declaration order.

    Skipped: jobs with a migration/recovery/rollback run in flight (``busy``), jobs a private pool
    runs, queues or has burst (:func:`spotshift.pools.lifecycle.pool_managed_jobs`), ``migrating`` or
    ``finished`` ones (a job whose last step is checkpointed is marked finished here), and
    ``running`` ones whose trainer is gone or stopping — a preemption the preemption sensor is
    handling. The
    facts a live trainer has not written to the warehouse yet (its newest checkpoints, which set
    the staleness of a move) are collected first. ``jobs``, ``states``: the declared jobs and
    their placement states, when the caller has loaded them already.
    """
    out = []
    pooled = pool_managed_jobs()  # a private pool decides for its jobs (bursts, returns)
    # one query for every job's last checkpointed step (thousands of jobs per tick)
    last_step = dict(con.execute("SELECT job, max(step) FROM raw.checkpoints GROUP BY job").fetchall())
    for job in jobs if jobs is not None else load_jobs():
        if job.name in busy or job.name in pooled:
            continue
        state = states[job.name] if states is not None and job.name in states else load_state(job.name)
        if state.status in ("finished", "migrating"):
            continue
        step = last_step.get(job.name)
        if step is not None and int(step) >= job.total_steps:  # its last step is checkpointed
            set_status(job.name, "finished", now=now)
            continue
        info = backend.status(job.name)
        if state.status == "running" and (info is None or not info.alive or backend.stopping(job.name)):
            continue
        if info is not None and info.alive:
            # the trainer defers its warehouse writes; its newest checkpoints matter to the decision

            ingest_facts(info.workdir, con=con, live=True)
        out.append(job.name)
    return out


def tick(
    con: Any,
    backend: Any,
    *,
    now: datetime,
    busy: set[str] | None = None,
    previous: Mapping[str, tuple[str, float]] | None = None,
    params: Any = None,
    record: bool = True,
) -> Any:
    """One ``price_change_sensor`` evaluation without Dagster: the jobs to decide for
    (:func:`jobs_to_decide`), :func:`spotshift.placement.batch.decide_all`, and the decisions
    recorded (``record``) through the write connection ``con``; the
    :class:`~spotshift.placement.batch.TickResult`."""
    started = time.perf_counter()
    declared = load_jobs()
    states = load_states(j.name for j in declared)  # one pass over thousands of jobs
    names = jobs_to_decide(con, backend, busy=busy or set(), now=now, jobs=declared, states=states)
    result = decide_all(
        con,
        names,
        now=now,
        params=params,
        previous=previous,
        jobs={j.name: j for j in declared},
        states=states,
    )
    if record:
        record_decisions(con, result.decisions)
        for status in result.budget_statuses.values():
            record_alerts(con, status, now)
    result.seconds = time.perf_counter() - started
    return result
