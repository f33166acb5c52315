"""Numbers as people read them: US dollars to the cent, fractions as percent.

Dagster metadata, the cost report and the demo show costs under keys named with their unit
(``actual_usd``, ``saving_vs_on_demand_pct``); these two functions are the one place that decides
how such a value is rounded, so the UI never shows ``1623.68027715644`` or a bare ``0.619``.
"""

from __future__ import annotations


def usd(value: float | None) -> float | None:
    """``value`` in US dollars rounded to the cent (None stays None)."""
    return None if value is None else round(float(value), 2)


def percent(fraction: float | None) -> float | None:
    """A fraction (0.619) as a percentage rounded to 0.1 (61.9); None stays None."""
    return None if fraction is None else round(100.0 * float(fraction), 1)
