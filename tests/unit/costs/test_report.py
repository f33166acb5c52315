"""What the cost report says and plots adds up: the migration line, the effective prices, the time axis."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import duckdb
import pytest

from spotshift.costs.dbt import DbtRun
from spotshift.costs.plots import cost_series, price_series
from spotshift.costs.report import read_report
from spotshift.costs.report_markdown import render_markdown
from spotshift.costs.report_text import format_text, migration_breakdown
from spotshift.migration.cutover import migration_row
from spotshift.migration.plan import MovePlan
from spotshift.warehouse import connect


def _parts_add_up(line: str) -> tuple[int, list[int]]:
    head, _, tail = line.partition(" = ")
    total = int(re.search(r"(\d+) migrations?", head).group(1))  # type: ignore[union-attr]
    parts = [int(p.split()[0]) for p in tail.split(" + ")] if tail else []
    return total, parts


def test_migration_line_counts_every_migration_under_a_named_trigger() -> None:
    mg = {
        "migrations": 5,
        "by_trigger": [
            {"trigger": "place", "migrations": 1, "cut_over": 1, "rolled_back": 0, "other": 0},
            {"trigger": "price", "migrations": 2, "cut_over": 1, "rolled_back": 1, "other": 0},
            {"trigger": "preemption", "migrations": 2, "cut_over": 2, "rolled_back": 0, "other": 0},
        ],
    }
    line = migration_breakdown(mg)
    assert line == (
        "5 migrations = 1 initial placement + 2 price moves (1 rolled back) + 2 preemption recoveries"
    )
    total, parts = _parts_add_up(line)
    assert sum(parts) == total


def test_report_migration_line_adds_up_on_the_fixture_warehouse(built_warehouse: tuple[Path, DbtRun]) -> None:
    with connect(built_warehouse[0], read_only=True) as con:
        report = read_report(con)
        by_trigger = con.execute("SELECT trigger, count(*) FROM fct_migrations GROUP BY 1").fetchall()
    text = format_text(report)
    (line,) = [ln for ln in text.splitlines() if ln.startswith("Migrations: ")]
    total, parts = _parts_add_up(line.removeprefix("Migrations: ").split(";")[0])
    assert total == sum(n for _, n in by_trigger) and sum(parts) == total
    assert "price moves (" in line and "rolled back)" in line  # fixture price moves include rollbacks
    md = render_markdown(report, {"price_history.png": "p.png", "cumulative_cost.png": "c.png"})
    assert migration_breakdown(report.migrations) in md


def test_a_rolled_back_price_move_keeps_its_trigger() -> None:
    plan = MovePlan(
        job="j",
        trigger="price",
        from_location="gcp/us-central1",
        to_location="aws/us-east-1",
        market="spot",
        instance_type="p4d.24xlarge",
        price_usd_hour=10.0,
    )
    at = datetime(2024, 5, 1)
    row = migration_row(plan, status="rolled_back", started_at=at, ended_at=at, run_id="r")
    assert (row["trigger"], row["status"]) == ("price", "rolled_back")


def _plot_tables() -> duckdb.DuckDBPyConnection:
    """The relations the plots read, by hand: one 8-GPU job over two days, quotes of two locations
    whose raw prices and effective prices rank differently, and a transfer dated a year later."""
    con = duckdb.connect()
    con.execute(
        """CREATE TABLE fct_gpu_usage AS SELECT * FROM (VALUES
             ('u1', 'j', 'gcp/a', 'A100-40GB', 8, TIMESTAMP '2024-05-01 00:00', TIMESTAMP '2024-05-01 12:00',
              16.0, 100.0, 300.0, 80.0),
             ('u2', 'j', 'aws/b', 'A100-40GB', 8, TIMESTAMP '2024-05-01 12:00', TIMESTAMP '2024-05-02 12:00',
              16.0, 150.0, 400.0, 120.0))
           AS t(usage_id, job, location, gpu_model, gpu_count, started_at, ended_at, gpu_hours, usd,
                on_demand_usd, first_spot_usd)"""
    )
    con.execute(
        """CREATE TABLE fct_data_transfer AS SELECT * FROM (VALUES
             ('t1', 'j', TIMESTAMP '2025-06-01 00:00', 2.5))
           AS t(transfer_id, job, started_at, egress_usd)"""
    )
    con.execute(
        """CREATE TABLE mart_savings AS SELECT 'j' AS job, 500.0 AS stay_first_spot_usd,
           200.0 AS first_spot_bound_usd"""
    )
    con.execute(
        """CREATE TABLE fct_migrations AS SELECT * FROM (VALUES
             ('m1', 'price', 'cut_over', 'gcp/a', 'aws/b', TIMESTAMP '2024-05-01 12:00'))
           AS t(migration_id, trigger, status, from_location, to_location, ended_at)"""
    )
    # gcp/a: cheaper list price, but a slow network makes its effective GPU-hour dearer
    con.execute(
        """CREATE TABLE stg_spotshift__price_quotes AS SELECT * FROM (VALUES
             ('gcp/a', TIMESTAMP '2024-05-01 00:00', 'spot', 'A100-40GB', 8, 16.0, 4.0),
             ('gcp/a', TIMESTAMP '2024-05-01 00:00', 'spot', 'A100-40GB', 8, 24.0, 3.5),
             ('aws/b', TIMESTAMP '2024-05-01 00:00', 'spot', 'A100-40GB', 8, 20.0, 2.5),
             ('aws/b', TIMESTAMP '2024-05-01 00:00', 'spot', 'A100-40GB', 1, 1.0, 1.0))
           AS t(location, polled_at, market, gpu_model, gpu_count, price_usd_hour, effective_gpu_hour_usd)"""
    )
    return con


def test_price_plot_shows_the_effective_price_placement_ranks() -> None:
    model, _, series = price_series(_plot_tables())
    assert model == "A100-40GB"
    # the cheapest effective GPU-hour of the job's 8-GPU instances, not price / GPUs (2.0 and 2.5)
    assert series["gcp/a"][1] == [3.5] and series["aws/b"][1] == [2.5]


def test_cost_plot_spans_the_jobs_time_and_prices_the_preemptions() -> None:
    rows = cost_series(_plot_tables())
    times = [r[0] for r in rows]
    assert min(times) >= datetime(2024, 5, 1) and max(times) <= datetime(2024, 5, 2, 13)  # not 2025
    final = rows[-1]
    assert final[1] == pytest.approx(100.0 + 150.0 + 2.5)  # the stray transfer still counts
    assert final[2] == pytest.approx(700.0)
    assert final[3] == pytest.approx(200.0 * 500.0 / 200.0)  # bound x the job's preemption factor
    assert final[4] == pytest.approx(200.0)


def test_the_report_lists_cutovers_with_cost_per_million_tokens_before_and_after(
    built_warehouse: tuple[Path, DbtRun],
) -> None:
    with connect(built_warehouse[0], read_only=True) as con:
        report = read_report(con)
        rows = con.execute(
            "SELECT endpoint, status, stages_passed, rolled_back_at_stage, usd_per_mtok_before, usd_per_mtok_after "
            "FROM fct_cutovers ORDER BY endpoint"
        ).fetchall()
    assert [r[:4] for r in rows] == [("chat", "promoted", 1, None), ("chat2", "rolled_back", 0, "live-25")]
    assert rows[0][4] == pytest.approx(0.35) and rows[0][5] == pytest.approx(0.21)
    text = format_text(report)
    assert "Inference cutovers: 2" in text
    assert (
        "chat gcp/us-central1 -> aws/us-east-1: promoted after 1 stage(s); USD per million tokens 0.35"
        in text
    )
    assert "chat2 gcp/us-central1 -> aws/us-east-1: rolled_back at live-25" in text
    md = render_markdown(report, {"price_history.png": "p.png", "cumulative_cost.png": "c.png"})
    assert (
        "## Inference cutovers" in md
        and "| chat2 | gcp/us-central1 | aws/us-east-1 | rolled_back at live-25 |" in md
    )
