"""Waiting as an option: wait (queued) for a better spot placement whose capacity is gone now, or
stay and move there later, once it is expected back.

Both options look at the spot candidates rejected *only* because their capacity is gone now
(``DecisionInputs.no_spot``) and expect them back after their mean outage
(``RegionRisk.mean_outage_hours``, else ``PlacementParams.default_outage_hours``):

* :func:`worth_waiting_for` — a job that is not running waits for such a candidate when it ranks
  above everything available now and the slack to the uniform-progress line covers the outage;
* :func:`move_later` — a running job compares moving now with moving once, later, to such a
  candidate (its savings and risk difference count for the share of the run left then).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from spotshift.placement.deadline import window_hours
from spotshift.placement.decision import DecisionInputs, MoveTerms
from spotshift.placement.horizon import later_share, uniform_progress_slack_hours
from spotshift.placement.params import PlacementParams
from spotshift.placement.scoring import Candidate


def _capacity_gone_only(c: Candidate, gone: set[str]) -> bool:
    """A spot candidate rejected for no reason other than its capacity being gone now."""
    return c.market == "spot" and bool(c.rejected) and all(r in gone for r in c.rejected)


def _outage_hours(c: Candidate, inp: DecisionInputs, p: PlacementParams) -> float:
    risk = inp.risks.get(c.location)
    return risk.mean_outage_hours if risk is not None else p.default_outage_hours


def worth_waiting_for(
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
    gone = set(inp.no_spot.values())
    waiting = [c for c in cands if _capacity_gone_only(c, gone)]
    if not waiting:
        return None
    w = min(waiting, key=lambda c: (c.expected_gpu_hour_usd, c.location))
    if best_available is not None and w.expected_gpu_hour_usd >= best_available.expected_gpu_hour_usd:
        return None
    outage = _outage_hours(w, inp, p)
    window = window_hours(job, deadline)
    if uniform_progress_slack_hours(inp.remaining_hours, job.work_hours, time_left, window) < outage:
        return None  # waiting out the outage would put the job behind the uniform-progress line
    return w, outage


def move_later(
    cands: Sequence[Candidate],
    now_best: Candidate,
    inp: DecisionInputs,
    p: PlacementParams,
    remaining: float,
    terms_for: Callable[[Candidate], MoveTerms],
) -> tuple[Candidate, MoveTerms, float] | None:
    """The "move later" option of a running job: the cheapest spot candidate rejected only because
    its capacity is gone now (``no_spot``) and cheaper than ``now_best``, reached after its expected
    outage; with its terms against staying (savings and risk difference over the share of the run
    left after the wait, :func:`~spotshift.placement.horizon.later_share`; the staleness of half a
    checkpoint interval, the expected age at a random moment) and the wait in hours.
    ``terms_for`` gives the terms of moving to a candidate now."""
    if not inp.no_spot or not inp.job.spot_allowed:
        return None
    gone = set(inp.no_spot.values())
    waiting = [
        c
        for c in cands
        if _capacity_gone_only(c, gone)
        and c.effective_instance_hour_usd < now_best.effective_instance_hour_usd
    ]
    if not waiting:
        return None
    w = min(waiting, key=lambda c: (c.effective_instance_hour_usd, c.location))
    wait = _outage_hours(w, inp, p)
    share = later_share(remaining, wait)
    t = terms_for(w)
    later = MoveTerms(
        expected_savings_usd=t.expected_savings_usd * share,
        egress_usd=t.egress_usd,
        downtime_usd=t.downtime_usd,
        staleness_usd=inp.job.checkpoint_every_minutes / 120.0 * w.effective_instance_hour_usd,
        risk_usd=t.risk_usd * share,
        margin_usd=t.margin_usd,
    )
    return w, later, wait


__all__ = ["move_later", "worth_waiting_for"]
