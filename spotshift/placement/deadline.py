"""The deadline's arithmetic, shared by the decision and every spot policy of the simulator.

* the **safety net**: :func:`deadline_requires_on_demand` is True when the slack (time to the
  deadline minus work left) no longer exceeds :func:`safety_reserve_hours` — the switch to
  on-demand (changeover + copy), one checkpoint interval of work a preemption can destroy, and
  one decision interval;
* **uniform progress** (Can't Be Late): :func:`ahead_of_uniform_progress` over the window from
  submission to deadline (:func:`window_hours`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from spotshift.clock import parse_utc
from spotshift.jobs import TrainingJob
from spotshift.placement.horizon import uniform_progress_slack_hours


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
    """Can't Be Late's Uniform Progress line: work left is at most the share of the window left
    (:func:`~spotshift.placement.horizon.uniform_progress_slack_hours` >= 0)."""
    return uniform_progress_slack_hours(remaining_hours, work_hours, time_left_hours, window_hours) >= -1e-9


def window_hours(job: TrainingJob, deadline: datetime | None) -> float:
    """Submission-to-deadline hours (the uniform-progress window); 0 without a deadline."""
    if job.deadline_hours:
        return job.deadline_hours
    if deadline is None:
        return 0.0
    return (deadline - _submitted(job, deadline)).total_seconds() / 3600.0


def _submitted(job: TrainingJob, deadline: datetime) -> datetime:
    if job.submitted_at:
        return parse_utc(job.submitted_at)
    return deadline - timedelta(hours=job.deadline_hours or 0.0)


__all__ = ["ahead_of_uniform_progress", "deadline_requires_on_demand", "safety_reserve_hours", "window_hours"]
