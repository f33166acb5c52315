"""The synthetic market: same shape as read_price_history, sourced parameters, plausible moves."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from spotshift.pricing.catalog import load_catalog
from spotshift.pricing.history import read_price_history
from spotshift.pricing.synthetic import (
    LIST_PRICES,
    REGIONS,
    SPOT_DISCOUNTS,
    parameter_table,
    synthetic_history,
    write_synthetic_history,
)


def test_same_columns_and_dtypes_as_read_price_history(tmp_path: Path) -> None:
    df = synthetic_history(weeks=8)
    path = write_synthetic_history(tmp_path / "h.csv", weeks=8)
    back = read_price_history(path)
    assert df.schema == back.schema
    assert back.equals(df)


def test_matches_the_real_file_schema(gcp_history: Path) -> None:
    real = read_price_history(gcp_history)
    assert synthetic_history(weeks=2).schema == real.schema


def test_deterministic_per_seed() -> None:
    assert synthetic_history(seed=3, weeks=10).equals(synthetic_history(seed=3, weeks=10))
    assert not synthetic_history(seed=3, weeks=10).equals(synthetic_history(seed=4, weeks=10))


def test_market_shape() -> None:
    df = synthetic_history()
    assert set(df["source"]) == {"synthetic"}
    assert set(df["provider"]) == {"aws", "gcp", "azure"}
    for provider, regions in REGIONS.items():
        assert set(df.filter(pl.col("provider") == provider)["region"]) == {r for r, _ in regions}
        assert len(regions) >= 3
    assert df["observed_at"].n_unique() == 104
    assert (df["spot_hour"] <= df["ondemand_hour"]).all()
    assert (df["spot_hour"] > 0).all()
    # spot moves week to week (AWS every week; GCP rarely, as in the real history)
    moves = (
        df.sort("observed_at")
        .with_columns(pl.col("spot_hour").diff().over("provider", "region", "instance_type").alias("d"))
        .group_by("provider")
        .agg((pl.col("d").abs() > 1e-9).mean().alias("moved"))
    )
    moved = dict(moves.iter_rows())
    assert moved["aws"] > 0.9 and 0 < moved["gcp"] < 0.2 and 0.2 < moved["azure"] < 0.8
    # typical spot discount is near the documented one
    ratio = (
        df.filter(pl.col("provider") == "aws")["spot_hour"]
        / df.filter(pl.col("provider") == "aws")["ondemand_hour"]
    )
    assert 0.3 < ratio.mean() < 0.55


def test_parameters_are_sourced_and_consistent_with_the_catalog() -> None:
    catalog = load_catalog()
    families = {(d.provider, d.family) for d in SPOT_DISCOUNTS}
    for lp in LIST_PRICES:
        entry = catalog.get(lp.provider, lp.instance_type)
        assert entry is not None, lp
        assert (lp.provider, entry.family) in families, lp
    rows = parameter_table()
    assert rows and all(r["source"].startswith("https://") for r in rows)
    assert {r["kind"] for r in rows} >= {"list_price", "region_uplift", "spot_discount", "log_change_std"}
