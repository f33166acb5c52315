"""Migration economics: should a job be placed, moved, left alone, sent to on-demand or queued?

:func:`decide` is the one decision function of spotshift. ``price_change_sensor`` calls it with
inputs assembled from the warehouse (:mod:`spotshift.placement.inputs`); ``spotshift simulate``
calls the same function tick by tick for its ``spotshift`` policy. It takes plain data and returns
a :class:`Decision` carrying the action, the target, every term and human-readable reasons.

The rules, in order:

1. **Deadline safety net** (shared with every spot policy of the simulator):
   :func:`deadline_requires_on_demand` — when the slack (time to deadline minus work left) no longer
   exceeds :func:`safety_reserve_hours` (changeover + transfer to the fastest on-demand placement +
   one checkpoint interval of possibly lost work + one decision interval), go to on-demand and
   stay there (``fallback_on_demand``; ``stay`` once on on-demand).
2. **Not running** (new job, or preempted): ``place`` on the best-ranked feasible candidate (see
   :mod:`spotshift.placement.scoring`). With no spot candidate: while the job is ahead of uniform
   progress (Can't Be Late) and spot capacity exists somewhere in principle, ``queue`` and wait for
   it; otherwise ``fallback_on_demand``; with nothing at all, ``queue``.
3. **Running**: ``move`` only when, for the best alternative,
   ``expected_savings - move_cost > margin`` where
   ``expected_savings = (current - target effective instance-hour) x remaining hours``,
   ``move_cost = egress (bytes not already at the target) + changeover downtime at the current
   price + staleness (work since the last checkpoint, redone at the target price) + risk``
   (``risk`` = expected preemption cost at the target minus at the current placement over the
   remaining runtime; negative when the target is safer) and
   ``margin = max(margin_min_usd, margin_fraction x remaining spend at the current price)``;
   not during the cooldown after a move, unless the current placement stopped qualifying (price
   cap, unfit, no longer allowed) or an interruption of the current placement is predicted and the
   move pays (:func:`spotshift.placement.horizon.ahead_of_interruption`).
4. **Feasibility**: a plan is considered only if it can still finish by the deadline — an
   on-demand plan when ``work + plan overhead <= time left``, a spot plan when, after its overhead,
   the safety net is still possible. When no plan is feasible, the fastest on-demand one is chosen
   and the reasons say the deadline can no longer be met.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from spotshift import runkeys
from spotshift.jobs import TrainingJob
from spotshift.placement.horizon import ahead_of_interruption, expected_preemptions
from spotshift.placement.params import PlacementParams
from spotshift.placement.risk import RegionRisk
from spotshift.placement.scoring import (
    Candidate,
    DataFootprint,
    preemption_cost_usd,
    score_candidates,
)
from spotshift.pricing.quote import NormalizedGPUQuote

ACTIONS = ("place", "move", "stay", "fallback_on_demand", "queue")


def safety_reserve_hours(
    changeover_hours: float,
    transfer_hours: float,
    checkpoint_interval_hours: float,
    decision_interval_hours: float,
) -> float:
    """Slack to keep for switching to on-demand: the switch itself (changeover + copy to the
    on-demand place), the work a preemption can still destroy (one checkpoint interval), and the
    time until the next decision."""
    return changeover_hours + transfer_hours + checkpoint_interval_hours + decision_interval_hours


def deadline_requires_on_demand(time_left_hours: float, remaining_hours: float, reserve_hours: float) -> bool:
    """The deadline safety net: True when the remaining slack only just covers the remaining work."""
    return time_left_hours - remaining_hours <= reserve_hours


def ahead_of_uniform_progress(
    remaining_hours: float, work_hours: float, time_left_hours: float, window_hours: float
) -> bool:
    """Can't Be Late's Uniform Progress line: work left is at most the share of the window left."""
    if work_hours <= 0 or window_hours <= 0:
        return False
    return remaining_hours <= work_hours * time_left_hours / window_hours


@dataclass(frozen=True)
class Placement:
    """Where a job runs (or last ran): location, market, instance type, and the price it pays."""

    location: str
    market: str
    instance_type: str
    zone: str = ""
    price_usd_hour: float | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        """(location, market, instance type), comparable with :attr:`Candidate.key`."""
        return (self.location, self.market, self.instance_type)

    @classmethod
    def of(cls, candidate: Candidate) -> Placement:
        """The placement a candidate stands for."""
        q = candidate.quote
        return cls(q.location, q.market, q.instance_type, q.zone, q.price_usd_hour)


@dataclass(frozen=True)
class DecisionInputs:
    """Everything :func:`decide` looks at. Plain data; the caller gathers it.

    ``remaining_hours``: instance-hours of work left (counting work since the last checkpoint as
    done; a preempted job passes the work left from its last checkpoint). ``current_running``:
    False when the current placement was preempted or stopped (the job must be placed again).
    ``checkpoint_age_hours``: work done since the last committed checkpoint. ``no_spot``: locations
    whose spot capacity is known to be gone now; ``unfit``: locations not to use at all.
    """

    job: TrainingJob
    quotes: Sequence[NormalizedGPUQuote]
    now: datetime
    remaining_hours: float
    footprint: DataFootprint = field(default_factory=DataFootprint)
    current: Placement | None = None
    current_running: bool = True
    checkpoint_age_hours: float = 0.0
    risks: Mapping[str, RegionRisk] = field(default_factory=dict)
    no_spot: Mapping[str, str] = field(default_factory=dict)
    unfit: Mapping[str, str] = field(default_factory=dict)
    cooldown_until: datetime | None = None
    deadline_at: datetime | None = None
    snapshot_id: str = ""


@dataclass(frozen=True)
class MoveTerms:
    """The economics of moving from the current placement to one alternative, USD."""

    expected_savings_usd: float
    egress_usd: float
    downtime_usd: float
    staleness_usd: float
    risk_usd: float
    margin_usd: float

    @property
    def move_cost_usd(self) -> float:
        """Egress + downtime + staleness + risk."""
        return self.egress_usd + self.downtime_usd + self.staleness_usd + self.risk_usd

    @property
    def net_usd(self) -> float:
        """Savings minus move cost."""
        return self.expected_savings_usd - self.move_cost_usd

    @property
    def pays(self) -> bool:
        """The move beats its cost by more than the hysteresis margin."""
        return self.net_usd > self.margin_usd

    def to_dict(self) -> dict[str, float]:
        """Every term plus the derived totals."""
        return {
            "expected_savings_usd": self.expected_savings_usd,
            "egress_usd": self.egress_usd,
            "downtime_usd": self.downtime_usd,
            "staleness_usd": self.staleness_usd,
            "risk_usd": self.risk_usd,
            "move_cost_usd": self.move_cost_usd,
            "margin_usd": self.margin_usd,
            "net_usd": self.net_usd,
        }


@dataclass(frozen=True)
class Decision:
    """The outcome of :func:`decide`: what to do, where, and why (every term and reason)."""

    job: str
    action: str
    decided_at: datetime
    snapshot_id: str
    current: Placement | None
    current_running: bool
    target: Candidate | None
    best: Candidate | None
    candidates: tuple[Candidate, ...]
    terms: MoveTerms | None
    remaining_hours: float
    deadline_slack_hours: float | None
    overhead_hours: float
    reasons: tuple[str, ...]

    @property
    def target_location(self) -> str | None:
        """Where the job should run after this decision (None when queued)."""
        return self.target.location if self.target is not None else None

    @property
    def changes_placement(self) -> bool:
        """The job has to be (re)started somewhere: place, move or fallback to a new placement."""
        if self.target is None or self.action in ("stay", "queue"):
            return False
        return not (self.current_running and self.current is not None and self.current.key == self.target.key)

    @property
    def decision_id(self) -> str:
        """Deterministic id: job, quote snapshot, current location and action."""
        cur = self.current.location if self.current is not None and self.current_running else "-"
        return f"{self.job}:{self.snapshot_id or '-'}:{cur}:{self.action}"

    def run_key(self) -> str:
        """Run key of the migration this decision requests (:func:`spotshift.runkeys.move_run_key`).

        The source is where the job was placed even when it is not running.
        """
        src = self.current.location if self.current is not None else ""
        return runkeys.move_run_key(self.job, src, self.target_location or "", self.snapshot_id)

    def to_row(self) -> dict[str, Any]:
        """The ``raw.decisions`` row (columns of :data:`spotshift.warehouse.RAW_TABLES`)."""
        t = self.terms
        cur_price = None
        if self.current is not None and self.current_running:
            cur_price = self.current.price_usd_hour
        return {
            "decision_id": self.decision_id,
            "decided_at": self.decided_at,
            "job": self.job,
            "snapshot_id": self.snapshot_id,
            "action": self.action,
            "current_location": self.current.location
            if self.current is not None and self.current_running
            else "",
            "best_location": self.best.location if self.best is not None else "",
            "current_usd_hour": cur_price,
            "best_usd_hour": self.best.price_usd_hour if self.best is not None else None,
            "remaining_hours": self.remaining_hours,
            "expected_savings_usd": t.expected_savings_usd if t else None,
            "move_cost_usd": t.move_cost_usd if t else None,
            "margin_usd": t.margin_usd if t else None,
            "deadline_slack_hours": self.deadline_slack_hours,
            "reasons": json.dumps(list(self.reasons)),
        }

    def candidate_rows(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Rows of ``main.placement_candidates``: every scored candidate with every term."""
        rows = []
        for c in self.candidates[:limit] if limit else self.candidates:
            row = c.to_row()
            row.update(
                decision_id=self.decision_id,
                job=self.job,
                snapshot_id=self.snapshot_id,
                decided_at=self.decided_at,
                chosen=self.target is not None and c.key == self.target.key and c.quote == self.target.quote,
            )
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the command line's ``--json``)."""
        return {
            "job": self.job,
            "action": self.action,
            "decided_at": self.decided_at.isoformat(),
            "snapshot_id": self.snapshot_id,
            "current": None if self.current is None else self.current.__dict__,
            "current_running": self.current_running,
            "target": None if self.target is None else self.target.to_row(),
            "best": None if self.best is None else self.best.to_row(),
            "terms": None if self.terms is None else self.terms.to_dict(),
            "remaining_hours": self.remaining_hours,
            "deadline_slack_hours": self.deadline_slack_hours,
            "overhead_hours": self.overhead_hours,
            "reasons": list(self.reasons),
            "run_key": self.run_key() if self.changes_placement else None,
        }


def _usd(x: float) -> str:
    return f"{x:,.2f} USD"


def _where(c: Candidate) -> str:
    q = c.quote
    return f"{q.location} {q.market} {q.instance_type} at {q.price_usd_hour:.2f} USD/h"


def decide(inputs: DecisionInputs, params: PlacementParams | None = None) -> Decision:
    """Decide place | move | stay | fallback_on_demand | queue for one job (rules in the module doc)."""
    p = params or PlacementParams()
    inp = inputs
    job = inp.job
    remaining = max(0.0, float(inp.remaining_hours))
    ckpt_interval = job.checkpoint_every_minutes / 60.0
    deadline = inp.deadline_at or job.deadline_at
    time_left = (deadline - inp.now).total_seconds() / 3600.0 if deadline is not None else None
    slack = None if time_left is None else time_left - remaining
    cands = score_candidates(
        job,
        inp.quotes,
        inp.footprint,
        remaining_hours=remaining,
        risks=inp.risks,
        no_spot=inp.no_spot,
        unfit=inp.unfit,
        params=p,
    )
    eligible = [c for c in cands if c.eligible]
    best = eligible[0] if eligible else None
    running = inp.current is not None and inp.current_running
    cur = inp.current if running else None
    cur_cand = _match_current(cands, cur) if cur is not None else None
    if cur is not None and cur.price_usd_hour is None and cur_cand is not None:
        cur = Placement(cur.location, cur.market, cur.instance_type, cur.zone, cur_cand.price_usd_hour)
    current_for_record = cur if cur is not None else inp.current
    reasons: list[str] = []

    def result(
        action: str, target: Candidate | None, terms: MoveTerms | None = None, overhead: float = 0.0
    ) -> Decision:
        return Decision(
            job=job.name,
            action=action,
            decided_at=inp.now,
            snapshot_id=inp.snapshot_id,
            current=current_for_record,
            current_running=running,
            target=target,
            best=best,
            candidates=tuple(cands),
            terms=terms,
            remaining_hours=remaining,
            deadline_slack_hours=slack,
            overhead_hours=overhead,
            reasons=tuple(reasons),
        )

    def overhead(c: Candidate) -> float:
        """Hours without progress if the job goes to ``c`` now."""
        if cur is not None and c.key == cur.key:
            return 0.0
        if cur is not None:  # planned move: copies are pre-staged while the source still runs
            return p.changeover_hours + inp.checkpoint_age_hours
        return p.changeover_hours + c.transfer_hours

    base_reserve = safety_reserve_hours(p.changeover_hours, 0.0, ckpt_interval, p.decision_interval_hours)

    def feasible(c: Candidate) -> bool:
        if time_left is None:
            return True
        need = remaining + overhead(c)
        if c.market == "on_demand":
            return need <= time_left + 1e-9
        return time_left - need > base_reserve

    if remaining <= 0:
        reasons.append("no work left")
        return result("stay" if running else "queue", cur_cand if running else None)

    od = [c for c in eligible if c.market == "on_demand"]

    # 1. deadline safety net
    if time_left is not None and job.spot_allowed:
        fastest_od_transfer = min((c.transfer_hours for c in od), default=0.0)
        reserve = safety_reserve_hours(
            p.changeover_hours, fastest_od_transfer, ckpt_interval, p.decision_interval_hours
        )
        if deadline_requires_on_demand(time_left, remaining, reserve):
            reasons.append(
                f"deadline safety net: slack {slack:.2f} h <= reserve {reserve:.2f} h "
                f"(changeover {p.changeover_hours:g} h + copy {fastest_od_transfer:.2f} h + checkpoint interval "
                f"{ckpt_interval:.2f} h + decision interval {p.decision_interval_hours:.2f} h)"
            )
            if cur is not None and cur.market == "on_demand":
                reasons.append("already on on-demand: stay until the job finishes")
                return result("stay", cur_cand)
            if not od:
                reasons.append("no eligible on-demand quote")
                if cur is not None:
                    return result("stay", cur_cand)
                return result("queue", None)
            ok = [c for c in od if feasible(c)]
            if ok:
                target = ok[0]
            else:
                target = min(od, key=lambda c: (overhead(c), c.expected_gpu_hour_usd))
                reasons.append("no plan can meet the deadline any more: taking the fastest on-demand plan")
            reasons.append(f"switch to on-demand: {_where(target)}")
            return result("fallback_on_demand", target, overhead=overhead(target))

    # 2. not running: place
    if cur is None:
        if inp.current is not None and not inp.current_running:
            reasons.append(
                f"{inp.current.location} {inp.current.market} is no longer running (preempted or stopped)"
            )
        ok = [c for c in eligible if feasible(c)]
        spot_ok = [c for c in ok if c.market == "spot"]
        waiting = _worth_waiting_for(cands, ok[0] if ok else None, inp, p, time_left, deadline)
        if waiting is not None:
            c, outage = waiting
            reasons.append(
                f"waiting for {_where(c)} (preempted, expected back in ~{outage:.1f} h): it ranks above "
                f"{_where(ok[0]) if ok else 'every available candidate'} and the job is ahead of uniform progress "
                f"({remaining:.1f} h of work left, {time_left:.1f} h to the deadline)"
            )
            return result("queue", None)
        if ok and (ok[0].market == "spot" or not job.spot_allowed):
            target = ok[0]
            reasons.append(f"best-ranked feasible candidate: {_where(target)}")
            return result("place", target, overhead=overhead(target))
        if spot_ok:
            # on-demand ranks first (unusual: spot above on-demand); it is the cheapest place
            target = ok[0]
            reasons.append(f"on-demand ranks above every spot quote: {_where(target)}")
            return result("place", target, overhead=overhead(target))
        spot_quotes = [c for c in cands if c.market == "spot"]
        if job.spot_allowed:
            reasons.append(_why_no_spot(spot_quotes, eligible))
            window = _window_hours(job, deadline)
            if (
                p.wait_for_spot_when_ahead
                and time_left is not None
                and spot_quotes
                and ahead_of_uniform_progress(remaining, job.work_hours, time_left, window)
            ):
                reasons.append(
                    f"ahead of uniform progress ({remaining:.1f} h of work left, {time_left:.1f} h to the "
                    "deadline): waiting for spot capacity costs nothing"
                )
                return result("queue", None)
        od_ok = [c for c in od if feasible(c)]
        if od_ok:
            target = od_ok[0]
            reasons.append(f"fall back to on-demand: {_where(target)}")
            return result(
                "fallback_on_demand" if job.spot_allowed else "place", target, overhead=overhead(target)
            )
        if od:
            target = min(od, key=lambda c: (overhead(c), c.expected_gpu_hour_usd))
            reasons.append("no plan can meet the deadline any more: taking the fastest on-demand plan")
            return result(
                "fallback_on_demand" if job.spot_allowed else "place", target, overhead=overhead(target)
            )
        reasons.append(_why_nothing(cands))
        return result("queue", None)

    # 3. running: stay or move
    cur_price = cur.price_usd_hour
    if cur_price is None:
        reasons.append(
            f"current placement {cur.location} {cur.market} {cur.instance_type} has no known price: stay"
        )
        return result("stay", cur_cand)
    cur_eff_hour = cur_cand.effective_instance_hour_usd if cur_cand is not None else cur_price
    gpus = job.gpu_count
    if cur.market == "spot":
        if cur_cand is not None:
            cur_risk = cur_cand.risk_gpu_hour_usd * gpus * cur_cand.amortization_hours
        else:
            cur_risk = expected_preemptions(inp.risks.get(cur.location), remaining) * preemption_cost_usd(
                cur_price, job, inp.footprint, p
            )
    else:
        cur_risk = 0.0
    forced = None
    if cur_cand is not None and not cur_cand.eligible:
        forced = "; ".join(cur_cand.rejected)
        reasons.append(f"current placement no longer qualifies: {forced}")
    margin = max(p.margin_min_usd, p.margin_fraction * cur_eff_hour * remaining)

    def terms_for(c: Candidate) -> MoveTerms:
        target_risk = c.risk_gpu_hour_usd * gpus * c.amortization_hours
        return MoveTerms(
            expected_savings_usd=(cur_eff_hour - c.effective_instance_hour_usd) * remaining,
            egress_usd=c.transfer.egress_usd,
            downtime_usd=p.changeover_hours * cur_price,
            staleness_usd=inp.checkpoint_age_hours * c.effective_instance_hour_usd,
            risk_usd=target_risk - cur_risk,
            margin_usd=margin,
        )

    alternatives = [c for c in eligible if c.key != cur.key][: p.max_alternatives]
    infeasible = [c for c in alternatives if not feasible(c)]
    alternatives = [c for c in alternatives if feasible(c)]
    scored = sorted(
        ((terms_for(c), c) for c in alternatives),
        key=lambda tc: (-tc[0].net_usd, tc[1].expected_gpu_hour_usd, tc[1].location),
    )
    if infeasible:
        reasons.append(
            f"{len(infeasible)} alternative(s) skipped: after the move they could no longer finish by the deadline"
        )
    if not scored:
        reasons.append("no feasible alternative: stay")
        return result("stay", cur_cand)
    terms, alt = scored[0]
    detail = (
        f"best alternative {_where(alt)}: saves {_usd(terms.expected_savings_usd)} over {remaining:.1f} h; "
        f"move costs {_usd(terms.move_cost_usd)} (egress {terms.egress_usd:.2f}, downtime {terms.downtime_usd:.2f}, "
        f"staleness {terms.staleness_usd:.2f}, risk {terms.risk_usd:+.2f}); margin {_usd(terms.margin_usd)}"
    )
    reasons.append(detail)
    if forced:
        reasons.append("move: the current placement no longer qualifies")
        return result("move", alt, terms, overhead(alt))
    if inp.cooldown_until is not None and inp.now < inp.cooldown_until:
        if cur.market == "spot" and ahead_of_interruption(inp.risks.get(cur.location), terms.pays):
            reasons.append(
                f"move inside the cooldown, ahead of a predicted interruption of {cur.location}: net "
                f"{_usd(terms.net_usd)} > margin {_usd(terms.margin_usd)}"
            )
            return result("move", alt, terms, overhead(alt))
        reasons.append(f"cooldown until {inp.cooldown_until.isoformat()}: stay")
        return result("stay", cur_cand, terms)
    if terms.pays:
        reasons.append(f"move: net {_usd(terms.net_usd)} > margin {_usd(terms.margin_usd)}")
        return result("move", alt, terms, overhead(alt))
    reasons.append(f"stay: net {_usd(terms.net_usd)} <= margin {_usd(terms.margin_usd)}")
    return result("stay", cur_cand, terms)


def _window_hours(job: TrainingJob, deadline: datetime | None) -> float:
    """Submission-to-deadline hours (the uniform-progress window)."""
    if job.deadline_hours:
        return job.deadline_hours
    if deadline is None:
        return 0.0
    return (deadline - _submitted(job, deadline)).total_seconds() / 3600.0


def _worth_waiting_for(
    cands: Sequence[Candidate],
    best_available: Candidate | None,
    inp: DecisionInputs,
    p: PlacementParams,
    time_left: float | None,
    deadline: datetime | None,
) -> tuple[Candidate, float] | None:
    """A preempted spot candidate that ranks above everything available now, when the job is far
    enough ahead of uniform progress to wait out its expected outage; with that outage (hours)."""
    job = inp.job
    if not (p.wait_for_spot_when_ahead and job.spot_allowed and time_left is not None and inp.no_spot):
        return None
    reasons = set(inp.no_spot.values())
    waiting = [
        c for c in cands if c.market == "spot" and c.rejected and all(r in reasons for r in c.rejected)
    ]
    if not waiting:
        return None
    w = min(waiting, key=lambda c: (c.expected_gpu_hour_usd, c.location))
    if best_available is not None and w.expected_gpu_hour_usd >= best_available.expected_gpu_hour_usd:
        return None
    risk = inp.risks.get(w.location)
    outage = risk.mean_outage_hours if risk is not None else p.default_outage_hours
    window = _window_hours(job, deadline)
    if not ahead_of_uniform_progress(inp.remaining_hours, job.work_hours, time_left - outage, window):
        return None
    return w, outage


def _submitted(job: TrainingJob, deadline: datetime) -> datetime:
    from datetime import timedelta

    from spotshift.clock import parse_utc

    if job.submitted_at:
        return parse_utc(job.submitted_at)
    return deadline - timedelta(hours=job.deadline_hours or 0.0)


def _match_current(cands: Sequence[Candidate], cur: Placement) -> Candidate | None:
    same = [c for c in cands if c.key == cur.key]
    if not same:
        return None
    for c in same:
        if c.quote.zone == cur.zone:
            return c
    return same[0]


def _why_no_spot(spot: Sequence[Candidate], eligible: Sequence[Candidate]) -> str:
    if not spot:
        return "no spot quote for this job in the snapshot"
    preempted = sum(1 for c in spot if any("preempt" in r or "no spot" in r for r in c.rejected))
    if any(c.market == "spot" for c in eligible):
        return "no spot candidate can finish by the deadline"
    if preempted:
        return f"no spot capacity: {preempted} of {len(spot)} spot quote(s) preempted or unavailable"
    return f"no spot candidate qualifies ({len(spot)} rejected)"


def _why_nothing(cands: Sequence[Candidate]) -> str:
    if not cands:
        return "queue: no quote at all in the snapshot"
    counts: dict[str, int] = {}
    for c in cands:
        for r in c.rejected:
            key = r.split(" at ")[0]
            counts[key] = counts.get(key, 0) + 1
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:3]
    return "queue: nothing qualifies (" + "; ".join(f"{k} x{n}" for k, n in top) + ")"


__all__ = [
    "ACTIONS",
    "Decision",
    "DecisionInputs",
    "MoveTerms",
    "Placement",
    "ahead_of_uniform_progress",
    "deadline_requires_on_demand",
    "decide",
    "safety_reserve_hours",
]
