"""The benchmark's polars implementation of the job metrics agrees with the dbt marts on the
fixture warehouse (an independent check of the SQL, and proof the benchmark compares like with like)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import duckdb
import pytest

from tests.conftest import REPO


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_costs", REPO / "bench" / "bench_costs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_polars_metrics_equal_mart_cost_metrics(warehouse_copy: Path, tmp_path: Path) -> None:
    bench = _bench_module()
    con = duckdb.connect(str(warehouse_copy), read_only=True)
    for table in ("compute_usage", "checkpoints", "transfers", "preemptions", "migrations"):
        con.execute(f"COPY raw.{table} TO '{tmp_path / (table + '.parquet')}' (FORMAT parquet)")
    sql = {
        (j, m): v
        for j, m, v in con.execute(
            "SELECT scope, metric, value FROM mart_cost_metrics WHERE scope_kind = 'job'"
        ).fetchall()
        if m in bench.METRICS
    }
    con.close()
    pol = bench.polars_metrics(tmp_path)
    assert sql.keys() == pol.keys()
    assert len(sql) >= 20
    for key, value in sql.items():
        assert pol[key] == pytest.approx(value, rel=1e-9), key
