"""Dagster wiring of the cost analytics: dbt_costs models as assets downstream of the raw-fact
writers, the cost_report asset (Markdown + PNG plots) and its daily schedule."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from tests.fixtures_costs import write_fixture_warehouse


@pytest.fixture(scope="module")
def repo():
    import definitions

    return definitions.defs.get_repository_def()


def _parents(repo, key: str) -> set[str]:
    return {k.to_user_string() for k in repo.asset_graph.get(dg.AssetKey(key)).parent_keys}


def test_definitions_load_with_dbt_models_as_assets(repo) -> None:
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    for model in (
        "stg_spotshift__compute_usage",
        "fct_gpu_usage",
        "fct_data_transfer",
        "fct_migrations",
        "mart_cost_metrics",
        "mart_savings",
        "focus_cost_and_usage",
        "cost_report",
    ):
        assert model in keys
    assert "cost_report_schedule" in {s.name for s in repo.schedule_defs}
    assert "dbt" in repo.get_top_level_resources() and "warehouse" in repo.get_top_level_resources()


def test_dbt_sources_sit_downstream_of_the_assets_that_write_them(repo) -> None:
    assert _parents(repo, "stg_spotshift__price_quotes") == {"raw_price_quotes"}
    # the incremental staging tables also read the bookkeeping of which raw rows are new
    assert _parents(repo, "stg_spotshift__transfers") == {
        "dataset_replicas",
        "checkpoint_replicas",
        "int_raw_delta_bounds",
    }
    assert _parents(repo, "stg_spotshift__checkpoints") == {"checkpoints", "int_raw_delta_bounds"}
    assert _parents(repo, "stg_spotshift__decisions") == {"placement_plan"}
    assert _parents(repo, "stg_spotshift__compute_usage") == {"retrain_run", "int_raw_delta_bounds"}
    assert "retrain_run" in _parents(repo, "int_raw_delta_bounds")
    assert _parents(repo, "stg_spotshift__shadow_validations") == {"shadow_validation"}
    assert {"mart_cost_metrics", "mart_savings", "focus_cost_and_usage"} <= _parents(repo, "cost_report")
    checks = {c.to_user_string() for c in repo.asset_graph.asset_check_keys}
    assert "focus_cost_and_usage:focus_1_2_conformance" in checks
    assert any(c.startswith("mart_cost_metrics:") for c in checks)  # dbt data tests are asset checks
    # dbt source tests are checks of the asset that writes the source (not observations)
    assert any(c.startswith("raw_price_quotes:source_not_null_spotshift_price_quotes") for c in checks)
    assert any(c.startswith("retrain_run:source_") for c in checks)


def test_source_test_checks_run_with_the_cost_report_job(repo) -> None:
    job = repo.get_job("cost_report_job")
    selected = {k.to_user_string() for k in job.asset_layer.asset_graph.asset_check_keys}
    assert any(k.startswith("raw_price_quotes:source_") for k in selected)


def test_cost_report_schedule_runs_dbt_and_the_report_daily(repo) -> None:
    schedule = repo.get_schedule_def("cost_report_schedule")
    assert schedule.cron_schedule == "0 6 * * *"
    job = repo.get_job(schedule.job_name)
    selected = {k.to_user_string() for k in job.asset_layer.selected_asset_keys}
    assert {
        "cost_report",
        "mart_cost_metrics",
        "focus_cost_and_usage",
        "stg_spotshift__transfers",
    } <= selected
    with dg.build_schedule_context(scheduled_execution_time=None) as ctx:
        result = schedule.evaluate_tick(ctx)
    assert len(result.run_requests) == 1


@pytest.mark.slow
def test_materialize_dbt_assets_and_cost_report_into_temp_home(spotshift_home: Path) -> None:
    import assets.costs as costs
    from resources.dbt import dbt_resource
    from resources.warehouse import WarehouseResource

    warehouse = spotshift_home / "warehouse.duckdb"
    write_fixture_warehouse(warehouse)
    result = dg.materialize(
        [costs.dbt_costs, costs.cost_report, costs.focus_1_2_conformance],
        resources={"dbt": dbt_resource(), "warehouse": WarehouseResource(database=str(warehouse))},
    )
    assert result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert {"fct_gpu_usage", "mart_cost_metrics", "mart_savings", "cost_report"} <= materialized
    checks = result.get_asset_check_evaluations()
    assert checks and all(c.passed for c in checks)
    assert any(c.check_name == "focus_1_2_conformance" for c in checks)

    (report,) = [
        e.materialization
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey("cost_report")
    ]
    md = report.metadata["report"].value
    assert "## Savings per job" in md and md.count("data:image/png;base64,") == 2
    assert "Bound, not a baseline: first spot never preempted" in md
    meta = report.metadata
    usd_keys = [k for k in meta if k.endswith("_usd")]
    assert {"actual_usd", "on_demand_usd", "bound_first_spot_never_preempted_usd"} <= set(usd_keys)
    for key in usd_keys:  # USD to the cent, numbers the UI can plot
        assert isinstance(meta[key], dg.FloatMetadataValue) and meta[key].value == round(
            meta[key].value, 2
        ), key
    pct = meta["saving_vs_on_demand_pct"].value  # a percentage, not a bare fraction
    assert isinstance(meta["saving_vs_on_demand_pct"], dg.FloatMetadataValue) and 1.0 < abs(pct) <= 100.0
    assert "saving_vs_on_demand" not in meta
    reports = spotshift_home / "reports"
    for name in ("price_history.png", "cumulative_cost.png"):
        path = reports / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert report.metadata[name.replace(".png", "_png")].value == str(path)
    assert (reports / "cost_report.md").is_file()
    assert report.metadata["actual_usd"].value > 0
    assert 0 < report.metadata["saving_vs_on_demand_pct"].value < 100
