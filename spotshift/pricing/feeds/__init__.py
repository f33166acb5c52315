"""Price feeds behind one interface (DESIGN §1): ``replay`` (embedded default), ``aws``, ``gcp``, ``azure``.

A feed fetches the provider's native price documents, parses them into a raw price frame
(:func:`spotshift.pricing.normalize.raw_price_schema`) and normalizes that into quotes. Each
provider module also exposes the pure parsers of its native format, so
``spotshift quotes normalize --provider P FILE`` and the tests read recorded responses with
exactly the code the live feed uses.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime
from typing import Any

from spotshift.errors import ConfigError
from spotshift.pricing.normalize import NormalizationReport, normalize_frame

FEED_NAMES = ("replay", "aws", "gcp", "azure")


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


def open_feed(name: str, **options: Any) -> PriceFeed:
    """Construct a feed by name; ``options`` are the keyword arguments of that feed's class.

    Raises :class:`ConfigError` for an unknown name.
    """
    if name == "replay":
        from spotshift.pricing.feeds.replay import ReplayFeed

        return ReplayFeed(**options)
    if name == "aws":
        from spotshift.pricing.feeds.aws import AwsFeed

        return AwsFeed(**options)
    if name == "gcp":
        from spotshift.pricing.feeds.gcp import GcpFeed

        return GcpFeed(**options)
    if name == "azure":
        from spotshift.pricing.feeds.azure import AzureFeed

        return AzureFeed(**options)
    raise ConfigError(f"price feed {name!r} is not one of {', '.join(FEED_NAMES)}")
