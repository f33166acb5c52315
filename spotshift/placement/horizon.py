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
