"""The price feed interface every feed implements (:mod:`spotshift.pricing.feeds` opens one by name)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime
from typing import Any

from spotshift.pricing.normalize import NormalizationReport, normalize_frame


class PriceFeed(ABC):
    """A source of GPU instance prices."""

    #: ``replay`` | ``aws`` | ``gcp`` | ``azure``
    name: str = ""

    @abstractmethod
    def fetch(self, now: datetime) -> Any:
        """Raw price frame of the prices in effect at ``now`` (UTC)."""

    def clock(self, now: datetime) -> datetime:
        """The time this feed's prices describe when polled at ``now``: the feed's own clock.

        Live feeds publish current prices, so their clock is ``now``. Freshness (the
        ``quotes_fresh`` check) is measured against this clock, so a replayed history is judged
        on its own timeline and a live feed that stopped publishing is caught.
        """
        return now

    def describe(self, now: datetime) -> str:
        """One line saying what a poll at ``now`` serves (empty for live feeds)."""
        return ""

    def poll(self, now: datetime) -> tuple[Any, NormalizationReport]:
        """Fetch and normalize: ``(quotes frame, report)``."""
        return normalize_frame(self.fetch(now))
