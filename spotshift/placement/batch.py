"""Decide for thousands of jobs in one sensor tick (issue 17 item 5): batched inputs, vectorised scoring.

:func:`decide_all` is what one ``price_change_sensor`` tick and ``spotshift placement decide-all``
run. For every job it returns the same decision as
:func:`spotshift.placement.inputs.decide_for_job` — same action, target, best candidate and move
terms — at a fraction of the cost:

1. **Inputs once per tick, not per job.** The quote snapshot is read once and kept as NumPy
   columns; risks, recent preemptions, every job's latest checkpoint, dataset and checkpoint
   transfers come from one query each, grouped by job in memory and turned into footprints and
   progress by the same functions the per-job path uses (:mod:`spotshift.placement.inputs`).
2. **Vectorised scoring, exact shortlist.** For each job, every quote's terms (effective GPU-hour,
   transfer penalty, locality bonus, preemption risk) and eligibility are computed as arrays over
   the quotes that fit its GPU requirement, with the same formulas and operation order as
   :func:`spotshift.placement.scoring.score_candidates`. Only a shortlist is handed to
   :func:`spotshift.placement.economics.decide`: the ``max_alternatives`` best-ranked eligible
   quotes (plus as many as the current placement has) for a running job — the best one for any
   other — the best-ranked eligible quote of every
   location and market (where feasibility is decided: it depends only on location, market and
   the current placement), every quote of the current placement, the best preempted-only spot
   quote per location (for the "wait for spot" rule) and one spot quote of the snapshot (whether
   any exists). Every candidate any rule of ``decide`` reads is therefore in the shortlist, so the
   decision is the one the full snapshot gives. What differs: the recorded candidate table holds
   the shortlist (ranks beyond it are not recorded), and reasons that count rejected quotes count
   those of the shortlist.
3. **Only jobs whose inputs changed.** :func:`inputs_digest` hashes what a decision reads except
   the clock; a job whose digest equals the one of its last decision, decided less than
   ``recheck_hours`` ago, and without a deadline (its safety net depends on the clock) is skipped.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from spotshift.jobs import TrainingJob
from spotshift.placement.economics import Decision, DecisionInputs, Placement, decide
from spotshift.placement.params import PlacementParams
from spotshift.placement.scoring import DataFootprint, gpu_model_matches, transfer_plan
from spotshift.placement.state import PlacementState
from spotshift.pricing.quote import NormalizedGPUQuote

#: a job with unchanged inputs is still re-decided this often (virtual-clock hours)
DEFAULT_RECHECK_HOURS = 0.25


@dataclass
class QuoteColumns:
    """One quote snapshot as columns (NumPy arrays) plus the quote objects ``decide`` takes."""

    snapshot_id: str
    quotes: list[NormalizedGPUQuote]
    locations: list[str]
    loc: Any  # int index into ``locations`` per quote
    spot: Any  # bool
    price: Any
    eff: Any
    gpus: Any
    topology: Any
    model: Any  # int index into ``models``
    models: list[str]
    tiebreak: Any  # rank of (location, market, instance type, zone): the ranking's tie-break
    by_key: dict[tuple[str, str, str], list[int]] = field(default_factory=dict)
    any_spot: int | None = None
    first_per_location: list[int] = field(default_factory=list)
    _fit: dict[tuple[Any, ...], Any] = field(default_factory=dict)

    @classmethod
    def of(cls, snapshot_id: str, quotes: list[NormalizedGPUQuote]) -> QuoteColumns:
        """Columns of ``quotes`` (one snapshot)."""
        import numpy as np

        locations = sorted({q.location for q in quotes})
        loc_ix = {loc: i for i, loc in enumerate(locations)}
        models = sorted({q.gpu_model for q in quotes})
        model_ix = {m: i for i, m in enumerate(models)}
        order = sorted(range(len(quotes)), key=lambda i: _tie(quotes[i]))
        tiebreak = np.empty(len(quotes), dtype=np.int64)
        tiebreak[order] = np.arange(len(quotes))
        by_key: dict[tuple[str, str, str], list[int]] = {}
        first: dict[str, int] = {}
        for i, q in enumerate(quotes):
            by_key.setdefault((q.location, q.market, q.instance_type), []).append(i)
            first.setdefault(q.location, i)
        spot = np.array([q.market == "spot" for q in quotes], dtype=bool)
        return cls(
            snapshot_id=snapshot_id,
            quotes=quotes,
            locations=locations,
            loc=np.array([loc_ix[q.location] for q in quotes], dtype=np.int64),
            spot=spot,
            price=np.array([q.price_usd_hour for q in quotes], dtype=np.float64),
            eff=np.array([q.effective_gpu_hour_usd for q in quotes], dtype=np.float64),
            gpus=np.array([q.gpu_count for q in quotes], dtype=np.int64),
            topology=np.array([q.topology_score for q in quotes], dtype=np.float64),
            model=np.array([model_ix[q.gpu_model] for q in quotes], dtype=np.int64),
            models=models,
            tiebreak=tiebreak,
            by_key=by_key,
            any_spot=int(np.flatnonzero(spot)[0]) if spot.any() else None,
            first_per_location=sorted(first.values()),
        )

    def fitting(self, job: TrainingJob) -> Any:
        """Indices of the quotes that pass the job's location-independent rules (GPU model and
        count, topology, spot allowed, a valid price), cached per requirement."""
        import numpy as np

        key = (job.gpu_model, job.gpu_count, job.min_topology_score, job.spot_allowed)
        got = self._fit.get(key)
        if got is None:
            model_ok = np.array([gpu_model_matches(job.gpu_model, m) for m in self.models], dtype=bool)
            mask = (
                (model_ok[self.model] if len(self.models) else np.zeros(0, dtype=bool))
                & (self.gpus == job.gpu_count)
                & ~(self.topology < job.min_topology_score)
                & (self.price > 0)
                & (self.gpus > 0)
            )
            if not job.spot_allowed:
                mask &= ~self.spot
            got = self._fit[key] = np.flatnonzero(mask)
        return got


def _tie(q: NormalizedGPUQuote) -> tuple[str, str, str, str]:
    return (q.location, q.market, q.instance_type, q.zone)


def shortlist(
    cols: QuoteColumns,
    inp: DecisionInputs,
    params: PlacementParams,
    *,
    allowed_cache: dict[tuple[tuple[str, ...], str], bool] | None = None,
) -> list[NormalizedGPUQuote]:
    """The quotes of ``cols`` that :func:`decide` needs to reach the decision the whole snapshot
    gives (see the module doc); ``inp.quotes`` is ignored."""
    import numpy as np

    job, p, fp = inp.job, params, inp.footprint
    remaining = max(0.0, float(inp.remaining_hours))
    amort = max(p.min_amortization_hours, remaining)
    runtime = remaining
    ckpt_restore_h = p.transfer_hours(fp.checkpoint_bytes)
    ckpt_here = set(fp.checkpoint_sources()) if fp.checkpoint_bytes else set()
    per_preemption_h = p.changeover_hours + job.checkpoint_every_minutes / 60.0 / 2.0 + ckpt_restore_h
    cache = allowed_cache if allowed_cache is not None else {}
    patterns = tuple(job.allowed_locations)
    n_loc = len(cols.locations)
    ok_loc = np.zeros(n_loc, dtype=bool)
    gone = np.zeros(n_loc, dtype=bool)
    has_ckpt = np.zeros(n_loc, dtype=bool)
    egress = np.zeros(n_loc, dtype=np.float64)
    rate = np.zeros(n_loc, dtype=np.float64)
    for i, loc in enumerate(cols.locations):
        allowed = cache.get((patterns, loc))
        if allowed is None:
            allowed = cache[(patterns, loc)] = job.allows(loc)
        ok_loc[i] = allowed and loc not in inp.unfit
        gone[i] = loc in inp.no_spot
        has_ckpt[i] = loc in ckpt_here
        egress[i] = transfer_plan(fp, loc).egress_usd
        r = inp.risks.get(loc)
        rate[i] = r.preemptions_per_hour if r is not None else 0.0
    idx = cols.fitting(job)
    locs = cols.loc[idx]
    spot = cols.spot[idx]
    price = cols.price[idx]
    spread = amort * cols.gpus[idx]
    # the same formulas, in the same operation order, as score_candidates
    penalty = egress[locs] / spread
    bonus = np.where(has_ckpt[locs], ckpt_restore_h * price / spread, 0.0)
    score = cols.eff[idx] + penalty - bonus
    risk = np.where(spot, rate[locs] * runtime * price * per_preemption_h / spread, 0.0)
    expected = score + risk
    ok = ok_loc[locs]
    if job.max_usd_per_hour is not None:
        ok &= ~(score * cols.gpus[idx] > job.max_usd_per_hour)
    preempted = spot & gone[locs]
    eligible = ok & ~preempted
    order = np.lexsort((cols.tiebreak[idx], expected))
    ranked = idx[order]
    elig_ranked = ranked[eligible[order]]
    cur = inp.current
    cur_ix = cols.by_key.get(cur.key, []) if cur is not None else []
    picked: set[int] = set(cur_ix)
    # a running job weighs its best alternatives; any other decision reads only the best candidate
    running = cur is not None and inp.current_running
    picked.update(elig_ranked[: p.max_alternatives + len(cur_ix) + 1 if running else 1].tolist())
    # best-ranked eligible quote of each location and market: where feasibility is decided
    group = cols.loc[elig_ranked] * 2 + cols.spot[elig_ranked]
    _, first = np.unique(group, return_index=True)
    picked.update(elig_ranked[first].tolist())
    # best spot quote per location rejected only because its spot capacity is gone
    waiting = ranked[(ok & preempted)[order]]
    _, first = np.unique(cols.loc[waiting], return_index=True)
    picked.update(waiting[first].tolist())
    if cols.any_spot is not None:
        picked.add(cols.any_spot)
    if not len(elig_ranked):  # a queue decision says what rejected the quotes: show some
        picked.update(cols.first_per_location)
    return [cols.quotes[i] for i in sorted(picked)]


@dataclass(frozen=True)
class JobInputs:
    """A job's per-tick inputs, read in bulk: its latest checkpoint and transfers."""

    latest_checkpoint: tuple[Any, ...] | None  # (checkpoint_id, location, bytes, step, created_at)
    footprint: DataFootprint


def load_job_inputs(con: Any, jobs: list[TrainingJob]) -> dict[str, JobInputs]:
    """Footprint and latest checkpoint of every job in ``jobs``, from one query per fact table."""
    from spotshift.placement.inputs import (
        checkpoint_presence_from,
        dataset_presence_from,
        declared_dataset_locations,
    )

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
    snapshot_id: str, job: TrainingJob, state: PlacementState, ji: JobInputs, shared: str
) -> str:
    """Hash of what a decision for ``job`` reads, the clock excepted (``shared``: digest of the
    tick-wide risks, preempted and parameters). Dataclass reprs name every field and value."""
    text = repr((snapshot_id, job, state, ji.latest_checkpoint, ji.footprint, shared))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@dataclass
class TickResult:
    """What :func:`decide_all` did: decisions made, jobs skipped as unchanged, time taken."""

    decisions: list[Decision]
    skipped: int
    seconds: float
    digests: dict[str, str]
    decision_seconds: list[float] = field(default_factory=list)

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
    from spotshift.errors import NotFoundError
    from spotshift.jobs import load_jobs
    from spotshift.placement.inputs import (
        _no_snapshot_message,
        latest_snapshot,
        load_quotes,
        load_risks,
        progress_from,
        recently_preempted,
    )
    from spotshift.placement.state import load_state

    started = time.perf_counter()
    p = params or PlacementParams()
    names = list(job_names)
    if jobs is None:
        jobs = {j.name: j for j in load_jobs()}
    declared = [jobs[n] for n in names]
    states = dict(states or {})
    for n in names:
        if n not in states:
            states[n] = load_state(n)
    snap = latest_snapshot(con)
    if snap is None:
        raise NotFoundError(_no_snapshot_message(con))
    cols = QuoteColumns.of(snap[0], load_quotes(con, snap[0]))
    risks = load_risks(con, sorted({q.location for q in cols.quotes if q.market == "spot"}))
    no_spot = recently_preempted(con, risks, now)
    shared = hashlib.sha256(
        json.dumps(
            {
                "risks": {k: repr(v) for k, v in sorted(risks.items())},
                "no_spot": no_spot,
                "params": p.to_dict(),
            },
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()
    per_job = load_job_inputs(con, declared)
    previous = previous or {}
    now_s = now.timestamp()
    allowed_cache: dict[tuple[tuple[str, ...], str], bool] = {}
    decisions: list[Decision] = []
    digests: dict[str, str] = {}
    timings: list[float] = []
    skipped = 0
    for job in declared:
        state = states[job.name]
        ji = per_job[job.name]
        digest = digests[job.name] = inputs_digest(cols.snapshot_id, job, state, ji, shared)
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
        ck = ji.latest_checkpoint
        remaining, age = progress_from(job, state, now, (ck[3], ck[4]) if ck else None)
        current = None
        if state.location and state.market and state.instance_type:
            current = Placement(
                state.location, state.market, state.instance_type, state.zone, state.price_usd_hour
            )
        inp = DecisionInputs(
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
            snapshot_id=cols.snapshot_id,
        )
        quotes = shortlist(cols, inp, p, allowed_cache=allowed_cache)
        decisions.append(decide(_with_quotes(inp, quotes), p))
        timings.append(time.perf_counter() - t0)
    return TickResult(decisions, skipped, time.perf_counter() - started, digests, timings)


def _with_quotes(inp: DecisionInputs, quotes: list[NormalizedGPUQuote]) -> DecisionInputs:
    from dataclasses import replace

    return replace(inp, quotes=quotes)


def record_decisions(con: Any, decisions: list[Decision], *, candidates: int = 10) -> int:
    """Record ``decisions`` in ``raw.decisions`` (and their ``candidates`` best candidates in
    ``main.placement_candidates``) in one transaction; decisions newly written."""
    from spotshift.warehouse import record_facts

    if not decisions:
        return 0
    facts = {
        "raw.decisions": [d.to_row() for d in decisions],
        "main.placement_candidates": [r for d in decisions for r in d.candidate_rows(candidates)],
    }
    return record_facts(facts, con=con).rows("raw.decisions")
