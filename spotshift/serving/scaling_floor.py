"""The pooled floor (rule 5 of :mod:`spotshift.serving.autoscale`): a small user region's floor kept
by the capacity other user regions keep beyond their own floors.

Each user region's floor asks that losing every spot replica of any one location still leaves
capacity for ``floor_share`` of its traffic. Planned region by region, a region whose floor is a
fraction of a replica pays a whole replica for it (a reserved/on-demand replica, or a second spot
location), while the bigger regions planned before it already keep, whichever one location is
lost, more survivors than their own floors need. That surplus covers the small region's floor when
it sits in locations within the small region's SLO round trip (its eligible locations): each
region's loss in any one location is at most its biggest spot location there, so the sum of the
survivors still covers the sum of the floors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass
class FloorSurplus:
    """A planned user region's replicas and how much of their capacity (in replicas) is left after
    its own floor, whichever one location loses its spot replicas."""

    counts: Mapping[tuple[str, str], int]
    left: float

    def reachable(self, eligible: Sequence[str]) -> float:
        """What of :attr:`left` a region served from ``eligible`` can count on: the survivors in
        those locations after the worst spot loss among them."""
        here = sum(n for (loc, _), n in self.counts.items() if loc in eligible)
        lost = max((n for (loc, mk), n in self.counts.items() if mk == "spot" and loc in eligible), default=0)
        return max(0.0, min(self.left, here - lost))


def pooled_floor(
    floor: float, eligible: Sequence[str], surplus: Sequence[FloorSurplus] | None
) -> tuple[int, float]:
    """Whole replicas a user region keeps for its ``floor`` (in replicas, after its reserved ones),
    and how much of the floor the regions planned before it keep instead (taken from ``surplus``).

    Only a floor under one replica (a small user region) is pooled: it is kept by the others'
    surplus when what they can reach from ``eligible`` covers all of it; otherwise, and for every
    bigger floor, the region keeps ``ceil(floor)`` of its own.
    """
    own = math.ceil(max(0.0, floor) - 1e-9)
    if surplus is None or not 0.0 < floor < 1.0 - 1e-9:
        return own, 0.0
    reach = [s.reachable(eligible) for s in surplus]
    if sum(reach) < floor - 1e-9:
        return own, 0.0
    left = floor
    for s, r in zip(surplus, reach, strict=True):
        take = min(r, left)
        s.left -= take
        left -= take
    return 0, floor
