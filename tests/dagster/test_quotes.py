"""Dagster wiring of price discovery: definitions, materialization, blocking checks, the schedule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from assets.quotes import gpu_quotes, raw_price_quotes, raw_price_quotes_quality
from resources.prices import PriceFeedResource
from resources.warehouse import WarehouseResource
from sensors.price_poll import price_poll_schedule
from spotshift.clock import VirtualClock
from spotshift.errors import ConfigError
from spotshift.pricing.expectations import CHECKS
from spotshift.pricing.history import read_price_history
from spotshift.pricing.synthetic import synthetic_history, write_history_csv
from spotshift.warehouse import connect


def test_definitions_load_with_the_contract_names() -> None:
    import definitions

    repo = definitions.defs.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert {"raw_price_quotes", "gpu_quotes"} <= keys
    assert "price_poll_schedule" in {s.name for s in repo.schedule_defs}
    assert "price_poll_job" in {j.name for j in repo.get_all_jobs()}
    checks = {
        k.name
        for k in repo.asset_graph.asset_check_keys
        if k.asset_key.to_user_string() == "raw_price_quotes"
    }
    # the snapshot's quality checks, and the dbt source tests of raw.price_quotes (run with the marts)
    assert set(CHECKS) <= checks and all(c.startswith("source_") for c in checks - set(CHECKS))
    assert isinstance(definitions.defs.resources["prices"], PriceFeedResource)
    poll = repo.get_job("price_poll_job")
    assert "dbt_costs" not in poll.graph.node_dict  # a poll never runs dbt


def run_poll(home: Path, history: Path, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [raw_price_quotes, raw_price_quotes_quality, gpu_quotes],
        instance=instance,
        resources={
            "warehouse": WarehouseResource(database=str(home / "warehouse.duckdb")),
            "prices": PriceFeedResource(feed="replay", history_path=str(history)),
        },
        raise_on_error=False,
    )


def count(home: Path, table: str) -> int:
    with connect(home / "warehouse.duckdb", read_only=True) as con:
        return con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]


def test_materialize_poll_twice_and_register_regions(spotshift_home: Path) -> None:
    frame = synthetic_history(weeks=3)
    history = write_history_csv(frame, spotshift_home / "history.csv")
    VirtualClock.starting(frame["observed_at"].max() + timedelta(hours=1), 0).save()
    instance = dg.DagsterInstance.ephemeral()

    result = run_poll(spotshift_home, history, instance)
    assert result.success
    evaluations = result.get_asset_check_evaluations()
    assert {e.check_name for e in evaluations} == set(CHECKS) and all(e.passed for e in evaluations)
    raw_rows = count(spotshift_home, "raw.price_quotes")
    assert raw_rows > 0 and count(spotshift_home, "main.gpu_quotes") == raw_rows
    metadata = result.asset_materializations_for_node("gpu_quotes")[0].metadata
    assert metadata["rows_written"].value == raw_rows
    assert "H100-80GB" in metadata["cheapest_per_gpu_model"].value
    regions = set(instance.get_dynamic_partitions("regions"))
    assert {"aws/us-east-1", "gcp/us-central1", "azure/westeurope"} <= regions

    again = run_poll(spotshift_home, history, instance)  # unchanged market: same snapshot id, no rows
    assert again.success
    assert count(spotshift_home, "raw.price_quotes") == raw_rows
    assert count(spotshift_home, "main.gpu_quotes") == raw_rows
    meta = again.asset_materializations_for_node("raw_price_quotes")[0].metadata
    assert meta["new_snapshot"].value is False and meta["snapshot_id"].value.startswith("q-")


def test_bad_snapshot_is_blocked_before_gpu_quotes(spotshift_home: Path) -> None:
    frame = synthetic_history(weeks=2)
    last = frame["observed_at"].max()
    # a spot price above on-demand in the latest week
    bad = frame.with_columns(
        pl.when((pl.col("observed_at") == last) & (pl.col("instance_type") == "p5.48xlarge"))
        .then(pl.col("ondemand_hour") * 1.5)
        .otherwise(pl.col("spot_hour"))
        .alias("spot_hour")
    )
    history = write_history_csv(bad, spotshift_home / "bad.csv")
    assert read_price_history(history).height == frame.height
    VirtualClock.starting(last + timedelta(hours=1), 0).save()
    result = run_poll(spotshift_home, history, dg.DagsterInstance.ephemeral())
    failed = {e.check_name for e in result.get_asset_check_evaluations() if not e.passed}
    assert failed == {"quotes_spot_below_on_demand"}
    assert not result.asset_materializations_for_node("gpu_quotes")
    assert count(spotshift_home, "raw.price_quotes") > 0
    assert count(spotshift_home, "main.gpu_quotes") == 0


def test_stale_market_is_blocked(spotshift_home: Path) -> None:
    # weeks 1 and 8 only: at the end of week 7 the newest quote is six weeks old on the replay's clock
    frame = synthetic_history(weeks=8)
    first, last = frame["observed_at"].min(), frame["observed_at"].max()
    frame = frame.filter((pl.col("observed_at") == first) | (pl.col("observed_at") == last))
    history = write_history_csv(frame, spotshift_home / "h.csv")
    VirtualClock.starting(last - timedelta(days=1), 0).save()
    result = run_poll(spotshift_home, history, dg.DagsterInstance.ephemeral())
    failed = {e.check_name for e in result.get_asset_check_evaluations() if not e.passed}
    assert failed == {"quotes_fresh"} and not result.asset_materializations_for_node("gpu_quotes")


def test_replay_past_its_end_is_a_frozen_market_on_its_own_clock(spotshift_home: Path) -> None:
    frame = synthetic_history(weeks=2)
    history = write_history_csv(frame, spotshift_home / "h.csv")
    VirtualClock.starting(frame["observed_at"].max() + timedelta(days=700), 0).save()
    result = run_poll(spotshift_home, history, dg.DagsterInstance.ephemeral())
    assert all(e.passed for e in result.get_asset_check_evaluations())
    assert result.asset_materializations_for_node("gpu_quotes")


def test_schedule_evaluates_every_minute_with_a_stable_run_key() -> None:
    tick = datetime(2026, 11, 20, 12, 34, tzinfo=UTC)
    ctx = dg.build_schedule_context(instance=dg.DagsterInstance.ephemeral(), scheduled_execution_time=tick)
    data = price_poll_schedule.evaluate_tick(ctx)
    (request,) = data.run_requests
    assert request.run_key == "price-poll-20261120T1234Z"
    assert price_poll_schedule.cron_schedule == "* * * * *"
    assert price_poll_schedule.job_name == "price_poll_job"


def test_resource_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPOTSHIFT_PRICE_FEED", "azure")
    monkeypatch.setenv("SPOTSHIFT_AZURE_BASE_URL", "http://127.0.0.1:9/prices")
    for var in ("SPOTSHIFT_PRICES", "SPOTSHIFT_GCP_BASE_URL"):
        monkeypatch.delenv(var, raising=False)  # unset: from_env gives them their defaults
    resource = PriceFeedResource.from_env()
    # the definitions carry references to the variables (what the UI shows), not their values
    assert isinstance(resource.feed, dg.EnvVar) and resource.feed.env_var_name == "SPOTSHIFT_PRICE_FEED"
    assert isinstance(resource.history_path, dg.EnvVar)
    with dg.build_resources({"prices": resource}) as built:  # resolved as a run resolves them
        prices = built.prices
        assert prices.feed == "azure" and prices.open_feed().base_url == "http://127.0.0.1:9/prices"
        assert prices.config().quote_age_limit_hours == 72.0 and prices.history_path == ""
    monkeypatch.setenv("SPOTSHIFT_PRICE_FEED", "nope")
    with pytest.raises(ConfigError, match="price feed 'nope'"):  # a wrong value fails the load
        PriceFeedResource.from_env()


def test_check_results_carry_measured_values_as_numbers(spotshift_home: Path) -> None:
    """The UI plots check metadata: quote age in hours (not a row count), counts as ints, all numeric."""
    frame = synthetic_history(weeks=3)
    history = write_history_csv(frame, spotshift_home / "history.csv")
    second_week = sorted(frame["observed_at"].unique().to_list())[1]
    VirtualClock.starting(second_week + timedelta(hours=30), 0).save()  # inside the replayed history
    result = run_poll(spotshift_home, history, dg.DagsterInstance.ephemeral())
    assert result.success
    by_name = {e.check_name: e.metadata for e in result.get_asset_check_evaluations()}
    fresh = by_name["quotes_fresh"]
    assert isinstance(fresh["quote_age_hours"], dg.FloatMetadataValue)
    # the feed's newest quote is 30 virtual hours old at poll time
    assert fresh["quote_age_hours"].value == pytest.approx(30.0, abs=0.01)
    assert fresh["max_quote_age_hours"].value > fresh["quote_age_hours"].value
    assert isinstance(
        by_name["quotes_spot_below_on_demand"]["max_spot_to_on_demand_ratio"], dg.FloatMetadataValue
    )
    assert 0 < by_name["quotes_spot_below_on_demand"]["max_spot_to_on_demand_ratio"].value <= 1.01
    for name, meta in by_name.items():
        assert isinstance(meta["rows"], dg.IntMetadataValue), name
        assert isinstance(meta["unexpected_values"], dg.FloatMetadataValue), name
