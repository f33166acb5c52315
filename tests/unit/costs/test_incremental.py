"""Incremental builds of the usage chain equal a full refresh, row for row, after a day of new facts
that includes late-arriving and rewritten rows; the polars cross-check agrees on both paths."""

from __future__ import annotations

import importlib.util
import math
import shutil
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest

from spotshift.costs.dbt import run_dbt
from spotshift.warehouse import append_rows, connect
from tests.conftest import REPO
from tests.fixtures_costs import generate_facts, write_facts, write_scaled_usage

SELECT = ["--select", "+mart_cost_metrics", "--resource-type", "model", "--resource-type", "seed"]
#: models whose rows an incremental build must leave exactly as a full refresh writes them
CHAIN = {
    "stg_spotshift__compute_usage": "usage_id",
    "stg_spotshift__checkpoints": "job, checkpoint_id",
    "stg_spotshift__transfers": "transfer_id",
    "stg_spotshift__preemptions": "notice_id",
    "int_job_first_spot": "job",
    "int_usage_lookups": "usage_id",
    "fct_gpu_usage": "usage_id",
    "fct_preemptions": "notice_id",
    "fct_data_transfer": "transfer_id",
    "mart_cost_metrics": "scope_kind, scope, metric",
}


def _rows(path: Path, table: str, order: str) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(f"SELECT * EXCLUDE (_raw_rowid) FROM {table} ORDER BY {order}").fetchall()
    except duckdb.BinderException:
        return con.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
    finally:
        con.close()


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)  # sums in another order
    return a == b


def _differences(left: Path, right: Path) -> list[str]:
    out = []
    for table, order in CHAIN.items():
        a, b = _rows(left, table, order), _rows(right, table, order)
        if len(a) != len(b):
            out.append(f"{table}: {len(a)} rows vs {len(b)}")
            continue
        for ra, rb in zip(a, b, strict=True):
            if len(ra) != len(rb) or not all(_same(x, y) for x, y in zip(ra, rb, strict=True)):
                out.append(f"{table}: {ra} != {rb}")
                break
    return out


def _build(path: Path, *extra: str) -> None:
    run_dbt(["build", *SELECT, *extra], warehouse=path)


def _row(con: duckdb.DuckDBPyConnection, sql: str) -> dict:
    cur = con.execute(sql + " LIMIT 1")
    names = [d[0] for d in cur.description]
    return dict(zip(names, cur.fetchall()[0], strict=True))


def _run_dataset_transfer(con: duckdb.DuckDBPyConnection) -> None:
    """Day one: a dataset transfer of run late-run, whose migration is not written yet (no job)."""
    t = _row(con, "SELECT * FROM raw.transfers ORDER BY transfer_id")
    t.update(transfer_id="late-run-ds", kind="dataset", entity="ds-late", run_id="late-run")
    append_rows(con, "raw.transfers", [t])


def _late_and_rewritten(con: duckdb.DuckDBPyConnection) -> None:
    """Facts a day later that reach back in time: a spot interval before job-1's first one, a
    rewrite of an interval (later end, other cost), a rewrite that loses its price, a checkpoint in
    the middle of job-2's history, a cut-over migration of job-3 in the past (its run made a
    dataset transfer on day one, which now belongs to job-3), a rewritten transfer, a re-delivered
    quote poll in the middle of a price curve, a preemption's recovery recorded late."""
    first = _row(con, "SELECT * FROM raw.compute_usage WHERE job = 'job-1' ORDER BY started_at")
    early = {
        **first,
        "usage_id": "late-spot",
        "market": "spot",
        "provider": "gcp",
        "region": "europe-west4",
        "instance_type": "a2-highgpu-8g",
        "started_at": first["started_at"] - timedelta(hours=5),
        "ended_at": first["started_at"] - timedelta(hours=3),
        "usd": 20.0,
        "price_usd_hour": 10.0,
    }
    rewrite = _row(con, "SELECT * FROM raw.compute_usage WHERE job = 'job-4' ORDER BY started_at OFFSET 20")
    rewrite.update(ended_at=rewrite["ended_at"] + timedelta(minutes=20), usd=rewrite["usd"] * 1.5)
    unpriced = _row(con, "SELECT * FROM raw.compute_usage WHERE job = 'job-5' ORDER BY started_at OFFSET 10")
    unpriced.update(ended_at=unpriced["ended_at"] + timedelta(minutes=5), usd=None, price_usd_hour=None)
    append_rows(con, "raw.compute_usage", [early, rewrite, unpriced])

    j2 = _row(
        con,
        "SELECT started_at, ended_at FROM raw.compute_usage WHERE job = 'job-2' AND ended_in_preemption "
        "ORDER BY started_at OFFSET 3",
    )
    ckpt_at = j2["started_at"] + (j2["ended_at"] - j2["started_at"]) * 0.9
    append_rows(
        con,
        "raw.checkpoints",
        [
            dict(
                checkpoint_id="late-ckpt",
                job="job-2",
                step=1,
                tokens=10**9,
                kind="emergency",
                location="aws/us-east-1",
                bytes=10**9,
                created_at=ckpt_at,
            )
        ],
    )
    j3 = _row(
        con, "SELECT started_at FROM raw.compute_usage WHERE job = 'job-3' ORDER BY started_at OFFSET 15"
    )
    append_rows(
        con,
        "raw.migrations",
        [
            dict(
                migration_id="late-mig",
                job="job-3",
                trigger="price",
                from_location="aws/us-east-1",
                to_location="gcp/us-central1",
                started_at=j3["started_at"] - timedelta(minutes=40),
                ended_at=j3["started_at"] - timedelta(minutes=30),
                status="cut_over",
                run_id="late-run",
            )
        ],
    )
    moved = _row(con, "SELECT * FROM raw.transfers WHERE kind = 'checkpoint' ORDER BY transfer_id OFFSET 7")
    moved.update(
        started_at=moved["started_at"] + timedelta(seconds=30),
        bytes_sent=moved["bytes_sent"] * 2,
        egress_usd=moved["egress_usd"] * 2,
        transfer_amplification=None,
    )
    append_rows(con, "raw.transfers", [moved])
    requote = _row(
        con, "SELECT * FROM raw.price_quotes WHERE market = 'spot' ORDER BY polled_at DESC OFFSET 40"
    )
    requote.update(
        polled_at=requote["polled_at"] + timedelta(minutes=1), price_usd_hour=requote["price_usd_hour"] * 0.5
    )
    append_rows(con, "raw.price_quotes", [requote])
    recovered = _row(con, "SELECT * FROM raw.preemptions WHERE job = 'job-6' ORDER BY noticed_at")
    recovered.update(recovered_at=recovered["recovered_at"] + timedelta(minutes=1), recovery_s=120.0)
    append_rows(con, "raw.preemptions", [recovered])


@pytest.fixture(scope="module")
def day_two(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(incrementally built, fully rebuilt) warehouses after a day of normal, late and rewritten facts."""
    tmp = tmp_path_factory.mktemp("incremental")
    inc = tmp / "incremental.duckdb"
    with connect(inc) as con:
        write_facts(con, generate_facts(seed=7))
        write_scaled_usage(con, 4000, jobs=8)
        _run_dataset_transfer(con)
    _build(inc)  # day one: full (no watermarks yet)
    with connect(inc) as con:
        write_scaled_usage(con, 400, jobs=8, start_row=4000)
        _late_and_rewritten(con)
    full = tmp / "full.duckdb"
    shutil.copy(inc, full)
    _build(inc)
    _build(full, "--full-refresh")
    return inc, full


def test_incremental_build_equals_full_refresh_row_for_row(day_two: tuple[Path, Path]) -> None:
    inc, full = day_two
    assert _differences(inc, full) == []


def test_incremental_build_takes_late_and_rewritten_rows(day_two: tuple[Path, Path]) -> None:
    inc, _ = day_two
    con = duckdb.connect(str(inc), read_only=True)
    try:
        # the build read deltas: only the new raw rows, and whole jobs only where history changed
        assert (
            con.execute("SELECT bool_and(watermarked), min(from_row) FROM int_raw_delta_bounds").fetchone()[1]
            > 0
        )
        since = dict(
            con.execute("SELECT job, since = '-infinity'::timestamp FROM int_usage_changes").fetchall()
        )
        assert since["job-1"] and since["job-4"] and since["job-5"]  # first spot moved; rewritten intervals
        assert not since["job-0"] and not since["job-2"]
        # a spot interval that arrived late and earlier than job-1's first one moves the baseline
        assert con.execute(
            "SELECT first_spot_usage_id FROM int_job_first_spot WHERE job = 'job-1'"
        ).fetchone() == ("late-spot",)
        locations = {
            r[0]
            for r in con.execute(
                "SELECT DISTINCT first_spot_location FROM fct_gpu_usage WHERE job = 'job-1'"
            ).fetchall()
        }
        assert locations == {"gcp/europe-west4"}
        # a rewritten interval that lost its price leaves fct_gpu_usage
        assert con.execute(
            "SELECT count(*) FROM stg_spotshift__compute_usage s JOIN fct_gpu_usage f USING (usage_id) WHERE s.usd IS NULL"
        ).fetchone() == (0,)
        assert (
            con.execute("SELECT count(*) FROM stg_spotshift__compute_usage WHERE usd IS NULL").fetchone()[0]
            >= 1
        )
        # the late checkpoint is job-2's last one before the preempted interval's end
        assert (
            con.execute(
                "SELECT count(*) FROM fct_gpu_usage f JOIN stg_spotshift__checkpoints c "
                "ON c.checkpoint_id = 'late-ckpt' AND f.last_checkpoint_at = c.created_at"
            ).fetchone()[0]
            >= 1
        )
        assert (
            con.execute("SELECT count(*) FROM fct_gpu_usage WHERE migration_id = 'late-mig'").fetchone()[0]
            >= 1
        )
        # the day-one transfer of the late migration's run now belongs to its job
        assert con.execute(
            "SELECT job FROM fct_data_transfer WHERE transfer_id = 'late-run-ds'"
        ).fetchone() == ("job-3",)
        # the preemption's late recovery is the recorded one
        assert con.execute(
            "SELECT count(*) FROM fct_preemptions WHERE job = 'job-6' AND recovery_source = 'recorded' AND recovery_s = 120"
        ).fetchone() == (1,)
    finally:
        con.close()


def test_polars_cross_check_agrees_with_the_incremental_build(
    day_two: tuple[Path, Path], tmp_path: Path
) -> None:
    spec = importlib.util.spec_from_file_location("bench_costs", REPO / "bench" / "bench_costs.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    inc, _ = day_two
    assert bench.compare_with_polars(inc, tmp_path) < 1e-9
