"""Per-region preemption risk, learned from observed preemptions or availability traces.

The estimate is a rate: spot preemptions per hour of running (or available) time, with a prior
so that a region seen for a few hours is not judged on one event. With ``n`` preemptions observed
over ``h`` hours::

    preemptions_per_hour = (prior_events + n) / (prior_hours + h)
    prior_events = prior_hours / prior_available_spell_hours

The default prior is a mean available spell of 3 h (inside the published 0.7-10 h range, DESIGN
§4) weighted like 12 hours of observation. On-demand capacity has no preemption risk.

Sources: :func:`risk_from_traces` (a trace's on->off transitions over its available hours),
:class:`OnlineRiskEstimator` (the simulator feeds it the availability it has seen so far, so a
policy never peeks at the future), and :func:`risk_from_observations` (counts from the warehouse:
``raw.preemptions`` over spot hours of ``raw.compute_usage``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

PRIOR_AVAILABLE_SPELL_HOURS = 3.0
PRIOR_WEIGHT_HOURS = 12.0
PRIOR_OUTAGE_HOURS = 2.0


@dataclass(frozen=True)
class RegionRisk:
    """Preemption risk of spot capacity in one ``provider/region``."""

    location: str
    preemptions_per_hour: float
    mean_outage_hours: float
    observed_hours: float
    observed_preemptions: int
    #: extra interruptions expected within the next ``near_term_hours`` beyond the long-run rate
    #: (a predicted interruption, e.g. after a co-interruption; see :mod:`spotshift.placement.horizon`)
    near_term_preemptions: float = 0.0
    near_term_hours: float = 0.0

    def to_dict(self) -> dict[str, float | int | str]:
        """Plain dict (JSON-ready)."""
        return dict(self.__dict__)


def estimate(
    location: str,
    preemptions: int,
    hours: float,
    *,
    outage_hours: float = 0.0,
    outages: int = 0,
    prior_available_spell_hours: float = PRIOR_AVAILABLE_SPELL_HOURS,
    prior_weight_hours: float = PRIOR_WEIGHT_HOURS,
) -> RegionRisk:
    """The posterior-mean rate for ``preemptions`` seen over ``hours`` of spot time (see module doc)."""
    prior_events = prior_weight_hours / prior_available_spell_hours
    rate = (prior_events + preemptions) / (prior_weight_hours + max(0.0, hours))
    outage = (PRIOR_OUTAGE_HOURS + outage_hours) / (1 + outages)
    return RegionRisk(location, rate, outage, hours, preemptions)


def risk_from_traces(traces: Mapping[str, object]) -> dict[str, RegionRisk]:
    """Risk per location from whole availability traces (``{location: AvailabilityTrace}``)."""
    out = {}
    for location, trace in traces.items():
        est = OnlineRiskEstimator([location], gap_hours=trace.gap_seconds / 3600.0)  # type: ignore[attr-defined]
        for a in trace.available:  # type: ignore[attr-defined]
            est.observe({location: a})
        out[location] = est.risk(location)
    return out


def risk_from_observations(
    preemptions: Mapping[str, int],
    spot_hours: Mapping[str, float],
    outage_hours: Mapping[str, float] | None = None,
) -> dict[str, RegionRisk]:
    """Risk per location from counted preemptions and spot running hours (e.g. from the warehouse)."""
    outage_hours = outage_hours or {}
    locations = set(preemptions) | set(spot_hours)
    return {
        loc: estimate(
            loc,
            int(preemptions.get(loc, 0)),
            float(spot_hours.get(loc, 0.0)),
            outage_hours=float(outage_hours.get(loc, 0.0)),
            outages=int(preemptions.get(loc, 0)) if loc in outage_hours else 0,
        )
        for loc in sorted(locations)
    }


class OnlineRiskEstimator:
    """Learns risk from availability observed tick by tick (one ``observe`` call per tick)."""

    def __init__(self, locations: Iterable[str], *, gap_hours: float) -> None:
        self.gap_hours = gap_hours
        self._up_ticks: dict[str, int] = {}
        self._down_ticks: dict[str, int] = {}
        self._preemptions: dict[str, int] = {}
        self._recoveries: dict[str, int] = {}
        self._last: dict[str, bool] = {}
        for loc in locations:
            self._up_ticks[loc] = self._down_ticks[loc] = 0
            self._preemptions[loc] = self._recoveries[loc] = 0
        self._cache: dict[str, RegionRisk] = {}

    def observe(self, available: Mapping[str, bool]) -> None:
        """Record one tick of availability per location."""
        self._cache.clear()
        for loc, a in available.items():
            last = self._last.get(loc)
            if a:
                self._up_ticks[loc] = self._up_ticks.get(loc, 0) + 1
                if last is False:
                    self._recoveries[loc] = self._recoveries.get(loc, 0) + 1
            else:
                self._down_ticks[loc] = self._down_ticks.get(loc, 0) + 1
                if last is True:
                    self._preemptions[loc] = self._preemptions.get(loc, 0) + 1
            self._last[loc] = a

    def risk(self, location: str) -> RegionRisk:
        """Current estimate for one location (the prior when never observed)."""
        r = self._cache.get(location)
        if r is None:
            n = self._preemptions.get(location, 0)
            r = estimate(
                location,
                n,
                self._up_ticks.get(location, 0) * self.gap_hours,
                outage_hours=self._down_ticks.get(location, 0) * self.gap_hours,
                outages=max(n, self._recoveries.get(location, 0)),
            )
            self._cache[location] = r
        return r

    def risks(self) -> dict[str, RegionRisk]:
        """Current estimates for every location observed or declared."""
        return {loc: self.risk(loc) for loc in self._up_ticks}
