"""run_dbt runs dbt inside the calling process (dbtRunner): the node results come back without
run_results.json, the process's environment and working directory are as before, the warehouse's
file lock is released for other processes, and a failing node is a DbtBuildError as with a child."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spotshift.costs.dbt import DbtBuildError, run_dbt

SELECT = ["run", "--select", "stg_spotshift__migrations"]


def test_in_process_run_returns_results_and_releases_the_warehouse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPOTSHIFT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SPOTSHIFT_DBT_SUBPROCESS", raising=False)
    monkeypatch.delenv("SPOTSHIFT_WAREHOUSE", raising=False)
    warehouse = tmp_path / "w.duckdb"
    cwd = os.getcwd()
    run = run_dbt(SELECT, warehouse=warehouse)
    assert [(r["unique_id"], r["status"]) for r in run.results] == [
        ("model.dbt_costs.stg_spotshift__migrations", "success")
    ]
    assert run.results[0]["execution_time"] > 0
    assert os.getcwd() == cwd and "SPOTSHIFT_WAREHOUSE" not in os.environ
    # another process can write the warehouse: dbt-duckdb's DuckDB instance was closed
    writer = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import duckdb; duckdb.connect({str(warehouse)!r}).execute('create table t(x int)')",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert writer.returncode == 0, writer.stderr


def test_in_process_failure_names_the_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPOTSHIFT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SPOTSHIFT_DBT_SUBPROCESS", raising=False)
    # a memory limit DuckDB rejects makes every node fail at connect time, not dbt's parse
    monkeypatch.setenv("SPOTSHIFT_DUCKDB_MEMORY_LIMIT", "not-a-size")
    with pytest.raises(DbtBuildError, match="dbt run --select stg_spotshift__migrations on .* failed"):
        run_dbt(SELECT, warehouse=tmp_path / "w.duckdb")
    assert os.environ["SPOTSHIFT_DUCKDB_MEMORY_LIMIT"] == "not-a-size"
