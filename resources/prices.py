"""The price feed as a Dagster resource: which feed the quote assets poll, and its options.

A thin adapter onto :class:`spotshift.pricing.config.FeedConfig`; the embedded default is the
``replay`` feed over the shared real history, or the synthetic market on a fresh clone.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from datetime import datetime

import dagster as dg

from spotshift.pricing.config import FeedConfig
from spotshift.pricing.feeds import PriceFeed

#: resource field -> the variable it is read from at run time
ENV_FIELDS = {
    "feed": "SPOTSHIFT_PRICE_FEED",
    "history_path": "SPOTSHIFT_PRICES",
    "gcp_base_url": "SPOTSHIFT_GCP_BASE_URL",
    "azure_base_url": "SPOTSHIFT_AZURE_BASE_URL",
}


class PriceFeedResource(dg.ConfigurableResource):
    """Selects ``replay`` | ``aws`` | ``gcp`` | ``azure`` and carries the feed's options."""

    feed: str = "replay"
    history_path: str = ""
    aws_regions: list[str] = []
    gcp_base_url: str = ""
    azure_base_url: str = ""
    max_quote_age_hours: float | None = None
    spot_tolerance: float = 0.01

    @classmethod
    def from_env(cls) -> PriceFeedResource:
        """The resource as configured by the ``SPOTSHIFT_*`` variables (see spotshift.pricing.config).

        The feed, the history file and the base URLs stay ``dg.EnvVar`` references (the UI shows
        the variable; each run resolves it); unset ones get their defaults in this process first.
        The configuration is validated here, so a wrong value fails the code location's load.
        """
        c = asdict(FeedConfig.from_env())  # validates
        refs = {}
        for field, var in ENV_FIELDS.items():
            os.environ.setdefault(var, c[field] or "")
            refs[field] = dg.EnvVar(var)
        return cls(**{**c, **refs, "aws_regions": list(c["aws_regions"])})

    def config(self) -> FeedConfig:
        """The validated library configuration."""
        return FeedConfig(**{**self.model_dump(), "aws_regions": tuple(self.aws_regions)})

    def open_feed(self) -> PriceFeed:
        """The configured feed, ready to poll."""
        return self.config().open()

    def now(self) -> datetime:
        """The shared virtual clock's time (the replay feed's notion of "now")."""
        from spotshift.clock import virtual_now

        return virtual_now()
