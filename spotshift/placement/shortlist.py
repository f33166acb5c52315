"""The shortlist of a quote snapshot that one job's decision needs (issue 17 item 5, step 2 of
:mod:`spotshift.placement.batch`).

A snapshot is held once per tick as NumPy columns (:class:`QuoteColumns`). For each job,
:func:`shortlist` computes every quote's terms (effective GPU-hour, transfer penalty, locality
bonus, preemption risk) and eligibility as arrays over the quotes that fit its GPU requirement,
with the same formulas and operation order as
:func:`spotshift.placement.scoring.score_candidates`, and keeps only the quotes
:func:`spotshift.placement.economics.decide` can read: the ``max_alternatives`` best-ranked
eligible quotes (plus as many as the current placement has) for a running job — the best one for
any other — the best-ranked eligible quote of every location and market (where feasibility is
decided: it depends only on location, market and the current placement), every quote of the
current placement, the best preempted-only spot quote per location (for the "wait for spot" rule)
and one spot quote of the snapshot (whether any exists). NumPy is imported inside the functions:
the per-job path and the command line's start-up do not pay for it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from spotshift.jobs import TrainingJob
from spotshift.placement.decision import DecisionInputs
from spotshift.placement.params import PlacementParams
from spotshift.placement.scoring import gpu_model_matches, transfer_plan
from spotshift.pricing.quote import QUOTE_FIELDS, NormalizedGPUQuote


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
    _fit_digest: dict[tuple[Any, ...], bytes] = field(default_factory=dict)
    _rows: list[bytes] | None = None  # per-quote digests (:meth:`candidates_digest`)
    _shape: bytes = b""

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

    def candidates_digest(self, job: TrainingJob, current: tuple[str, str, str] | None) -> str:
        """Digest of every quote a decision for ``job`` can read — those fitting its requirement,
        those of its ``current`` placement (location, market, instance type) and the few any
        decision reads (one spot quote, the first of each location) — all fields but the
        observation time: equal digests, the same quotes as far as ``job`` is concerned, whatever
        the snapshot."""
        if self._rows is None:
            fields_ = [f for f in QUOTE_FIELDS if f != "observed_at"]
            self._rows = [
                hashlib.blake2b(repr([getattr(q, f) for f in fields_]).encode(), digest_size=8).digest()
                for q in self.quotes
            ]
            spot = [] if self.any_spot is None else [self.any_spot]
            self._shape = b"".join(self._rows[i] for i in [*spot, *self.first_per_location])
        fit_key = (job.gpu_model, job.gpu_count, job.min_topology_score, job.spot_allowed)
        fit = self._fit_digest.get(fit_key)
        if fit is None:
            fit = self._fit_digest[fit_key] = hashlib.blake2b(
                b"".join(sorted(self._rows[i] for i in self.fitting(job).tolist())), digest_size=8
            ).digest()  # sorted: the order the snapshot was read in does not matter
        cur = b"".join(sorted(self._rows[i] for i in self.by_key.get(current, []))) if current else b""
        return hashlib.blake2b(fit + cur + self._shape, digest_size=8).hexdigest()

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
    cheapest: bool = False,
) -> list[NormalizedGPUQuote]:
    """The quotes of ``cols`` that :func:`decide` needs to reach the decision the whole snapshot
    gives (see the module doc); ``inp.quotes`` is ignored. ``cheapest`` (a job under a team
    budget): also the cheapest eligible quotes of every location and market, among which
    :func:`spotshift.budgets.gate_decision` picks when the target is over the limit."""
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
    if cheapest:
        picked.update(_cheapest(cols, idx[eligible]))
    if cols.any_spot is not None:
        picked.add(cols.any_spot)
    if not len(elig_ranked):  # a queue decision says what rejected the quotes: show some
        picked.update(cols.first_per_location)
    return [cols.quotes[i] for i in sorted(picked)]


def _cheapest(cols: QuoteColumns, el: Any) -> list[int]:
    """The cheapest of the quotes ``el`` (indices) in each location and market (all tied ones)."""
    import numpy as np

    if not len(el):
        return []
    g, pr = cols.loc[el] * 2 + cols.spot[el], cols.price[el]
    low = np.full(2 * len(cols.locations), np.inf)
    np.minimum.at(low, g, pr)
    return el[pr == low[g]].tolist()


__all__ = ["QuoteColumns", "shortlist"]
