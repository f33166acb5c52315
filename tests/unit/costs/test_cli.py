"""``spotshift report`` and ``spotshift focus export|check``: output, JSON, building, exit codes."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from spotshift.cli import main
from spotshift.costs.report import CostReport
from spotshift.costs.report_text import format_text
from spotshift.warehouse import append_rows, connect
from tests.fixtures_costs import generate_facts, write_facts

from .conftest import HAND_JOB


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_report_prints_savings_metrics_and_focus_totals(warehouse_copy: Path, capsys) -> None:
    code, out, err = run(capsys, "report", "--warehouse", str(warehouse_copy))
    assert code == 0, err
    assert "dbt build" not in err  # fresh marts are read as they are
    for text in (
        "Savings per job",
        HAND_JOB,
        "llama-7b-ft",
        "effective_gpu_hours",
        "FOCUS 1.2",
        "always on demand",
    ):
        assert text in out
    assert "data_transfer_amplification !" in out  # resnet-152 moves full copies


def test_report_json_is_one_object_with_the_tables(warehouse_copy: Path, capsys) -> None:
    code, out, _ = run(capsys, "report", "--json", "--no-build", "--warehouse", str(warehouse_copy))
    assert code == 0
    assert len(out.strip().splitlines()) == 1
    doc = json.loads(out)
    assert doc["built"] is False
    hand = next(s for s in doc["savings"] if s["job"] == HAND_JOB)
    assert hand["actual_usd"] == pytest.approx(36.12)
    assert hand["on_demand_usd"] == pytest.approx(88.0)
    metrics = {(m["scope"], m["metric"]): m for m in doc["metrics"]}
    assert metrics[(HAND_JOB, "effective_gpu_hours")]["value"] == pytest.approx(32.0)
    assert doc["focus"]["currency"] == "USD" and doc["focus"]["rows"] > 0
    assert doc["totals"]["jobs"] == 4


def test_report_out_writes_markdown_and_plots(warehouse_copy: Path, tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "report"
    code, out, err = run(
        capsys, "report", "--no-build", "--warehouse", str(warehouse_copy), "--out", str(out_dir)
    )
    assert code == 0, err
    md = (out_dir / "cost_report.md").read_text()
    assert "![cumulative cost](cumulative_cost.png)" in md and "## Cost metrics" in md
    for png in ("price_history.png", "cumulative_cost.png"):
        assert (out_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_report_builds_missing_marts_from_raw_facts(spotshift_home: Path, capsys) -> None:
    # what `make demo` leaves behind: raw facts, no marts yet -> report runs dbt build first
    with connect(spotshift_home / "warehouse.duckdb") as con:
        write_facts(con, generate_facts(seed=3))
    code, out, err = run(capsys, "report")
    assert code == 0, err
    assert "dbt build: rebuilt" in err
    assert "llama-7b-ft" in out
    code, _, err = run(capsys, "report", "--json")
    assert code == 0 and "dbt build" not in err  # now fresh


def test_report_errors_exit_2(spotshift_home: Path, capsys) -> None:
    code, _, err = run(capsys, "report")
    assert code == 2 and "does not exist" in err and err.count("\n") == 1
    with connect(spotshift_home / "warehouse.duckdb"):
        pass  # raw schema only, no marts
    code, _, err = run(capsys, "report", "--no-build")
    assert code == 2 and "build the marts first" in err


def test_focus_export_and_check(warehouse_copy: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "focus.csv"
    code, stdout, err = run(capsys, "focus", "export", str(out), "--warehouse", str(warehouse_copy))
    assert code == 0, err
    assert "FOCUS 1.2/1.3 rows" in stdout and out.is_file()
    assert "FocusVersion 1.3" in stdout and (tmp_path / "focus.csv.metadata.json").is_file()
    code, stdout, _ = run(capsys, "focus", "check", str(out), "--json")
    assert code == 0 and json.loads(stdout)["valid"] is True
    lines = out.read_text().splitlines()
    header = lines[0].split(",")
    broken = tmp_path / "broken.csv"
    i = header.index("BillingCurrency")
    rows = [",".join(header)] + [
        ",".join("usd" if k == i else v for k, v in enumerate(line.split(","))) for line in lines[1:2]
    ]
    broken.write_text("\n".join(rows) + "\n")
    code, stdout, _ = run(capsys, "focus", "check", str(broken))
    assert code == 1 and "BillingCurrency" in stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["focus", "export", "out.xlsx"], "unknown extension '.xlsx'"),
        (["focus", "export", "out"], "unknown extension"),
        (["focus", "export", "out.csv", "--warehouse", "/nonexistent/w.duckdb"], "does not exist"),
        (["focus", "export", "/nonexistent-dir/out.csv"], "directory"),
        (["focus", "check", "missing.parquet"], "no such file"),
    ],
)
def test_focus_errors_exit_2(spotshift_home: Path, capsys, argv: list[str], message: str) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err and err.startswith("spotshift: error:")


def test_focus_export_without_marts_exits_2(spotshift_home: Path, tmp_path: Path, capsys) -> None:
    with connect(spotshift_home / "warehouse.duckdb"):
        pass
    code, _, err = run(capsys, "focus", "export", str(tmp_path / "f.parquet"))
    assert code == 2 and "focus_cost_and_usage" in err and "build the marts first" in err
    assert not (tmp_path / "f.parquet").exists()


def test_command_module_imports_only_the_standard_library() -> None:
    code = (
        "import sys, spotshift.costs.commands, spotshift.cli; "
        "heavy = [m for m in ('duckdb', 'dbt', 'polars', 'matplotlib', 'pyarrow', 'dagster') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_focus_check_reports_wrong_types_in_a_text_csv(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("BilledCost,ChargePeriodStart,ChargePeriodEnd\nabc,not a date,2024-04-01T00:00:00Z\n")
    code, out, _ = run(capsys, "focus", "check", str(bad))
    assert code == 1
    assert "BilledCost not a number: 1 row(s)" in out
    assert "ChargePeriodStart not an ISO 8601 datetime: 1 row(s)" in out
    assert "missing FOCUS 1.2 column BillingAccountId" in out


@pytest.mark.slow
def test_report_lists_unpriced_intervals_and_data_problems_instead_of_failing(
    warehouse_copy: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # what `spotshift train --location aws/us-east-1` leaves while the feed quotes GCP only, and a
    # fact with a negative cost (a data test finds it): the report still runs and says both
    from datetime import datetime

    base = dict(provider="aws", region="nowhere-1", job="own-job", steps=30, run_id="cli:train")
    with connect(warehouse_copy) as con:
        append_rows(
            con,
            "raw.compute_usage",
            [
                dict(
                    base,
                    usage_id="unpriced-1",
                    started_at=datetime(2024, 5, 2, 1),
                    ended_at=datetime(2024, 5, 2, 2),
                ),
                dict(
                    base,
                    usage_id="negative-1",
                    started_at=datetime(2024, 5, 2, 3),
                    ended_at=datetime(2024, 5, 2, 4),
                    market="spot",
                    gpu_count=8,
                    price_usd_hour=1.0,
                    usd=-5.0,
                ),
            ],
        )
    # the dbt build shows its progress on stderr (forced, as at a terminal); stdout stays JSON
    monkeypatch.setenv("SPOTSHIFT_PROGRESS", "always")
    code, out, err = run(capsys, "report", "--json", "--warehouse", str(warehouse_copy))
    assert code == 0, err
    assert "dbt build: rebuilt" in err and "dbt build" in err and "nodes" in err
    doc = json.loads(out)
    assert doc["unpriced"][0]["intervals"] == 1 and doc["unpriced"][0]["location"] == "aws/nowhere-1"
    assert "non_negative_fct_gpu_usage_usd: 1 row(s)" in doc["data_warnings"]
    fields = {f.name for f in dataclasses.fields(CostReport)}
    report_text = format_text(
        CostReport(**{k: v for k, v in doc.items() if k in fields} | {"built_at": None})
    )
    assert "Data warnings:" in report_text and "non_negative_fct_gpu_usage_usd: 1 row(s)" in report_text
    code, out, err = run(capsys, "report", "--no-build", "--warehouse", str(warehouse_copy))
    assert code == 0 and "nodes" not in err  # nothing built, nothing to show
    assert "Unpriced: 1 compute interval(s)" in out
    assert (
        "own-job in aws/nowhere-1: 1 interval(s), 30 steps — no quote was ever polled for aws/nowhere-1"
        in out
    )
    # the FOCUS export carries only priced intervals
    code, out, err = run(
        capsys, "focus", "export", str(warehouse_copy.with_name("f.csv")), "--warehouse", str(warehouse_copy)
    )
    assert code == 0, err
    assert "unpriced-1" not in warehouse_copy.with_name("f.csv").read_text()
