"""The move lifecycle, one function per step, each returning a typed result.

::

    begin -> fingerprint_dataset -> replicate_dataset -> drain_source -> carry_checkpoint
          -> resume_in_target (probation) -> validate_move -> go_live      | roll_back

This module holds the steps up to the target's probation; :mod:`spotshift.migration.cutover`
the shadow validation and the two ends (go live, roll back); :mod:`spotshift.migration.state`
:func:`~spotshift.migration.state.begin`. Each result has ``apply(state)``, which folds it into the
:class:`~spotshift.migration.state.MoveState` (``state.after(result)``).

Every step is idempotent: a run restarted after a crash redoes what is missing and converges.
The source is drained before the target starts, so at most one trainer of a job is ever live
(the compute backend's per-job lock enforces it). The steps record their facts (``raw.transfers``,
``raw.shadow_validations``, ``raw.migrations``) themselves; the Dagster ops and assets that call
them only record the typed result (``recording.py``), and ``spotshift move`` prints it
(:mod:`spotshift.migration.run`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from spotshift.errors import ConfigError, NotFoundError, SpotshiftError
from spotshift.jobs import get_job
from spotshift.migration.compat import record_probe
from spotshift.migration.plan import MovePlan
from spotshift.migration.state import MoveEnv, MoveFailed, MoveState, save
from spotshift.placement.topology import probe_target
from spotshift.sync import datasets as sync_datasets
from spotshift.sync.datasets import get_dataset, snapshot_dataset
from spotshift.sync.refs import read_ref
from spotshift.training import relocate
from spotshift.training.relocate import replicate_latest
from spotshift.training.runs import current_location, latest_ref, stop_with_checkpoint
from spotshift.training.shadow_run import run_shadow_side

# --- data ------------------------------------------------------------------------------------------


@dataclass
class FingerprintResult:
    """The dataset's snapshot committed to its home store."""

    dataset: str
    location: str
    source: str
    root: str
    summary: dict[str, Any]
    bytes_read: int
    cache_hits: int
    chunking: dict[str, Any]
    transfer: Any  # spotshift.sync.transfer.TransferStats

    def apply(self, state: MoveState) -> MoveState:
        return save(replace(state, dataset=self.dataset, dataset_root=self.root))


def fingerprint_dataset(env: MoveEnv, name: str) -> FingerprintResult:
    """Fingerprint dataset ``name`` (files cache: cheap when unchanged) and commit the snapshot to its
    home store; the push is a ``raw.transfers`` row."""
    dataset = get_dataset(name)
    fp, stats = snapshot_dataset(dataset, env.store_for(dataset.location))
    env.record("raw.transfers", [stats.to_row(env.run_id)])
    m = fp.manifest
    summary = m.summary()
    env.log(
        f"{dataset.name}: root {m.root}, {summary['files']} files, {summary['bytes']} bytes; read "
        f"{fp.stats.bytes_read} bytes, {fp.stats.cache_hits} files from cache; sent {stats.bytes_sent} bytes"
    )
    return FingerprintResult(
        dataset=dataset.name,
        location=dataset.location,
        source=dataset.source,
        root=m.root,
        summary=summary,
        bytes_read=fp.stats.bytes_read,
        cache_hits=fp.stats.cache_hits,
        chunking=m.params.to_dict(),
        transfer=stats,
    )


def expected_root(env: MoveEnv, name: str) -> str:
    """The root a replica of ``name`` must have: the ``latest`` ref in the dataset's home store."""
    dataset = get_dataset(name)
    ref = read_ref(env.store_for(dataset.location), name)
    if ref is None:
        raise NotFoundError(
            f"dataset {name!r} has no fingerprint yet (no snapshot in its home store, {dataset.location}): "
            f"materialize dataset_fingerprints[{name}] first"
        )
    return ref.root


@dataclass
class ReplicaResult:
    """The dataset's snapshot in a region's store, and the check that it is complete."""

    dataset: str
    region: str
    src_location: str
    root: str
    transfer: Any  # TransferStats
    check: Any  # spotshift.sync.datasets.ReplicaCheck, None when not asked for

    def apply(self, state: MoveState) -> MoveState:
        return save(
            replace(
                state,
                bytes_moved=state.bytes_moved + self.transfer.bytes_sent,
                egress_usd=state.egress_usd + self.transfer.egress_usd,
            )
        )


def check_replica(env: MoveEnv, name: str, region: str) -> Any:
    """Whether ``region``'s replica of ``name`` is the home store's snapshot, every chunk present
    (a :class:`~spotshift.sync.datasets.ReplicaCheck`)."""
    return sync_datasets.check_replica(env.store_for(region), name, expected_root(env, name))


def replicate_dataset(
    env: MoveEnv, name: str, region: str, *, check_existing: bool = False, check: bool = True
) -> ReplicaResult:
    """Bring the home store's snapshot of ``name`` into ``region``'s store (only missing chunks are
    sent), record the transfer, and (``check``) check the replica. The caller decides what a failed
    check does (a move fails and rolls back)."""
    dataset = get_dataset(name)
    root = expected_root(env, name)
    stats = sync_datasets.replicate_dataset(
        dataset,
        root,
        env.store_for(dataset.location),
        env.store_for(region),
        region,
        check_existing=check_existing,
    )
    env.record("raw.transfers", [stats.to_row(env.run_id)])
    env.log(
        f"{name} -> {region}: sent {stats.chunks_sent} chunks, {stats.bytes_sent} bytes "
        f"of {stats.bytes_full}; egress ${stats.egress_usd:.4f}"
    )
    verdict = check_replica(env, name, region) if check else None
    return ReplicaResult(name, region, dataset.location, root, stats, verdict)


# --- checkpoint ------------------------------------------------------------------------------------


@dataclass
class DrainResult:
    """The source stopped at a step boundary with a committed checkpoint (or found already stopped)."""

    stopped: bool
    location: str
    checkpoint: dict[str, Any] | None  # the stop's checkpoint ref
    from_checkpoint: str  # the source's newest checkpoint: where the move starts
    drained_at_wall: float | None

    def apply(self, state: MoveState) -> MoveState:
        return save(
            replace(
                state,
                from_checkpoint=self.from_checkpoint,
                drained_at_wall=self.drained_at_wall or state.drained_at_wall,
            )
        )


def drain_source(env: MoveEnv, plan: MovePlan) -> DrainResult:
    """Stop the job's live trainer (wherever it runs) with a committed checkpoint. A restarted run
    finds the source already drained: its newest checkpoint is still where the move starts."""
    info = env.backend.status(plan.job)
    stopped, location, ckpt, drained_at = False, plan.from_location, None, None
    if info is not None and info.alive:
        out = stop_with_checkpoint(
            env.backend, plan.job, reason=f"migration {plan.run_key}", database=env.database
        )
        stopped, location, ckpt, drained_at = True, out["location"], out["checkpoint"], time.time()
    ref = latest_ref(plan.job, plan.from_location) if plan.from_location else None
    return DrainResult(stopped, location, ckpt, ref["checkpoint_id"] if ref else "", drained_at)


@dataclass
class CarryResult:
    """The newest checkpoint carried into the target (``report`` None: nothing to carry)."""

    job: str
    region: str
    report: Any  # spotshift.checkpoint.migrate.MigrationReport | None
    egress_usd: float = 0.0

    def apply(self, state: MoveState) -> MoveState:
        if self.report is None:
            return state
        return save(
            replace(
                state,
                from_checkpoint=state.from_checkpoint or self.report.checkpoint_id,
                bytes_moved=state.bytes_moved + self.report.bytes_sent,
                egress_usd=state.egress_usd + self.egress_usd,
            )
        )


def carry_checkpoint(env: MoveEnv, job: str, region: str, *, source: str = "") -> CarryResult:
    """Bring the job's newest checkpoint into ``region``'s store (an encrypted tensor delta when the
    region holds an older one); the transfer is a ``raw.transfers`` row. ``source`` empty: where the
    job last checkpointed. Nothing to carry (a first placement, or already there): ``report`` None
    when the job never checkpointed, method ``present`` when the region is the source."""
    if not source:
        try:
            source = current_location(job, env.database)
        except ConfigError:
            source = ""
    if not source or latest_ref(job, source) is None:
        return CarryResult(job, region, None)
    report = replicate_latest(job, region, env.key_provider(), source_location=source, database=env.database)
    row = report.transfer_row(env.run_id)
    if report.method != "present":
        env.record("raw.transfers", [row])
    env.log(f"{job} -> {region}: {report.method}, {report.bytes_sent} of {report.bytes_full} bytes")
    return CarryResult(job, region, report, float(row.get("egress_usd") or 0.0))


# --- target ----------------------------------------------------------------------------------------


@dataclass
class RetrainResult:
    """The job run in the target: a K-step probation (commits nothing), a bounded run, or live."""

    job: str
    mode: str  # probation | trained | detached | started | adopted (cut_over retried)
    target_location: str
    source_location: str = ""
    resumed_from: str = ""
    steps_run: int | None = None
    step: int | None = None
    loss_first: float | None = None
    loss_last: float | None = None
    seconds: float | None = None
    pid: int | None = None
    seconds_to_first_step: float | None = None
    checkpoint: dict[str, Any] | None = None
    probation: dict[str, Any] | None = None  # the target side of the shadow comparison
    topology: dict[str, Any] | None = None  # the target's topology check (probation only)

    def apply(self, state: MoveState) -> MoveState:
        return save(replace(state, probation=self.probation)) if self.probation is not None else state


def _from_runs(job: str, out: dict[str, Any]) -> RetrainResult:
    return RetrainResult(
        job=job,
        mode=out["mode"],
        target_location=out["target_location"],
        source_location=out.get("source_location") or "",
        resumed_from=out.get("resumed_from") or "",
        steps_run=out.get("steps_run"),
        step=out.get("step"),
        seconds=out.get("seconds"),
        pid=out.get("pid"),
        seconds_to_first_step=out.get("seconds_to_first_step"),
        checkpoint=out.get("checkpoint"),
    )


def check_topology(env: MoveEnv, plan: MovePlan) -> Any:
    """The target's GPU topology, probed before anything runs there
    (:func:`spotshift.placement.topology.probe_target`): the measured score is kept (it overrides the
    catalog's from now on) and compared with the job's ``min_topology_score``. Returns the
    :class:`~spotshift.placement.topology.TopologyCheck`; the caller refuses a failed one."""
    check = probe_target(plan.to_location, plan.instance_type, get_job(plan.job).min_topology_score)
    env.log(f"topology check: {check.description}")
    return check


def probation(env: MoveEnv, state: MoveState) -> RetrainResult:
    """K steps in the target from the drained checkpoint, committing nothing: the shadow
    comparison's target side (a failed target leaves no checkpoint behind).

    The target's topology is checked first (:func:`check_topology`): a target below the job's
    ``min_topology_score`` raises :class:`MoveFailed` like a failed shadow check, before any step runs
    there, and the move rolls back. When the move probes an unproven runtime pair
    (:mod:`spotshift.migration.compat`), a probation that fails in the target marks the pair known bad
    and raises :class:`MoveFailed`."""
    plan, t0 = state.plan, time.monotonic()
    topology = check_topology(env, plan)
    if not topology.passed:
        raise MoveFailed(f"topology check of {plan.job} in {plan.to_location} failed: {topology.description}")
    try:
        side = run_shadow_side(
            env.backend,
            plan.job,
            side="target",
            location=plan.to_location,
            steps=state.shadow.shadow_steps,
            checkpoint_id=state.from_checkpoint,
            perturb=state.shadow.perturb(),
            key_provider=env.key_spec,
            run_id=env.run_id,
            usage=plan.usage(),
        )
    except SpotshiftError as exc:  # the probe of an unproven runtime pair failed in the target
        record_probe(env, state, passed=False, reason=f"probation failed in the target: {exc}")
        raise MoveFailed(f"probation of {plan.job} in {plan.to_location} failed: {exc}") from None
    losses = [s["loss"] for s in side["steps"]]
    return RetrainResult(
        job=plan.job,
        mode="probation",
        target_location=plan.to_location,
        resumed_from=side["resumed"]["checkpoint_id"],
        steps_run=len(losses),
        loss_first=losses[0],
        loss_last=losses[-1],
        seconds=round(time.monotonic() - t0, 3),
        probation=side,
        topology=topology.to_dict(),
    )


def start_live(
    env: MoveEnv, job: str, location: str, *, usage: dict[str, Any] | None = None
) -> RetrainResult:
    """The job's live trainer in ``location`` for the rest of the job (from its newest checkpoint,
    which must be there, or from scratch); returns once it has taken its first step."""
    out = relocate.start_live(
        env.backend,
        job,
        location,
        usage=usage,
        key_provider=env.key_spec,
        run_id=env.run_id,
        database=env.database,
    )
    return _from_runs(job, out)


def retrain(
    env: MoveEnv, job: str, target: str, *, steps: int | None = None, detach: bool = False
) -> RetrainResult:
    """Resume the job in ``target`` from the checkpoint replicated there: ``steps`` (default the
    job's cadence) waited for, or ``detach`` for the rest of the job (``retrain_run``'s own config)."""
    out = relocate.resume_in_target(
        env.backend,
        job,
        target,
        steps=steps,
        detach=detach,
        key_provider=env.key_spec,
        run_id=env.run_id,
        database=env.database,
    )
    return _from_runs(job, out)


def resume_in_target(env: MoveEnv, state: MoveState) -> RetrainResult:
    """The move's step in the target: a price move's probation, or the live trainer of a placement
    or a preemption recovery."""
    if state.plan.validated:
        return probation(env, state)
    return live_in_target(env, state.plan)


def live_in_target(env: MoveEnv, plan: MovePlan) -> RetrainResult:
    """Start the job's live trainer in the target, or adopt the one already running there: a step
    retried after its worker died finds the trainer the first attempt started (the source was
    drained and one move of a job runs at a time, so a live trainer in the target is this move's)."""
    running = env.backend.status(plan.job)
    if (
        running is not None
        and running.alive
        and running.role == "train"
        and running.location == plan.to_location
    ):
        env.log(
            f"{plan.job}: live trainer already running in {plan.to_location} (pid {running.pid}): adopted"
        )
        return RetrainResult(job=plan.job, mode="adopted", target_location=plan.to_location, pid=running.pid)
    return start_live(env, plan.job, plan.to_location, usage=plan.usage())
