"""Price feeds behind one interface (DESIGN §1): ``replay`` (embedded default), ``aws``, ``gcp``, ``azure``.

A feed fetches the provider's native price documents, parses them into a raw price frame
(:func:`spotshift.pricing.normalize.raw_price_schema`) and normalizes that into quotes. Each
provider module also exposes the pure parsers of its native format, so
``spotshift quotes normalize --provider P FILE`` and the tests read recorded responses with
exactly the code the live feed uses.
"""

from __future__ import annotations

from typing import Any

from spotshift.errors import ConfigError
from spotshift.pricing.feeds.aws import AwsFeed
from spotshift.pricing.feeds.azure import AzureFeed
from spotshift.pricing.feeds.base import PriceFeed
from spotshift.pricing.feeds.gcp import GcpFeed
from spotshift.pricing.feeds.replay import ReplayFeed

__all__ = ["FEED_NAMES", "PriceFeed", "open_feed"]

FEED_NAMES = ("replay", "aws", "gcp", "azure")

#: feed name -> class (the interface lives in :mod:`spotshift.pricing.feeds.base`, below them all)
_FEEDS: dict[str, type[PriceFeed]] = {
    "replay": ReplayFeed,
    "aws": AwsFeed,
    "gcp": GcpFeed,
    "azure": AzureFeed,
}


def open_feed(name: str, **options: Any) -> PriceFeed:
    """Construct a feed by name; ``options`` are the keyword arguments of that feed's class.

    Raises :class:`ConfigError` for an unknown name.
    """
    feed = _FEEDS.get(name)
    if feed is None:
        raise ConfigError(f"price feed {name!r} is not one of {', '.join(FEED_NAMES)}")
    return feed(**options)
