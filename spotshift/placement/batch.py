"""Decide for thousands of jobs in one sensor tick (issue 17 item 5): batched inputs, vectorised scoring.

:func:`decide_all` is what one ``price_change_sensor`` tick and ``spotshift placement decide-all``
run. For every job it returns the same decision as
:func:`spotshift.placement.inputs.decide_for_job` — same action, target, best candidate and move
terms — at a fraction of the cost:

1. **Inputs once per tick, not per job.** The quote snapshot is read once and kept as NumPy
   columns; risks, recent preemptions, every job's latest checkpoint, dataset and checkpoint
   transfers come from one query each, grouped by job in memory and turned into footprints and
   progress by the same functions the per-job path uses (:mod:`spotshift.placement.inputs`).
2. **Vectorised scoring, exact shortlist** (:mod:`spotshift.placement.shortlist`). For each job
   the snapshot's terms are computed as arrays with the same formulas as
   :func:`spotshift.placement.scoring.score_candidates`, and only the quotes any rule of
   :func:`spotshift.placement.economics.decide` reads are handed to it, so the decision is the one
   the full snapshot gives. What differs: the recorded candidate table holds the shortlist (ranks
   beyond it are not recorded), and reasons that count rejected quotes count those of the
   shortlist.
3. **Only jobs whose inputs changed.** :func:`inputs_digest` hashes what a decision reads except
   the clock — the snapshot's quotes the job can read (prices and all, not the snapshot id:
   :meth:`~spotshift.placement.shortlist.QuoteColumns.candidates_digest`), its declaration,
   placement state, checkpoint, footprint, the tick-wide risks and its team's budget status; a
   job whose digest equals the one of its last decision, decided less than ``recheck_hours`` ago,
   and without a deadline (its safety net depends on the clock) is skipped.
4. **The team budget, as the per-job path applies it.** A job of a team with a budget has its
   decision kept within the cap by :func:`spotshift.budgets.gate_decision`, with the team's spend
   read once per tick (:func:`spotshift.budgets.team_tally`), and its shortlist holds the
   cheapest eligible quotes the gate may pick instead.

Declarations and placement states come from one read each (:func:`spotshift.jobs.load_jobs`,
cached by the declarations' content digest; :func:`spotshift.placement.state.load_states`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from spotshift.budgets import BudgetStatus, TeamTally, gate_decision, load_budgets, team_tally
from spotshift.errors import NotFoundError
from spotshift.jobs import TrainingJob, load_jobs
from spotshift.placement.decision import Decision, DecisionInputs, Placement
from spotshift.placement.economics import decide
from spotshift.placement.footprint import (
    checkpoint_presence_from,
    dataset_presence_from,
    declared_dataset_locations,
)
from spotshift.placement.inputs import (
    _no_snapshot_message,
    latest_snapshot,
    load_quotes,
    load_risks,
    progress_from,
    recently_preempted,
)
from spotshift.placement.params import PlacementParams
from spotshift.placement.scoring import DataFootprint
from spotshift.placement.shortlist import QuoteColumns, shortlist
from spotshift.placement.state import PlacementState, load_states
from spotshift.pricing.quote import NormalizedGPUQuote
from spotshift.warehouse import record_facts

#: a job with unchanged inputs is still re-decided this often (virtual-clock hours)
DEFAULT_RECHECK_HOURS = 0.25


@dataclass(frozen=True)
class JobInputs:
    """A job's per-tick inputs, read in bulk: its latest checkpoint and transfers."""

    latest_checkpoint: tuple[Any, ...] | None  # (checkpoint_id, location, bytes, step, created_at)
    footprint: DataFootprint


def load_job_inputs(con: Any, jobs: list[TrainingJob]) -> dict[str, JobInputs]:
    """Footprint and latest checkpoint of every job in ``jobs``, from one query per fact table."""
    latest = {
        r[0]: r[1:]
        for r in con.execute(
            "SELECT job, checkpoint_id, location, bytes, step, created_at FROM ("
            "SELECT *, row_number() OVER (PARTITION BY job ORDER BY step DESC, created_at DESC) AS rn "
            "FROM raw.checkpoints) WHERE rn = 1"
        ).fetchall()
    }
    ckpt_ids: dict[str, list[tuple[Any, Any]]] = {}
    for job, cid, loc in con.execute("SELECT job, checkpoint_id, location FROM raw.checkpoints").fetchall():
        ckpt_ids.setdefault(job, []).append((cid, loc))
    ckpt_moves: dict[str, list[tuple[Any, ...]]] = {}
    for row in con.execute(
        "SELECT entity, root, dst_location, method, bytes_sent, bytes_full FROM raw.transfers "
        "WHERE kind = 'checkpoint'"
    ).fetchall():
        ckpt_moves.setdefault(row[0], []).append(row[1:])
    datasets: dict[str, list[tuple[Any, ...]]] = {}
    for row in con.execute(
        "SELECT entity, src_location, dst_location, root, bytes_full, bytes_changed FROM raw.transfers "
        "WHERE kind = 'dataset' ORDER BY started_at, transfer_id"
    ).fetchall():
        datasets.setdefault(row[0], []).append(row[1:])
    by_dataset: dict[str, tuple[int, dict[str, int]]] = {}
    declared_at = declared_dataset_locations()  # one read of the declarations, not one per dataset
    out = {}
    for job in jobs:
        ds = by_dataset.get(job.dataset)
        if ds is None:
            rows = datasets.get(job.dataset, [])
            ds = by_dataset[job.dataset] = dataset_presence_from(rows, declared_at.get(job.dataset))
        last = latest.get(job.name)
        ck: tuple[int, dict[str, int]] = (0, {})
        if last is not None:
            cid = last[0]
            moves = ckpt_moves.get(job.name, [])
            ratios = [
                sent / full
                for _, _, method, sent, full in moves
                if method == "tensor_delta" and full is not None and full > 0 and sent is not None
            ]
            older: list[str | None] = []
            delivered: list[str | None] = []
            if cid is not None:
                older = sorted(
                    {loc for c, loc in ckpt_ids.get(job.name, []) if c is not None and c != cid}
                    | {dst for root, dst, *_ in moves if root is not None and root != cid},
                    key=str,
                )
                delivered = sorted({dst for root, dst, *_ in moves if root == cid}, key=str)
            ck = checkpoint_presence_from(last[:3], ratios, older, delivered)
        out[job.name] = JobInputs(last, DataFootprint(ds[0], ck[0], ds[1], ck[1]))
    return out


def inputs_digest(
    quotes: str, job: TrainingJob, state: PlacementState, ji: JobInputs, shared: str, budget: Any = None
) -> str:
    """Hash of what a decision for ``job`` reads, the clock excepted: ``quotes`` (digest of the
    snapshot's quotes the job can read, :meth:`QuoteColumns.candidates_digest`), its declaration,
    placement state, checkpoint and footprint, ``shared`` (digest of the tick-wide risks, lost
    spot capacity and parameters) and its team's ``budget`` status. Dataclass reprs name every
    field and value."""
    text = repr((quotes, job, state, ji.latest_checkpoint, ji.footprint, shared, budget))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@dataclass
class TickResult:
    """What :func:`decide_all` did: decisions made, jobs skipped as unchanged, time taken."""

    decisions: list[Decision]
    skipped: int
    seconds: float
    digests: dict[str, str]
    decision_seconds: list[float] = field(default_factory=list)
    #: team -> its budget status, for the teams of the jobs decided for (their alerts are recorded)
    budget_statuses: dict[str, BudgetStatus] = field(default_factory=dict)

    @property
    def moves(self) -> int:
        """Decisions that change a placement (place, move, fallback to on-demand)."""
        return sum(1 for d in self.decisions if d.changes_placement)

    def summary(self) -> dict[str, Any]:
        """``{"jobs", "seconds", "moves", "skipped"}`` (``jobs``: jobs decided)."""
        return {
            "jobs": len(self.decisions),
            "seconds": round(self.seconds, 3),
            "moves": self.moves,
            "skipped": self.skipped,
        }


def decide_all(
    con: Any,
    job_names: Iterable[str],
    *,
    now: datetime,
    params: PlacementParams | None = None,
    previous: Mapping[str, tuple[str, float]] | None = None,
    recheck_hours: float = DEFAULT_RECHECK_HOURS,
    jobs: Mapping[str, TrainingJob] | None = None,
    states: Mapping[str, PlacementState] | None = None,
) -> TickResult:
    """Decide for every job of ``job_names`` (declared jobs) over the latest quote snapshot.

    ``previous``: job -> (inputs digest, decided-at epoch seconds) of its last decision; a job
    whose inputs are unchanged, decided less than ``recheck_hours`` ago and without a deadline is
    skipped. :class:`~spotshift.errors.NotFoundError` when the warehouse has no quote snapshot.
    The decisions are not recorded (:func:`record_decisions`).
    """
    started = time.perf_counter()
    p = params or PlacementParams()
    names = list(job_names)
    if jobs is None:
        jobs = {j.name: j for j in load_jobs()}
    declared = [jobs[n] for n in names]
    states = dict(states or {})
    states.update(load_states(n for n in names if n not in states))
    budgets = {b.name: b for b in load_budgets()}
    tallies: dict[str, TeamTally] = {}
    snap = latest_snapshot(con)
    if snap is None:
        raise NotFoundError(_no_snapshot_message(con))
    cols = QuoteColumns.of(snap[0], load_quotes(con, snap[0]))
    risks = load_risks(con, sorted({q.location for q in cols.quotes if q.market == "spot"}), now)
    no_spot = recently_preempted(con, risks, now)
    shared = _shared_digest(risks, no_spot, p)
    per_job = load_job_inputs(con, declared)
    previous = previous or {}
    now_s = now.timestamp()
    allowed_cache: dict[tuple[tuple[str, ...], str], bool] = {}
    decisions: list[Decision] = []
    digests: dict[str, str] = {}
    timings: list[float] = []
    skipped = 0
    statuses: dict[str, BudgetStatus] = {}
    for job in declared:
        state = states[job.name]
        ji = per_job[job.name]
        status = None
        if job.team in budgets:
            if job.team not in tallies:
                tallies[job.team] = team_tally(con, budgets[job.team], now, states)
            status = tallies[job.team].status_for(job.name)
        current = (state.location, state.market, state.instance_type) if state.location else None
        quotes_digest = cols.candidates_digest(job, current)  # type: ignore[arg-type]
        digest = digests[job.name] = inputs_digest(quotes_digest, job, state, ji, shared, status)
        last = previous.get(job.name)
        if (
            last is not None
            and last[0] == digest
            and now_s - float(last[1]) < recheck_hours * 3600.0
            and job.deadline_at is None
        ):
            skipped += 1
            continue
        t0 = time.perf_counter()
        inp = _job_inputs(job, state, ji, now, risks, no_spot, cols.snapshot_id)
        quotes = shortlist(cols, inp, p, allowed_cache=allowed_cache, cheapest=status is not None)
        decision = decide(_with_quotes(inp, quotes), p)
        if status is not None:  # the team budget, as decide_for_job applies it
            decision = gate_decision(decision, status)
            statuses.setdefault(str(job.team), status)
        decisions.append(decision)
        timings.append(time.perf_counter() - t0)
    return TickResult(decisions, skipped, time.perf_counter() - started, digests, timings, statuses)


def _shared_digest(risks: Mapping[str, Any], no_spot: Mapping[str, str], p: PlacementParams) -> str:
    """Digest of the inputs every job of the tick shares (risks, lost spot capacity, parameters)."""
    doc = {"risks": {k: repr(v) for k, v in sorted(risks.items())}, "no_spot": no_spot, "params": p.to_dict()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _job_inputs(
    job: TrainingJob,
    state: PlacementState,
    ji: JobInputs,
    now: datetime,
    risks: Mapping[str, Any],
    no_spot: Mapping[str, str],
    snapshot_id: str,
) -> DecisionInputs:
    """One job's decision inputs from the tick's bulk reads (its quotes come from the shortlist)."""
    ck = ji.latest_checkpoint
    remaining, age = progress_from(job, state, now, (ck[3], ck[4]) if ck else None)
    current = None
    if state.location and state.market and state.instance_type:
        current = Placement(
            state.location, state.market, state.instance_type, state.zone, state.price_usd_hour
        )
    return DecisionInputs(
        job=job,
        quotes=(),
        now=now,
        remaining_hours=remaining,
        footprint=ji.footprint,
        current=current,
        current_running=state.running,
        checkpoint_age_hours=age,
        risks=risks,
        no_spot=no_spot,
        unfit=state.unfit_at(now),
        cooldown_until=state.cooldown_until_dt(),
        snapshot_id=snapshot_id,
    )


def _with_quotes(inp: DecisionInputs, quotes: list[NormalizedGPUQuote]) -> DecisionInputs:
    from dataclasses import replace

    return replace(inp, quotes=quotes)


def record_decisions(con: Any, decisions: list[Decision], *, candidates: int = 10) -> int:
    """Record ``decisions`` in ``raw.decisions`` (and their ``candidates`` best candidates in
    ``main.placement_candidates``) in one transaction; decisions newly written."""
    if not decisions:
        return 0
    facts = {
        "raw.decisions": [d.to_row() for d in decisions],
        "main.placement_candidates": [r for d in decisions for r in d.candidate_rows(candidates)],
    }
    return record_facts(facts, con=con).rows("raw.decisions")
