"""Placement scoring (DESIGN §3, seed 000): rank every quote a job could run on, with every term.

For one job and one candidate quote (an instance type in a ``provider/region`` and market), in USD
per GPU-hour::

    score    = effective_gpu_hour + transfer_penalty - checkpoint_locality_bonus
    expected = score + preemption_risk

* ``effective_gpu_hour`` — :func:`spotshift.pricing.quote.effective_gpu_hour_usd` of the quote.
* ``transfer_penalty`` — egress (:mod:`spotshift.pricing.egress`) of the dataset bytes and the latest
  checkpoint's bytes not already in that region, each from the cheapest location holding a
  complete copy, amortized over the remaining runtime (seed: 168 h when unknown) and the job's
  GPUs.
* ``checkpoint_locality_bonus`` — where the latest checkpoint already is, the instance does not sit
  idle while it is copied in: the avoided wait (checkpoint bytes at the cross-region throughput)
  at the candidate's instance price, amortized the same way.
* ``preemption_risk`` (spot only) — expected preemptions over the remaining runtime
  (:func:`spotshift.placement.horizon.expected_preemptions`: the long-run rate of
  :mod:`spotshift.placement.risk` plus a predicted near-term interruption) times the cost of one (changeover + half a checkpoint interval
  of redone work + checkpoint restore wait, at the instance price), per GPU-hour. Not in the
  seed's score; candidates are ranked by ``expected`` so that, with no risk data, the ranking is
  exactly the seed's.

Rejected (kept in the table with the reasons, never chosen): locations outside
``allowed_locations``, another GPU model or count, a topology score below the job's minimum, spot
when the job forbids it, an all-in hourly cost (``score x gpu_count``, the seed's comparison) above
``max_usd_per_hour``, spot capacity known to be gone (preempted) and locations marked unfit by a
rollback.

Units: ``TrainingJob.work_hours`` and remaining hours are instance-hours of work; quote prices are
per instance-hour; the score is per GPU-hour.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from spotshift.jobs import TrainingJob
from spotshift.placement.horizon import expected_preemptions
from spotshift.placement.params import PlacementParams
from spotshift.placement.risk import RegionRisk
from spotshift.pricing.catalog import gpu_model_matches as gpu_model_matches
from spotshift.pricing.egress import egress_usd_per_gb
from spotshift.pricing.quote import NormalizedGPUQuote


@dataclass(frozen=True)
class DataFootprint:
    """What a job must have where it runs, and what of it is already where.

    ``dataset_present`` / ``checkpoint_present`` map a location to the bytes of the *current*
    dataset version / *latest* checkpoint already stored there (a stale replica counts with the
    bytes a delta sync would not resend). A location holds a complete copy when its bytes reach the
    full size; only complete copies are transfer sources.
    """

    dataset_bytes: int = 0
    checkpoint_bytes: int = 0
    dataset_present: Mapping[str, int] = field(default_factory=dict)
    checkpoint_present: Mapping[str, int] = field(default_factory=dict)

    def missing_bytes(self, location: str) -> tuple[int, int]:
        """(dataset bytes, checkpoint bytes) that would have to be copied to ``location``."""
        d = max(0, self.dataset_bytes - int(self.dataset_present.get(location, 0)))
        c = max(0, self.checkpoint_bytes - int(self.checkpoint_present.get(location, 0)))
        return d, c

    def dataset_sources(self) -> list[str]:
        """Locations holding the complete current dataset."""
        return sorted(k for k, v in self.dataset_present.items() if v >= self.dataset_bytes)

    def checkpoint_sources(self) -> list[str]:
        """Locations holding the complete latest checkpoint."""
        return sorted(k for k, v in self.checkpoint_present.items() if v >= self.checkpoint_bytes)

    @property
    def checkpoint_location(self) -> str | None:
        """A location holding the complete latest checkpoint (first in sort order), if any."""
        s = self.checkpoint_sources() if self.checkpoint_bytes else []
        return s[0] if s else None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready)."""
        return {
            "dataset_bytes": self.dataset_bytes,
            "checkpoint_bytes": self.checkpoint_bytes,
            "dataset_present": dict(self.dataset_present),
            "checkpoint_present": dict(self.checkpoint_present),
        }


@dataclass(frozen=True)
class TransferPlan:
    """What placing a job in one location would copy, from where, at what egress cost."""

    location: str
    dataset_bytes: int
    checkpoint_bytes: int
    dataset_source: str | None
    checkpoint_source: str | None
    egress_usd: float

    @property
    def total_bytes(self) -> int:
        """Bytes that would cross the wire."""
        return self.dataset_bytes + self.checkpoint_bytes


@functools.lru_cache(maxsize=65536)
def _rate(src: str, dst: str) -> float:
    return egress_usd_per_gb(src, dst)


def cheapest_source(sources: Iterable[str], dst: str) -> tuple[str | None, float]:
    """The source with the lowest egress rate to ``dst`` (ties: first in sort order) and that rate."""
    best: tuple[float, str] | None = None
    for s in sources:
        key = (_rate(s, dst), s)
        if best is None or key < best:
            best = key
    return (None, 0.0) if best is None else (best[1], best[0])


def transfer_plan(footprint: DataFootprint, location: str) -> TransferPlan:
    """Bytes missing at ``location`` and the egress to bring them from the cheapest complete copies.

    Missing bytes with no complete copy anywhere (nothing known yet) cost nothing here and name no
    source: the first fingerprint or checkpoint defines where the data is.
    """
    d, c = footprint.missing_bytes(location)
    d_src, d_rate = cheapest_source(footprint.dataset_sources(), location) if d else (None, 0.0)
    c_src, c_rate = cheapest_source(footprint.checkpoint_sources(), location) if c else (None, 0.0)
    egress = d_rate * d / 1e9 + c_rate * c / 1e9
    return TransferPlan(location, d, c, d_src, c_src, egress)


def preemption_cost_usd(
    price_usd_hour: float, job: TrainingJob, footprint: DataFootprint, params: PlacementParams
) -> float:
    """Expected cost of one preemption: changeover + half a checkpoint interval redone + restore wait."""
    hours = (
        params.changeover_hours
        + job.checkpoint_every_minutes / 60.0 / 2.0
        + params.transfer_hours(footprint.checkpoint_bytes)
    )
    return price_usd_hour * hours


@dataclass(frozen=True, slots=True)
class Candidate:
    """One quote evaluated for one job: every term of its score and why it was rejected, if it was."""

    quote: NormalizedGPUQuote
    effective_gpu_hour_usd: float
    transfer_penalty_gpu_hour_usd: float
    locality_bonus_gpu_hour_usd: float
    score_gpu_hour_usd: float
    risk_gpu_hour_usd: float
    expected_gpu_hour_usd: float
    transfer: TransferPlan
    transfer_hours: float
    amortization_hours: float
    preemptions_per_hour: float
    rejected: tuple[str, ...] = ()
    rank: int | None = None

    @property
    def eligible(self) -> bool:
        """Not rejected by any rule."""
        return not self.rejected

    @property
    def location(self) -> str:
        """``provider/region`` of the quote."""
        return self.quote.location

    @property
    def market(self) -> str:
        """``spot`` or ``on_demand``."""
        return self.quote.market

    @property
    def key(self) -> tuple[str, str, str]:
        """(location, market, instance type): what identifies a placement."""
        return (self.quote.location, self.quote.market, self.quote.instance_type)

    @property
    def price_usd_hour(self) -> float:
        """Billed instance price, USD/h."""
        return self.quote.price_usd_hour

    @property
    def effective_instance_hour_usd(self) -> float:
        """Effective GPU-hour times GPUs: the normalized cost of one hour of the job's work here."""
        return self.effective_gpu_hour_usd * self.quote.gpu_count

    def to_row(self) -> dict[str, Any]:
        """Flat row: the candidate table of ``placement_plan`` (metadata and ``main.placement_candidates``)."""
        q = self.quote
        return {
            "rank": self.rank,
            "location": q.location,
            "zone": q.zone,
            "market": q.market,
            "instance_type": q.instance_type,
            "gpu_model": q.gpu_model,
            "gpu_count": q.gpu_count,
            "price_usd_hour": q.price_usd_hour,
            "effective_gpu_hour_usd": self.effective_gpu_hour_usd,
            "transfer_penalty_gpu_hour_usd": self.transfer_penalty_gpu_hour_usd,
            "locality_bonus_gpu_hour_usd": self.locality_bonus_gpu_hour_usd,
            "score_gpu_hour_usd": self.score_gpu_hour_usd,
            "risk_gpu_hour_usd": self.risk_gpu_hour_usd,
            "expected_gpu_hour_usd": self.expected_gpu_hour_usd,
            "dataset_missing_bytes": self.transfer.dataset_bytes,
            "checkpoint_missing_bytes": self.transfer.checkpoint_bytes,
            "egress_usd": self.transfer.egress_usd,
            "transfer_hours": self.transfer_hours,
            "amortization_hours": self.amortization_hours,
            "preemptions_per_hour": self.preemptions_per_hour,
            "eligible": self.eligible,
            "rejected_reasons": "; ".join(self.rejected),
        }


def _with_rank(c: Candidate, rank: int | None) -> Candidate:
    return Candidate(
        c.quote,
        c.effective_gpu_hour_usd,
        c.transfer_penalty_gpu_hour_usd,
        c.locality_bonus_gpu_hour_usd,
        c.score_gpu_hour_usd,
        c.risk_gpu_hour_usd,
        c.expected_gpu_hour_usd,
        c.transfer,
        c.transfer_hours,
        c.amortization_hours,
        c.preemptions_per_hour,
        c.rejected,
        rank,
    )


#: per-location facts of one scoring: transfer plan, its hours, not-allowed reason, spot-gone
#: reason, whether the latest checkpoint is there, unfit reason
LocationFacts = tuple[TransferPlan, float, str | None, str | None, bool, str | None]


def score_candidates(
    job: TrainingJob,
    quotes: Iterable[NormalizedGPUQuote],
    footprint: DataFootprint,
    *,
    remaining_hours: float | None = None,
    risks: Mapping[str, RegionRisk] | None = None,
    no_spot: Mapping[str, str] | None = None,
    unfit: Mapping[str, str] | None = None,
    params: PlacementParams | None = None,
) -> list[Candidate]:
    """Score every quote for ``job``; eligible candidates first, ranked 1.. by expected cost.

    ``remaining_hours``: instance-hours of work left (None: the seed's 168 h). ``risks``: per-location
    preemption risk (missing locations: no risk term). ``no_spot``: location -> reason spot capacity
    there is known to be gone (preempted now). ``unfit``: location -> reason the location must not be
    used in any market (e.g. a rolled-back migration target during its cooldown).
    Rejected candidates follow, unranked, with their reasons. The per-quote terms are computed in
    the operation order :mod:`spotshift.placement.shortlist` mirrors with arrays.
    """
    p = params or PlacementParams()
    risks = risks or {}
    no_spot = no_spot or {}
    unfit = unfit or {}
    amort = (
        p.default_amortization_hours
        if remaining_hours is None
        else max(p.min_amortization_hours, float(remaining_hours))
    )
    runtime = amort if remaining_hours is None else max(0.0, float(remaining_hours))
    ckpt_restore_h = p.transfer_hours(footprint.checkpoint_bytes)
    ckpt_here = set(footprint.checkpoint_sources()) if footprint.checkpoint_bytes else set()
    per_preemption_h = p.changeover_hours + job.checkpoint_every_minutes / 60.0 / 2.0 + ckpt_restore_h
    # per-location and per-model facts are computed once: a snapshot has thousands of quotes
    # but tens of locations and a handful of GPU models
    by_loc: dict[str, LocationFacts] = {}
    model_ok: dict[str, bool] = {}
    keyed: list[tuple[tuple[Any, ...], Candidate]] = []
    rejected_keyed: list[tuple[tuple[Any, ...], Candidate]] = []
    for q in quotes:
        loc = f"{q.provider}/{q.region}"
        facts = by_loc.get(loc)
        if facts is None:
            facts = by_loc[loc] = _location_facts(job, footprint, loc, p, no_spot.get(loc), ckpt_here, unfit)
        ok_model = model_ok.get(q.gpu_model)
        if ok_model is None:
            ok_model = model_ok[q.gpu_model] = gpu_model_matches(job.gpu_model, q.gpu_model)
        c = _score_quote(
            job, q, facts, ok_model, amort, ckpt_restore_h, risks.get(loc), runtime, per_preemption_h
        )
        key = (c.expected_gpu_hour_usd, loc, q.market, q.instance_type, q.zone)
        (rejected_keyed if c.rejected else keyed).append((key, c))
    keyed.sort(key=lambda kc: kc[0])
    rejected_keyed.sort(key=lambda kc: kc[0])
    return [_with_rank(c, i + 1) for i, (_, c) in enumerate(keyed)] + [c for _, c in rejected_keyed]


def _location_facts(
    job: TrainingJob,
    footprint: DataFootprint,
    loc: str,
    p: PlacementParams,
    gone: str | None,
    ckpt_here: set[str],
    unfit: Mapping[str, str],
) -> LocationFacts:
    """What scoring a quote of ``loc`` for ``job`` reads about the location."""
    plan = transfer_plan(footprint, loc)
    return (
        plan,
        p.transfer_hours(plan.total_bytes),
        None if job.allows(loc) else f"{loc} not in allowed_locations",
        gone,
        loc in ckpt_here,
        unfit.get(loc),
    )


def _score_quote(
    job: TrainingJob,
    q: NormalizedGPUQuote,
    facts: LocationFacts,
    ok_model: bool,
    amort: float,
    ckpt_restore_h: float,
    risk: RegionRisk | None,
    runtime: float,
    per_preemption_h: float,
) -> Candidate:
    """One quote's terms and rejection reasons (unranked)."""
    plan, transfer_h, not_allowed, gone, has_ckpt, unfit_why = facts
    gpus = q.gpu_count
    spot = q.market == "spot"
    reasons = []
    if not_allowed:
        reasons.append(not_allowed)
    if not ok_model:
        reasons.append(f"GPU {q.gpu_model} is not {job.gpu_model}")
    if gpus != job.gpu_count:
        reasons.append(f"{gpus} GPUs, job needs {job.gpu_count}")
    if q.topology_score < job.min_topology_score:
        reasons.append(f"topology score {q.topology_score:g} < {job.min_topology_score:g}")
    if spot and not job.spot_allowed:
        reasons.append("spot not allowed for this job")
    if spot and gone is not None:
        reasons.append(gone)
    if unfit_why is not None:
        reasons.append(unfit_why)
    price = q.price_usd_hour
    if not price > 0 or gpus <= 0:
        reasons.append(f"invalid price {price!r}")
        gpus = max(gpus, 1)
    spread = amort * gpus
    eff = q.effective_gpu_hour_usd
    penalty = plan.egress_usd / spread
    bonus = ckpt_restore_h * price / spread if has_ckpt else 0.0
    score = eff + penalty - bonus
    rate = 0.0
    risk_term = 0.0
    if spot and risk is not None:
        rate = risk.preemptions_per_hour
        risk_term = expected_preemptions(risk, runtime) * price * per_preemption_h / spread
    cap = job.max_usd_per_hour
    if cap is not None and score * gpus > cap:
        reasons.append(f"all-in {score * gpus:.2f} USD/h over max {cap:g}")
    expected = score + risk_term
    return Candidate(
        q, eff, penalty, bonus, score, risk_term, expected, plan, transfer_h, amort, rate, tuple(reasons)
    )
