"""What one decision sees: a job's scored candidates, where it runs, the time left, the reasons
gathered so far — and the two questions every rule asks of a candidate: how long the job makes no
progress if it goes there (:meth:`Situation.overhead`) and whether it can still finish by the
deadline there (:meth:`Situation.feasible`, rule 4 of :mod:`spotshift.placement.economics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from spotshift.jobs import TrainingJob
from spotshift.placement.deadline import safety_reserve_hours
from spotshift.placement.decision import Decision, DecisionInputs, MoveTerms, Placement
from spotshift.placement.params import PlacementParams
from spotshift.placement.scoring import Candidate, score_candidates


@dataclass
class Situation:
    """One job at one decision: its scored candidates, where it runs, the time left, and the
    reasons gathered so far. The rules read it and end with :meth:`result`."""

    inp: DecisionInputs
    p: PlacementParams
    remaining: float
    deadline: datetime | None
    time_left: float | None
    cands: list[Candidate]
    #: candidates that qualify, best-ranked first; the eligible on-demand ones among them
    eligible: list[Candidate]
    on_demand: list[Candidate]
    running: bool
    cur: Placement | None
    cur_cand: Candidate | None
    reasons: list[str]

    @classmethod
    def of(cls, inp: DecisionInputs, p: PlacementParams) -> Situation:
        """Score the candidates and find the current placement among them."""
        remaining = max(0.0, float(inp.remaining_hours))
        deadline = inp.deadline_at or inp.job.deadline_at
        time_left = (deadline - inp.now).total_seconds() / 3600.0 if deadline is not None else None
        cands = score_candidates(
            inp.job,
            inp.quotes,
            inp.footprint,
            remaining_hours=remaining,
            risks=inp.risks,
            no_spot=inp.no_spot,
            unfit=inp.unfit,
            params=p,
        )
        running = inp.current is not None and inp.current_running
        cur = inp.current if running else None
        cur_cand = _match_current(cands, cur) if cur is not None else None
        if cur is not None and cur.price_usd_hour is None and cur_cand is not None:
            cur = Placement(cur.location, cur.market, cur.instance_type, cur.zone, cur_cand.price_usd_hour)
        eligible = [c for c in cands if c.eligible]
        on_demand = [c for c in eligible if c.market == "on_demand"]
        return cls(
            inp,
            p,
            remaining,
            deadline,
            time_left,
            list(cands),
            eligible,
            on_demand,
            running,
            cur,
            cur_cand,
            [],
        )

    @property
    def job(self) -> TrainingJob:
        """The job being decided."""
        return self.inp.job

    @property
    def checkpoint_interval_hours(self) -> float:
        """The job's checkpoint interval in hours."""
        return self.job.checkpoint_every_minutes / 60.0

    def result(
        self, action: str, target: Candidate | None, terms: MoveTerms | None = None, overhead: float = 0.0
    ) -> Decision:
        """The decision, with every candidate and the reasons gathered so far."""
        return Decision(
            job=self.job.name,
            action=action,
            decided_at=self.inp.now,
            snapshot_id=self.inp.snapshot_id,
            current=self.cur if self.cur is not None else self.inp.current,
            current_running=self.running,
            target=target,
            best=self.eligible[0] if self.eligible else None,
            candidates=tuple(self.cands),
            terms=terms,
            remaining_hours=self.remaining,
            deadline_slack_hours=None if self.time_left is None else self.time_left - self.remaining,
            overhead_hours=overhead,
            reasons=tuple(self.reasons),
        )

    def go(self, action: str, target: Candidate, terms: MoveTerms | None = None) -> Decision:
        """:meth:`result` for a decision that sends the job to ``target`` (with its overhead)."""
        return self.result(action, target, terms, self.overhead(target))

    def overhead(self, c: Candidate) -> float:
        """Hours without progress if the job goes to ``c`` now."""
        cur = self.cur
        if cur is not None and c.key == cur.key:
            return 0.0
        if cur is not None:  # planned move: copies are pre-staged while the source still runs
            return self.p.changeover_hours + self.inp.checkpoint_age_hours
        return self.p.changeover_hours + c.transfer_hours

    def feasible(self, c: Candidate) -> bool:
        """Rule 4: the plan can still finish by the deadline (a spot plan with the safety net)."""
        if self.time_left is None:
            return True
        need = self.remaining + self.overhead(c)
        if c.market == "on_demand":
            return need <= self.time_left + 1e-9
        base_reserve = safety_reserve_hours(
            self.p.changeover_hours, 0.0, self.checkpoint_interval_hours, self.p.decision_interval_hours
        )
        return self.time_left - need > base_reserve

    def fastest_on_demand(self, od: Sequence[Candidate]) -> Candidate:
        """When no plan is feasible: the on-demand plan that loses the least time, then the cheapest."""
        self.reasons.append("no plan can meet the deadline any more: taking the fastest on-demand plan")
        return min(od, key=lambda c: (self.overhead(c), c.expected_gpu_hour_usd))


def _match_current(cands: Sequence[Candidate], cur: Placement) -> Candidate | None:
    same = [c for c in cands if c.key == cur.key]
    if not same:
        return None
    for c in same:
        if c.quote.zone == cur.zone:
            return c
    return same[0]


__all__ = ["Situation"]
