"""The decision's data: where a job runs (:class:`Placement`), what the decision looks at
(:class:`DecisionInputs`), the economics of one move (:class:`MoveTerms`) and the outcome
(:class:`Decision`, with its ``raw.decisions`` row and run key).

Plain data, no rules: :func:`spotshift.placement.economics.decide` applies the rules.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from spotshift import runkeys
from spotshift.jobs import TrainingJob
from spotshift.placement.risk import RegionRisk
from spotshift.placement.scoring import Candidate, DataFootprint
from spotshift.pricing.quote import NormalizedGPUQuote

ACTIONS = ("place", "move", "stay", "fallback_on_demand", "queue")


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
    """Everything :func:`~spotshift.placement.economics.decide` looks at. Plain data; the caller gathers it.

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
    """The outcome of :func:`~spotshift.placement.economics.decide`: what to do, where, and why (every term and reason)."""

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
        """The ``raw.decisions`` row (columns of :data:`spotshift.warehouse_schema.RAW_TABLES`)."""
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


__all__ = ["ACTIONS", "Decision", "DecisionInputs", "MoveTerms", "Placement"]
