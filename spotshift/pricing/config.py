"""Which price feed to poll and how: one configuration shared by the command line and Dagster.

Environment variables (read by :meth:`FeedConfig.from_env`; the Dagster resource
``resources/prices.py`` sets the same fields from its own config):

=============================  ================================================================
``SPOTSHIFT_PRICE_FEED``       replay (default) | aws | gcp | azure
``SPOTSHIFT_PRICES``           history CSV the replay feed replays (``--prices FILE``)
``SPOTSHIFT_AWS_REGIONS``      comma-separated regions for the aws feed (default: all enabled)
``SPOTSHIFT_GCP_BASE_URL``     Cloud Billing Catalog API base (tests point it at a local server)
``SPOTSHIFT_GCP_API_KEY``      optional API key for the gcp feed (else Application Default Creds)
``SPOTSHIFT_AZURE_BASE_URL``   Retail Prices API URL
``SPOTSHIFT_MAX_QUOTE_AGE_H``  freshness limit of the newest quote, hours (default: 360 replay,
                               72 live feeds)
=============================  ================================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from spotshift.errors import ConfigError
from spotshift.pricing.expectations import DEFAULT_MAX_QUOTE_AGE_HOURS
from spotshift.pricing.feeds import FEED_NAMES, PriceFeed, open_feed


@dataclass(frozen=True)
class FeedConfig:
    """Feed selection and options."""

    feed: str = "replay"
    history_path: str = ""
    aws_regions: tuple[str, ...] = field(default_factory=tuple)
    gcp_base_url: str = ""
    azure_base_url: str = ""
    max_quote_age_hours: float | None = None
    spot_tolerance: float = 0.01

    def __post_init__(self) -> None:
        if self.feed not in FEED_NAMES:
            raise ConfigError(f"price feed {self.feed!r} is not one of {', '.join(FEED_NAMES)}")
        if self.max_quote_age_hours is not None and self.max_quote_age_hours <= 0:
            raise ConfigError(f"max quote age must be > 0 hours, got {self.max_quote_age_hours}")
        if not 0 <= self.spot_tolerance < 1:
            raise ConfigError(f"spot tolerance must be in [0, 1), got {self.spot_tolerance}")

    @classmethod
    def from_env(cls, **overrides: Any) -> FeedConfig:
        """Configuration from ``SPOTSHIFT_*`` variables; non-empty ``overrides`` win."""
        age = os.environ.get("SPOTSHIFT_MAX_QUOTE_AGE_H", "")
        try:
            max_age = float(age) if age else None
        except ValueError:
            raise ConfigError(f"SPOTSHIFT_MAX_QUOTE_AGE_H={age!r} is not a number of hours") from None
        values: dict[str, Any] = {
            "feed": os.environ.get("SPOTSHIFT_PRICE_FEED", "") or "replay",
            "history_path": os.environ.get("SPOTSHIFT_PRICES", ""),
            "aws_regions": tuple(
                r.strip() for r in os.environ.get("SPOTSHIFT_AWS_REGIONS", "").split(",") if r.strip()
            ),
            "gcp_base_url": os.environ.get("SPOTSHIFT_GCP_BASE_URL", ""),
            "azure_base_url": os.environ.get("SPOTSHIFT_AZURE_BASE_URL", ""),
            "max_quote_age_hours": max_age,
        }
        values.update({k: v for k, v in overrides.items() if v not in (None, "", ())})
        return cls(**values)

    @property
    def quote_age_limit_hours(self) -> float:
        """Freshness limit used by the ``quotes_fresh`` check."""
        if self.max_quote_age_hours is not None:
            return self.max_quote_age_hours
        return DEFAULT_MAX_QUOTE_AGE_HOURS["replay" if self.feed == "replay" else "live"]

    def open(self) -> PriceFeed:
        """The configured feed."""
        if self.feed == "replay":
            return open_feed("replay", history=self.history_path or None)
        if self.feed == "aws":
            return open_feed("aws", regions=list(self.aws_regions) or None)
        if self.feed == "gcp":
            return open_feed("gcp", **({"base_url": self.gcp_base_url} if self.gcp_base_url else {}))
        return open_feed("azure", **({"base_url": self.azure_base_url} if self.azure_base_url else {}))
