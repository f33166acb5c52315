"""Builders shared by the placement tests: quotes and jobs with readable defaults."""

from __future__ import annotations

from datetime import UTC, datetime

from spotshift.jobs import TrainingJob
from spotshift.pricing.quote import NormalizedGPUQuote, effective_gpu_hour_usd

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def make_quote(
    location: str,
    price: float,
    *,
    market: str = "spot",
    instance_type: str = "a2-highgpu-8g",
    gpu_model: str = "A100-40GB",
    gpu_count: int = 8,
    net_gbps: float = 200.0,
    storage_gbps: float = 10.0,
    topology_score: float = 9.0,
    zone: str = "",
) -> NormalizedGPUQuote:
    provider, _, region = location.partition("/")
    return NormalizedGPUQuote(
        provider=provider,
        region=region,
        zone=zone,
        instance_type=instance_type,
        gpu_model=gpu_model,
        gpu_count=gpu_count,
        market=market,
        price_usd_hour=price,
        effective_gpu_hour_usd=effective_gpu_hour_usd(price, gpu_count, net_gbps, storage_gbps),
        net_gbps=net_gbps,
        storage_gbps=storage_gbps,
        topology_score=topology_score,
        observed_at=NOW,
        source="test",
    )


def make_job(**overrides: object) -> TrainingJob:
    base: dict[str, object] = {
        "name": "llm-ft",
        "dataset": "corpus",
        "total_steps": 10_000,
        "work_hours": 100.0,
        "gpu_model": "A100",
        "gpu_count": 8,
        "min_topology_score": 7.0,
        "checkpoint_every_minutes": 15.0,
    }
    base.update(overrides)
    return TrainingJob(**base)  # type: ignore[arg-type]
