"""The dbt_costs marts on a fixture warehouse: dbt build passes (data and unit tests), hand-computed
values for the hand-built job, FOCUS 1.2 validity of the view and of both export formats."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from spotshift.costs.dbt import DbtRun
from spotshift.costs.focus import (
    FOCUS_VIEW,
    MANDATORY_COLUMNS,
    focus_problems,
)
from spotshift.costs.focus_export import export_focus, read_relation
from spotshift.costs.marts import REPORT_MARTS, marts_state
from spotshift.warehouse import append_rows, connect, first_row
from spotshift.warehouse_schema import RAW_TABLES

from .conftest import HAND_JOB


def _metrics(con: duckdb.DuckDBPyConnection, scope: str) -> dict[str, tuple[float, bool]]:
    rows = con.execute(
        "SELECT metric, value, alert FROM mart_cost_metrics WHERE scope = ?", [scope]
    ).fetchall()
    return {m: (v, a) for m, v, a in rows}


def test_dbt_build_runs_data_and_unit_tests_and_all_pass(built_warehouse: tuple[Path, DbtRun]) -> None:
    _, run = built_warehouse
    assert run.returncode == 0 and run.failures() == []
    kinds = [r["unique_id"].split(".")[0] for r in run.results]
    assert kinds.count("unit_test") >= 6
    assert kinds.count("test") >= 60
    assert kinds.count("model") >= 15
    assert all(r["status"] in ("pass", "success") for r in run.results)


def test_hand_built_job_metrics_equal_hand_computed_values(built_warehouse: tuple[Path, DbtRun]) -> None:
    with connect(built_warehouse[0], read_only=True) as con:
        m = _metrics(con, HAND_JOB)
    # 2 h + 2 h on 8 GPUs, the first a spot attempt that ended in a preemption
    assert m["effective_gpu_hours"] == (pytest.approx(32.0), False)
    assert m["failed_spot_gpu_hours"] == (pytest.approx(16.0), False)
    # preempted at 06:00, last checkpoint 05:00: 1 h x 8 GPUs lost
    assert m["lost_gpu_hours"] == (pytest.approx(8.0), False)
    # ($16 + $20 compute + $0.12 egress) up to the last checkpoint / 2 checkpoints
    assert m["training_cost_per_checkpoint"][0] == pytest.approx(36.12 / 2)
    # (5 GB + 1 GB sent) / (1 GB + 1 GB changed) = 3.0: not above the threshold -> no alert
    assert m["data_transfer_amplification"] == (pytest.approx(3.0), False)
    assert m["preemption_recovery_time"][0] == pytest.approx(1830.0)
    # $36.12 over the 3e9 tokens of the last checkpoint
    assert m["cost_per_million_tokens"][0] == pytest.approx(36.12 / 3000)


def test_hand_built_transfers_flag_amplification_per_transfer(built_warehouse: tuple[Path, DbtRun]) -> None:
    with connect(built_warehouse[0], read_only=True) as con:
        rows = dict(
            con.execute(
                "SELECT transfer_id, amplification_alert FROM fct_data_transfer WHERE transfer_id LIKE 'ht%'"
            ).fetchall()
        )
        job = con.execute(
            "SELECT DISTINCT job FROM fct_data_transfer WHERE transfer_id LIKE 'ht%'"
        ).fetchall()
    assert rows == {"ht1": True, "ht2": False}  # 5.0x full copy alerts, 1.0x delta does not
    assert job == [(HAND_JOB,)]  # the dataset transfer is attributed through the migration's run_id


def test_hand_built_savings_against_labelled_baselines(built_warehouse: tuple[Path, DbtRun]) -> None:
    with connect(built_warehouse[0], read_only=True) as con:
        row = first_row(
            con,
            """SELECT actual_usd, on_demand_usd, first_spot_bound_usd, stay_first_spot_usd,
                      saving_vs_on_demand_usd, saving_vs_stay_first_spot_usd, gap_to_first_spot_bound_usd,
                      productive_gpu_hours, first_spot_location, preemptions, migrations,
                      stay_first_spot_preemptions, stay_first_spot_basis
               FROM mart_savings WHERE job = ?""",
            [HAND_JOB],
        )
        mig = first_row(
            con,
            "SELECT trigger, realized_net_savings_usd, paid_off, egress_usd FROM fct_migrations WHERE job = ?",
            [HAND_JOB],
        )
        unlabelled = first_row(con, "SELECT count(*) FROM mart_savings WHERE stay_first_spot_basis IS NULL")[
            0
        ]
    (actual, on_demand, bound, stay, save_od, save_stay, gap_bound, productive, first_loc, preemptions,
     migrations, stay_preemptions, basis) = row  # fmt: skip
    assert actual == pytest.approx(36.12)
    # productive time: 1 h of h1 at list $24 + 2 h of h2 at list $32
    assert on_demand == pytest.approx(24.0 + 64.0)
    # the bound = gcp/tiny-1 never preempted: $1/GPU-h over h1, then $2/GPU-h (after the 06:00 quote) over h2
    assert bound == pytest.approx(1.0 * 8 * 1 + 2.0 * 8 * 2)
    # staying pays for the outage of its trace: the simulator's $64 against its never-preempted $52
    # (tests/unit/costs/test_baselines.py works them out by hand)
    assert stay == pytest.approx(40.0 * 64.0 / 52.0)
    assert (stay_preemptions, basis) == (
        1,
        "simulated with 1 preemption(s) of gcp/tiny-1 (trace gcp_tiny-1.json from 2024-05-01 04:00 UTC)",
    )
    assert save_od == pytest.approx(88.0 - 36.12)
    assert save_stay == pytest.approx(stay - 36.12)
    assert gap_bound == pytest.approx(40.0 - 36.12)
    assert productive == pytest.approx(24.0)
    assert (first_loc, preemptions, migrations) == ("gcp/tiny-1", 1, 1)
    assert unlabelled == 0  # every job says how its stay-on-first-spot baseline was made, or why not
    # a preemption recovery was not a choice: no realized savings
    assert mig == ("preemption", None, None, pytest.approx(0.12))


def test_focus_view_has_every_mandatory_column_and_valid_values(built_warehouse: tuple[Path, DbtRun]) -> None:
    with connect(built_warehouse[0], read_only=True) as con:
        columns = [d[0] for d in con.execute(f"SELECT * FROM {FOCUS_VIEW} LIMIT 0").description]
        assert set(MANDATORY_COLUMNS) <= set(columns)
        assert "PricingCategory" in columns
        assert focus_problems(con) == []
        by_market = dict(
            con.execute(
                f"SELECT DISTINCT x_market, PricingCategory FROM {FOCUS_VIEW} WHERE x_workload = 'training' "
                "AND ServiceCategory = 'Compute'"
            ).fetchall()
        )
        assert by_market == {"spot": "Dynamic", "on_demand": "Standard"}
        hand = con.execute(
            f"""SELECT ServiceCategory, count(*), sum(BilledCost)::DOUBLE, min(ProviderName)
                FROM {FOCUS_VIEW} WHERE x_job = ? GROUP BY 1 ORDER BY 1""",
            [HAND_JOB],
        ).fetchall()
        assert hand == [
            ("Compute", 2, pytest.approx(36.0), "Amazon Web Services"),
            ("Networking", 2, pytest.approx(0.12), "Google Cloud"),
        ]
        # the fixture crosses a month boundary: usage split into two billing periods, costs preserved
        periods = first_row(con, f"SELECT count(DISTINCT BillingPeriodStart) FROM {FOCUS_VIEW}")[0]
        assert periods >= 2
        compute = first_row(
            con, f"SELECT sum(BilledCost)::DOUBLE FROM {FOCUS_VIEW} WHERE x_usage_id IS NOT NULL"
        )[0]
        assert compute == pytest.approx(first_row(con, "SELECT sum(usd) FROM fct_gpu_usage")[0])


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_focus_export_round_trips_as_valid_focus(warehouse_copy: Path, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"focus{suffix}"
    result = export_focus(out, warehouse_copy)
    assert result.rows > 0 and result.currency == "USD"
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    rel = read_relation(out)
    assert focus_problems(con, rel) == []
    cols = [d[0] for d in con.execute(f"SELECT * FROM {rel} LIMIT 0").description]
    assert set(MANDATORY_COLUMNS) <= set(cols)
    stats = first_row(
        con,
        f"""SELECT count(*), min(BilledCost::DOUBLE), count(*) FILTER (WHERE BillingCurrency <> 'USD'),
                   count(*) FILTER (WHERE ChargePeriodStart::TIMESTAMPTZ >= ChargePeriodEnd::TIMESTAMPTZ)
            FROM {rel}""",
    )
    assert stats[0] == result.rows and stats[1] >= 0 and stats[2:] == (0, 0)
    if suffix == ".csv":
        first = out.read_text().splitlines()[1]
        assert "Z," in first  # ISO 8601 UTC timestamps
    assert not list(tmp_path.glob(".*.tmp"))  # atomic: no temp file left behind


def test_focus_problems_catches_broken_rows(warehouse_copy: Path) -> None:
    with connect(warehouse_copy) as con:
        con.execute(
            f"""CREATE TABLE broken AS SELECT * REPLACE (
                    CASE WHEN x_usage_id IS NOT NULL THEN -1.0 ELSE BilledCost END AS BilledCost,
                    'Compute Stuff' AS ServiceCategory,
                    'usd' AS BillingCurrency,
                    ChargePeriodEnd AS ChargePeriodStart)
                FROM {FOCUS_VIEW}"""
        )
        con.execute("ALTER TABLE broken DROP COLUMN ChargeClass")
        con.execute("ALTER TABLE broken ADD COLUMN MyColumn VARCHAR")
        problems = focus_problems(con, "broken", "1.2")
    text = "\n".join(problems)
    for expected in (
        "missing FOCUS 1.2 column ChargeClass",
        "column MyColumn is neither a FOCUS 1.2 column nor an x_ custom column",
        "ServiceCategory not an allowed value",
        "BillingCurrency not an ISO 4217 code",
        "ChargePeriodStart not before ChargePeriodEnd",
        "BilledCost negative on a usage or purchase row",
    ):
        assert expected in text
    assert focus_problems(con=duckdb.connect(str(warehouse_copy), read_only=True)) == []


def test_marts_state_fresh_then_stale_after_new_raw_facts(warehouse_copy: Path) -> None:
    assert marts_state(warehouse_copy) == ("fresh", "marts match the raw facts")
    with connect(warehouse_copy) as con:
        append_rows(con, "raw.decisions", [{"decision_id": "new", "job": HAND_JOB, "action": "stay"}])
    state, reason = marts_state(warehouse_copy)
    assert state == "stale" and "raw.decisions" in reason


def test_build_state_records_every_raw_table(built_warehouse: tuple[Path, DbtRun]) -> None:
    with connect(built_warehouse[0], read_only=True) as con:
        tables = {r[0] for r in con.execute("SELECT raw_table FROM mart_build_state").fetchall()}
        present = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert tables == set(RAW_TABLES)
    assert set(REPORT_MARTS) <= present
