"""A replica's price comes from the newest quotes in the warehouse when --usd-per-hour is not given."""

from __future__ import annotations

from datetime import datetime

import pytest

from spotshift.errors import NotFoundError
from spotshift.serving.serve import replica_price_usd_hour


def _quote(region: str, market: str, price: float, gpus: int, instance: str) -> dict:
    return dict(
        snapshot_id="s1",
        polled_at=datetime(2026, 1, 1),
        provider="gcp",
        region=region,
        zone="",
        instance_type=instance,
        gpu_model="A100-40GB",
        gpu_count=gpus,
        market=market,
        price_usd_hour=price,
        source="replay",
    )


def test_price_per_gpu_by_market_from_latest_quotes(spotshift_home):
    from spotshift.warehouse import append_rows, connect

    with pytest.raises(NotFoundError, match="no spot quote for gcp/us-central1"):
        replica_price_usd_hour("gcp/us-central1", "spot")
    with connect() as con:
        append_rows(
            con,
            "main.gpu_quotes",
            [
                _quote("us-central1", "on_demand", 29.4, 8, "a2-highgpu-8g"),
                _quote("us-central1", "on_demand", 4.0, 1, "a2-highgpu-1g"),
                _quote("us-central1", "spot", 1.2, 1, "a2-highgpu-1g"),
                _quote("europe-west4", "spot", 0.5, 1, "a2-highgpu-1g"),
            ],
        )
    assert replica_price_usd_hour("gcp/us-central1", "spot") == pytest.approx(1.2)
    assert replica_price_usd_hour("gcp/us-central1", "on_demand") == pytest.approx(29.4 / 8)
    assert replica_price_usd_hour("gcp/us-central1", "reserved") == pytest.approx(29.4 / 8 * (1 - 0.37))
    with pytest.raises(NotFoundError, match="--usd-per-hour"):
        replica_price_usd_hour("gcp/asia-east1", "on_demand")
