"""Reserved prices: on-demand x (1 - the provider's documented 1-year discount)."""

from __future__ import annotations

import math

import pytest

from spotshift.errors import ConfigError
from spotshift.pricing.reserved import RESERVED_DISCOUNTS, ReservedDiscount, reserved_price_usd_hour


def test_documented_discounts_apply() -> None:
    assert reserved_price_usd_hour("gcp", 10.0) == pytest.approx(6.3)
    assert reserved_price_usd_hour("aws", 10.0) == pytest.approx(6.4)
    assert reserved_price_usd_hour("Azure", 10.0) == pytest.approx(6.2)
    for d in RESERVED_DISCOUNTS.values():
        assert 0.2 < d.discount < 0.6 and d.source.startswith("https://") and d.term == "1y"


def test_own_table_overrides() -> None:
    table = {"gcp": ReservedDiscount("gcp", "1y", 0.5, "negotiated", "contract")}
    assert reserved_price_usd_hour("gcp", 8.0, table) == pytest.approx(4.0)
    with pytest.raises(ConfigError, match="no reserved discount for provider 'aws'"):
        reserved_price_usd_hour("aws", 8.0, table)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_bad_prices_refused(bad: float) -> None:
    with pytest.raises(ConfigError, match="on-demand price"):
        reserved_price_usd_hour("gcp", bad)
