"""A generated multi-cloud GPU market, for a fresh clone without ``../shared/data``. SYNTHETIC.

:func:`synthetic_history` returns weekly on-demand and spot prices for AWS, GCP and Azure GPU
instances in four regions per provider, with exactly the columns and dtypes of
:func:`spotshift.pricing.history.read_price_history` and ``source == "synthetic"`` on every row.
:func:`write_synthetic_history` writes it as a history CSV that ``read_price_history`` (and so
``--prices FILE`` and the replay feed) reads back unchanged.

How prices are made, and from which documented figures (the tables below carry their sources):

* on-demand = list price in the reference region (:data:`LIST_PRICES`) x regional uplift
  (:data:`REGIONS`); list prices do not move during the window (providers change them rarely);
* spot = on-demand x (1 - typical discount of the family, :data:`SPOT_DISCOUNTS`) x exp(x_t),
  where x_t is a mean-reverting random walk per (instance type, region): each week, with the
  provider's repricing probability (:data:`SPOT_DYNAMICS`), x moves to
  ``(1 - mean_reversion) * x + N(0, log_change_std)``; spot stays between 8 % and 98 % of
  on-demand (providers cap spot at the on-demand price).

The GCP dynamics are calibrated on the real weekly history (../shared/data, 2022-2024): spot
prices changed in 2.7 % of consecutive weekly observations, by a log-change std of 0.117 when
they did; the AWS figures follow the smoothed supply/demand pricing AWS introduced in 2017.
Nothing here pretends to be a real observation: use ``--prices FILE`` for real history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from spotshift.atomic import atomic_write_bytes
from spotshift.clock import parse_utc
from spotshift.pricing.catalog import load_catalog
from spotshift.pricing.history import OPTIONAL_COLUMNS, REQUIRED_COLUMNS

SOURCE = "synthetic"

AWS_PRICING = "https://aws.amazon.com/ec2/pricing/on-demand/"
GCP_PRICING = "https://cloud.google.com/compute/gpus-pricing"
AZURE_PRICING = "https://azure.microsoft.com/pricing/details/virtual-machines/linux/"
GCP_HISTORY = "https://github.com/Cyclenerd/google-cloud-pricing-cost-calculator"


@dataclass(frozen=True)
class ListPrice:
    """On-demand Linux list price of an instance type in its provider's reference region."""

    provider: str
    instance_type: str
    ondemand_usd_hour: float
    source: str


#: reference regions: aws us-east-1, gcp us-central1, azure eastus; 2023-2024 list prices
#: (AWS cut P4/P5 prices in June 2025, after this window)
LIST_PRICES: tuple[ListPrice, ...] = (
    ListPrice("aws", "p4d.24xlarge", 32.7726, AWS_PRICING),
    ListPrice("aws", "p4de.24xlarge", 40.9657, AWS_PRICING),
    ListPrice("aws", "p5.48xlarge", 98.32, AWS_PRICING),
    ListPrice("aws", "g5.xlarge", 1.006, AWS_PRICING),
    ListPrice("aws", "g5.12xlarge", 5.672, AWS_PRICING),
    ListPrice("aws", "g5.48xlarge", 16.288, AWS_PRICING),
    ListPrice("aws", "g6.xlarge", 0.8048, AWS_PRICING),
    ListPrice("aws", "g6.12xlarge", 4.6016, AWS_PRICING),
    ListPrice("aws", "g6e.xlarge", 1.861, AWS_PRICING),
    ListPrice("aws", "g6e.12xlarge", 10.49264, AWS_PRICING),
    ListPrice("aws", "g6e.48xlarge", 30.13118, AWS_PRICING),
    ListPrice("gcp", "a2-highgpu-1g", 3.673385, GCP_PRICING),
    ListPrice("gcp", "a2-highgpu-8g", 29.38708, GCP_PRICING),
    ListPrice("gcp", "a2-megagpu-16g", 55.739504, GCP_PRICING),
    ListPrice("gcp", "a2-ultragpu-1g", 5.068798, GCP_PRICING),
    ListPrice("gcp", "a2-ultragpu-8g", 40.550383, GCP_PRICING),
    ListPrice("gcp", "a3-highgpu-8g", 88.49, GCP_PRICING),
    ListPrice("gcp", "g2-standard-4", 0.706832, GCP_PRICING),
    ListPrice("gcp", "g2-standard-48", 4.001665, GCP_PRICING),
    ListPrice("gcp", "g2-standard-96", 8.00333, GCP_PRICING),
    ListPrice("azure", "Standard_ND96asr_v4", 27.197, AZURE_PRICING),
    ListPrice("azure", "Standard_ND96amsr_A100_v4", 32.77, AZURE_PRICING),
    ListPrice("azure", "Standard_ND96isr_H100_v5", 98.32, AZURE_PRICING),
    ListPrice("azure", "Standard_NC24ads_A100_v4", 3.673, AZURE_PRICING),
    ListPrice("azure", "Standard_NC96ads_A100_v4", 14.692, AZURE_PRICING),
    ListPrice("azure", "Standard_NC4as_T4_v3", 0.526, AZURE_PRICING),
    ListPrice("azure", "Standard_NC64as_T4_v3", 4.352, AZURE_PRICING),
)

#: provider -> ((region, on-demand uplift vs the reference region), ...), with the source.
#: GCP uplifts are the medians measured in the real history (2024-H2); AWS and Azure are read
#: off their pricing pages for the same instance types.
REGIONS: dict[str, tuple[tuple[str, float], ...]] = {
    "aws": (("us-east-1", 1.0), ("us-west-2", 1.0), ("eu-west-1", 1.10), ("ap-northeast-1", 1.28)),
    "gcp": (("us-central1", 1.0), ("us-east4", 1.009), ("europe-west4", 1.051), ("asia-southeast1", 1.234)),
    "azure": (("eastus", 1.0), ("southcentralus", 1.0), ("westeurope", 1.10), ("japaneast", 1.28)),
}
REGION_SOURCES = {"aws": AWS_PRICING, "gcp": GCP_HISTORY, "azure": AZURE_PRICING}


@dataclass(frozen=True)
class SpotDiscount:
    """Typical spot discount (fraction off on-demand) of an instance family."""

    provider: str
    family: str
    discount: float
    source: str


#: AWS: "up to 90 %" (Spot pricing page); GPU families sit at 50-65 % in the Spot Instance Advisor.
#: GCP: "60-91 %" (Spot VMs page); the families here are the medians of the real history.
#: Azure: "up to 90 %" (Spot VMs page); GPU series trade nearer 50-75 %.
SPOT_DISCOUNTS: tuple[SpotDiscount, ...] = (
    SpotDiscount("aws", "p4d", 0.60, "https://aws.amazon.com/ec2/spot/instance-advisor/"),
    SpotDiscount("aws", "p4de", 0.60, "https://aws.amazon.com/ec2/spot/instance-advisor/"),
    SpotDiscount("aws", "p5", 0.50, "https://aws.amazon.com/ec2/spot/instance-advisor/"),
    SpotDiscount("aws", "g5", 0.65, "https://aws.amazon.com/ec2/spot/instance-advisor/"),
    SpotDiscount("aws", "g6", 0.60, "https://aws.amazon.com/ec2/spot/instance-advisor/"),
    SpotDiscount("aws", "g6e", 0.55, "https://aws.amazon.com/ec2/spot/instance-advisor/"),
    SpotDiscount("gcp", "a2", 0.635, GCP_HISTORY),
    SpotDiscount("gcp", "a3", 0.30, GCP_HISTORY),
    SpotDiscount("gcp", "g2", 0.70, GCP_HISTORY),
    SpotDiscount("azure", "ND_A100_v4", 0.60, "https://azure.microsoft.com/pricing/spot-virtual-machines/"),
    SpotDiscount("azure", "NDm_A100_v4", 0.60, "https://azure.microsoft.com/pricing/spot-virtual-machines/"),
    SpotDiscount("azure", "ND_H100_v5", 0.50, "https://azure.microsoft.com/pricing/spot-virtual-machines/"),
    SpotDiscount("azure", "NC_A100_v4", 0.65, "https://azure.microsoft.com/pricing/spot-virtual-machines/"),
    SpotDiscount("azure", "NCasT4_v3", 0.75, "https://azure.microsoft.com/pricing/spot-virtual-machines/"),
)


@dataclass(frozen=True)
class SpotDynamics:
    """How a provider's spot prices move week to week (log scale)."""

    provider: str
    change_probability_per_week: float
    log_change_std: float
    mean_reversion: float
    source: str


SPOT_DYNAMICS: tuple[SpotDynamics, ...] = (
    # smoothed, frequent, small adjustments since the 2017 spot pricing change
    SpotDynamics("aws", 1.0, 0.04, 0.15, "https://aws.amazon.com/blogs/compute/new-amazon-ec2-spot-pricing/"),
    # "prices can change up to once every 30 days"; measured: 2.7 % of weeks, std 0.117 when they do
    SpotDynamics("gcp", 0.027, 0.117, 0.25, "https://cloud.google.com/compute/docs/instances/spot#pricing"),
    # capacity-driven, changes about every other week
    SpotDynamics("azure", 0.5, 0.06, 0.2, "https://learn.microsoft.com/azure/virtual-machines/spot-vms"),
)

SPOT_FLOOR = 0.08  # spot never below 8 % of on-demand
SPOT_CAP = 0.98  # nor above 98 % (providers cap spot at on-demand)


def parameter_table() -> list[dict[str, Any]]:
    """Every generator parameter with its source, for documentation and ``--help``-style listings."""
    rows: list[dict[str, Any]] = []
    rows += [
        {
            "kind": "list_price",
            "key": f"{p.provider}/{p.instance_type}",
            "value": p.ondemand_usd_hour,
            "source": p.source,
        }
        for p in LIST_PRICES
    ]
    rows += [
        {"kind": "region_uplift", "key": f"{prov}/{region}", "value": f, "source": REGION_SOURCES[prov]}
        for prov, regions in REGIONS.items()
        for region, f in regions
    ]
    rows += [
        {"kind": "spot_discount", "key": f"{d.provider}/{d.family}", "value": d.discount, "source": d.source}
        for d in SPOT_DISCOUNTS
    ]
    for d in SPOT_DYNAMICS:
        for name in ("change_probability_per_week", "log_change_std", "mean_reversion"):
            rows.append({"kind": name, "key": d.provider, "value": getattr(d, name), "source": d.source})
    return rows


def synthetic_history(seed: int = 0, start: str = "2023-01-04", weeks: int = 104) -> Any:
    """Weekly synthetic market as a polars DataFrame with exactly ``read_price_history``'s columns.

    Deterministic for a given ``(seed, start, weeks)``. Rows: every :data:`LIST_PRICES` instance
    type x its provider's :data:`REGIONS` x ``weeks`` weekly observations from ``start`` (UTC
    midnight), with on-demand and spot prices; ``zone`` is empty, ``source`` is ``synthetic``.
    """
    import numpy as np
    import polars as pl

    if weeks < 1:
        raise ValueError(f"weeks must be >= 1, got {weeks}")
    t0 = parse_utc(start)
    rng = np.random.default_rng(seed)
    catalog = load_catalog()
    discounts = {(d.provider, d.family): d.discount for d in SPOT_DISCOUNTS}
    dynamics = {d.provider: d for d in SPOT_DYNAMICS}
    times = [t0 + timedelta(weeks=k) for k in range(weeks)]
    cols: dict[str, list[Any]] = {
        k: []
        for k in (
            "observed_at",
            "provider",
            "region",
            "instance_type",
            "gpu_model",
            "gpu_count",
            "od",
            "spot",
        )
    }
    for lp in LIST_PRICES:
        entry = catalog.get(lp.provider, lp.instance_type)
        if entry is None:  # the parameter table and the catalog ship together; a test keeps them aligned
            raise ValueError(
                f"synthetic list price for {lp.provider}/{lp.instance_type} has no catalog entry"
            )
        dyn = dynamics[lp.provider]
        base_discount = discounts[(lp.provider, entry.family)]
        for region, uplift in REGIONS[lp.provider]:
            od = lp.ondemand_usd_hour * uplift
            changes = rng.random(weeks) < dyn.change_probability_per_week
            shocks = rng.normal(0.0, dyn.log_change_std, weeks)
            x = np.empty(weeks)
            # start from the walk's stationary spread so week 0 is not special
            spread = dyn.log_change_std / np.sqrt(max(1e-9, 1 - (1 - dyn.mean_reversion) ** 2))
            level = rng.normal(0.0, spread)
            for k in range(weeks):
                if k and changes[k]:
                    level = (1 - dyn.mean_reversion) * level + shocks[k]
                x[k] = level
            spot = np.clip(od * (1 - base_discount) * np.exp(x), od * SPOT_FLOOR, od * SPOT_CAP)
            n = weeks
            cols["observed_at"] += times
            cols["provider"] += [lp.provider] * n
            cols["region"] += [region] * n
            cols["instance_type"] += [lp.instance_type] * n
            cols["gpu_model"] += [entry.gpu_model] * n
            cols["gpu_count"] += [entry.gpu_count] * n
            cols["od"] += [round(od, 6)] * n
            cols["spot"] += [round(float(s), 6) for s in spot]
    df = pl.DataFrame(
        {
            "observed_at": pl.Series(cols["observed_at"], dtype=pl.Datetime("us", "UTC")),
            "provider": cols["provider"],
            "region": cols["region"],
            "zone": [""] * len(cols["provider"]),
            "instance_type": cols["instance_type"],
            "gpu_model": cols["gpu_model"],
            "gpu_count": pl.Series(cols["gpu_count"], dtype=pl.Int32),
            "ondemand_hour": pl.Series(cols["od"], dtype=pl.Float64),
            "spot_hour": pl.Series(cols["spot"], dtype=pl.Float64),
            "source": [SOURCE] * len(cols["provider"]),
        }
    )
    return df.sort("observed_at", maintain_order=True)


def write_history_csv(history: Any, path: str | Path) -> Path:
    """Write a history frame (``read_price_history`` columns) as a history CSV, atomically.

    Timestamps are ISO-8601 UTC; a null spot price is written empty.
    """
    import polars as pl

    out = history.with_columns(
        pl.col("observed_at").dt.convert_time_zone("UTC").dt.strftime("%Y-%m-%dT%H:%M:%S%.6f+00:00")
    ).select(*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)
    return atomic_write_bytes(path, out.write_csv().encode("utf-8"))


def write_synthetic_history(
    path: str | Path, seed: int = 0, start: str = "2023-01-04", weeks: int = 104
) -> Path:
    """Generate :func:`synthetic_history` and write it as a history CSV at ``path``."""
    return write_history_csv(synthetic_history(seed=seed, start=start, weeks=weeks), path)


def describe() -> str:
    """One line naming the generated market (for logs and the demo)."""
    n_types = len(LIST_PRICES)
    n_regions = sum(len(r) for r in REGIONS.values())
    return f"synthetic market: {n_types} instance types in {n_regions} regions (aws, gcp, azure), weekly"
