"""Planning over a horizon: how many preemptions a placement should expect over the hours ahead.

A preemption risk learned as one rate and multiplied by the whole remaining runtime treats a
momentary warning as permanent: a region whose neighbour just lost its capacity (a co-interruption,
:mod:`spotshift.placement.availability`) is likely to be interrupted in the next hour, not at a
higher rate for the next 400. The horizon splits the expectation into

* the **near term**: ``RegionRisk.near_term_preemptions`` extra interruptions expected inside the
  next ``RegionRisk.near_term_hours`` (from the learned co-interruptions), counted in full when the
  job runs at least that long and pro rata otherwise, and
* the **long run**: ``preemptions_per_hour`` x the hours the job still runs there.

:func:`expected_preemptions` is what the placement score (``risk_gpu_hour_usd``) and the migration
economics (``MoveTerms.risk_usd``) multiply by the cost of one preemption, so a predicted
interruption makes moving away *now* pay when the interruption's expected cost exceeds the move's,
and :func:`ahead_of_interruption` lets such a move happen inside the cooldown (which exists against
price-driven churn, not against a predicted interruption).
"""

from __future__ import annotations

from typing import Any

from spotshift.placement.risk import RegionRisk


def expected_preemptions(risk: RegionRisk | None, hours: float) -> float:
    """Expected interruptions of a spot placement over the next ``hours`` (0 without a risk)."""
    if risk is None or hours <= 0:
        return 0.0
    near = risk.near_term_preemptions
    if near > 0 and risk.near_term_hours > 0:
        near *= min(1.0, hours / risk.near_term_hours)
    return risk.preemptions_per_hour * hours + max(0.0, near)


def expected_preemptions_array(rate: Any, near: Any, near_hours: Any, hours: Any) -> Any:
    """:func:`expected_preemptions` on numpy arrays (broadcasting; the fleet simulator's bound)."""
    import numpy as np

    hours = np.maximum(np.asarray(hours, dtype=np.float64), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(np.asarray(near_hours) > 0, np.minimum(1.0, hours / np.asarray(near_hours)), 1.0)
    return np.asarray(rate) * hours + np.maximum(0.0, np.asarray(near)) * share * (hours > 0)


#: a near-term expectation below this many extra interruptions is noise, not a prediction
PREDICTED_INTERRUPTION = 0.1


def predicted_interruption(risk: RegionRisk | None) -> bool:
    """The placement's risk carries a predicted near-term interruption (a co-interruption signal)."""
    return risk is not None and risk.near_term_preemptions >= PREDICTED_INTERRUPTION


def ahead_of_interruption(risk: RegionRisk | None, move_pays: bool) -> bool:
    """Whether a move may happen inside the cooldown: an interruption of the current placement is
    predicted, and the move pays with every term (the near-term risk included). The cooldown guards
    against price-driven back-and-forth; it does not make a job sit out a predicted interruption."""
    return move_pays and predicted_interruption(risk)


# ---- the deadline's uniform-progress line and "move later"


def required_progress_rate(remaining_hours: float, time_left_hours: float) -> float:
    """Can't Be Late's required progress rate: work left / time left (1.0: the job must run every
    hour from now on; above 1: the deadline cannot be met; ``inf`` when no time is left)."""
    if remaining_hours <= 0:
        return 0.0
    if time_left_hours <= 0:
        return float("inf")
    return remaining_hours / time_left_hours


def uniform_progress_slack_hours(
    remaining_hours: float, work_hours: float, time_left_hours: float, window_hours: float
) -> float:
    """Hours the job can go without progress and still be on or ahead of the uniform-progress line
    (work ``work_hours`` spread evenly over the ``window_hours`` from submission to deadline):
    ``time_left - remaining x window / work``. Negative when the job is behind the line; waiting for
    a cheaper price for ``w`` hours is allowed only while ``w`` <= this slack."""
    if work_hours <= 0 or window_hours <= 0:
        return float("-inf")
    return time_left_hours - remaining_hours * window_hours / work_hours


def later_share(remaining_hours: float, wait_hours: float) -> float:
    """Share of the remaining run a move made after ``wait_hours`` still covers (0..1): what a later
    move's savings and risk difference are worth against moving now."""
    if remaining_hours <= 0:
        return 0.0
    return max(0.0, min(1.0, (remaining_hours - max(0.0, wait_hours)) / remaining_hours))
