"""Benchmark: ``mart_cost_metrics`` over millions of compute intervals, dbt-duckdb vs polars, full
and incremental.

1. Writes a warehouse with ``--rows`` compute intervals (10 million by default; 200,000 with
   ``--quick``) and proportional checkpoints, preemptions, transfers, migrations and quotes
   (:func:`tests.fixtures_costs.write_scaled_usage`, generated inside DuckDB).
2. dbt, full build: ``dbt build --select +mart_cost_metrics`` (models and seeds, no tests) in a
   child process: wall time, the child's peak RSS and the seconds of each model. The same command on an
   empty warehouse gives dbt's fixed start-up cost, reported separately.
3. polars, in its own child process: the same per-job metrics (effective and failed-spot
   GPU-hours, GPU-hours lost after the last checkpoint via ``join_asof``, cost per checkpoint up to
   the last checkpoint, amplification, recovery time, cost per million tokens) from Parquet
   exports of the raw tables (export time excluded, read time included): wall time, peak RSS.
4. The job-level values of both must agree (relative difference < 1e-9), else exit 1.
5. The next day: ``--new-rows`` more intervals (1 % of ``--rows`` by default: 100,000 at 10 M)
   with their checkpoints, preemptions, transfers, migrations and quotes, then the same dbt
   command, now incremental (the usage chain reads only the new raw rows): wall time and model
   seconds; polars recomputes everything from new exports and must agree again.

Writes ``bench/results/costs.json`` (``costs_quick.json`` with ``--quick``, ``costs_<rows>.json``
with another ``--rows``): one size per invocation, since 10 M rows take minutes on a shared box.
The dbt side does more than polars: it materializes every model upstream of the mart (staging with
de-duplication, price curves, the lookups, fct_gpu_usage with both savings baselines,
fct_preemptions, fct_data_transfer) as tables on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import Timer, peak_rss_mib, write_result  # noqa: E402

DBT_SELECT = [
    "build",
    "--select",
    "+mart_cost_metrics",
    "--resource-type",
    "model",
    "--resource-type",
    "seed",
]
RAW_EXPORTS = ("compute_usage", "checkpoints", "transfers", "preemptions", "migrations")
METRICS = (
    "effective_gpu_hours",
    "failed_spot_gpu_hours",
    "lost_gpu_hours",
    "training_cost_per_checkpoint",
    "data_transfer_amplification",
    "preemption_recovery_time",
    "cost_per_million_tokens",
)


def polars_metrics(parquet_dir: Path) -> dict[tuple[str, str], float]:
    """The job-scope rows of mart_cost_metrics, computed with polars from the raw tables."""
    import polars as pl

    d = parquet_dir
    # a key written twice keeps the version dbt's staging keeps (latest end / first commit / latest
    # recovery, then the later write): the rows are in write order, keep="last" after a stable sort
    usage = (
        pl.scan_parquet(d / "compute_usage.parquet")
        .filter(pl.col("ended_at") == pl.col("ended_at").max().over("usage_id"))
        .unique(subset="usage_id", keep="last", maintain_order=True)
        .with_columns(
            wall_us=(pl.col("ended_at") - pl.col("started_at")).dt.total_microseconds().clip(lower_bound=0),
            failed=(pl.col("market") == "spot") & pl.col("ended_in_preemption"),
        )
        .with_columns(
            # billed hours: usd / price when both are known, else the interval's length
            hours=pl.when(pl.col("usd").is_not_null() & (pl.col("price_usd_hour") > 0))
            .then(pl.col("usd") / pl.col("price_usd_hour"))
            .otherwise(pl.col("wall_us") / 3.6e9),
            usd=pl.coalesce("usd", pl.col("price_usd_hour") * pl.col("wall_us").clip(lower_bound=0) / 3.6e9),
        )
        .filter(pl.col("usd").is_not_null())  # unpriced intervals stay out of the marts
        .with_columns(gpu_hours=pl.col("hours") * pl.col("gpu_count"))
    )
    ckpt = (
        pl.scan_parquet(d / "checkpoints.parquet")
        .filter(pl.col("created_at") == pl.col("created_at").min().over(["job", "checkpoint_id"]))
        .unique(subset=["job", "checkpoint_id"], keep="first", maintain_order=True)
    )
    # a transfer written twice: the latest start, then the later write (as dbt's staging)
    transfers = (
        pl.scan_parquet(d / "transfers.parquet")
        .filter(pl.col("transfer_id").is_not_null() & pl.col("started_at").is_not_null())
        .sort("started_at", maintain_order=True)
        .unique(subset="transfer_id", keep="last", maintain_order=True)
    )
    preempt = (
        pl.scan_parquet(d / "preemptions.parquet")
        .sort("recovered_at", descending=True, nulls_last=True, maintain_order=True)
        .unique(subset="notice_id", keep="first", maintain_order=True)
    )
    migrations = pl.scan_parquet(d / "migrations.parquet")

    last = (
        usage.sort("ended_at")
        .join_asof(
            ckpt.select("job", pl.col("created_at").alias("last_ckpt")).sort("last_ckpt"),
            left_on="ended_at",
            right_on="last_ckpt",
            by="job",
            strategy="backward",
            check_sortedness=False,  # both sides are sorted on the time key, hence within each job
        )
        .with_columns(
            lost_hours=pl.when(~pl.col("ended_in_preemption"))
            .then(0.0)
            .when((pl.col("last_ckpt") >= pl.col("started_at")) & (pl.col("wall_us") > 0))
            .then(
                pl.col("hours")
                * (pl.col("ended_at") - pl.col("last_ckpt")).dt.total_microseconds()
                / pl.col("wall_us")
            )
            .otherwise(pl.col("hours"))
        )
    )
    ck = ckpt.group_by("job").agg(
        checkpoints=pl.len(), last_at=pl.col("created_at").max(), tokens_last=pl.col("tokens").max()
    )
    mig_runs = migrations.group_by("run_id").agg(mjob=pl.col("job").min())
    tr = (
        transfers.join(mig_runs, on="run_id", how="left")
        .with_columns(
            job=pl.when(pl.col("kind") == "checkpoint").then(pl.col("entity")).otherwise(pl.col("mjob"))
        )
        .filter(pl.col("job").is_not_null())
    )
    per_job = last.group_by("job").agg(
        effective_gpu_hours=pl.col("gpu_hours").sum(),
        failed_spot_gpu_hours=pl.col("gpu_hours").filter(pl.col("failed")).sum(),
        lost_gpu_hours=(pl.col("lost_hours") * pl.col("gpu_count")).sum(),
        compute_usd=pl.col("usd").sum(),
        tokens=pl.col("tokens").sum(),
    )
    spend_to_ckpt = (
        usage.join(ck, on="job")
        .with_columns(
            part=pl.when(pl.col("ended_at") <= pl.col("last_at"))
            .then(pl.col("usd"))
            .when(pl.col("started_at") >= pl.col("last_at"))
            .then(0.0)
            .otherwise(
                pl.col("usd")
                * (pl.col("last_at") - pl.col("started_at")).dt.total_microseconds()
                / (pl.col("ended_at") - pl.col("started_at")).dt.total_microseconds()
            )
        )
        .group_by("job")
        .agg(spend=pl.col("part").sum())
    )
    egress_to_ckpt = (
        tr.join(ck, on="job")
        .filter(pl.col("started_at") <= pl.col("last_at"))
        .group_by("job")
        .agg(egress_ckpt=pl.col("egress_usd").sum())
    )
    egress = tr.group_by("job").agg(
        egress=pl.col("egress_usd").sum(),
        sent=pl.col("bytes_sent").sum(),
        changed=pl.col("bytes_changed").sum(),
    )
    rec = (
        preempt.filter(pl.col("recovery_s").is_not_null() & pl.col("job").is_not_null())
        .group_by("job")
        .agg(recovery=pl.col("recovery_s").mean())
    )
    out = (
        per_job.join(ck, on="job", how="left")
        .join(spend_to_ckpt, on="job", how="left")
        .join(egress_to_ckpt, on="job", how="left")
        .join(egress, on="job", how="left")
        .join(rec, on="job", how="left")
        .with_columns(
            training_cost_per_checkpoint=(pl.col("spend") + pl.col("egress_ckpt").fill_null(0))
            / pl.col("checkpoints"),
            data_transfer_amplification=pl.col("sent") / pl.col("changed"),
            cost_per_million_tokens=(pl.col("compute_usd") + pl.col("egress").fill_null(0))
            / (pl.coalesce("tokens_last", "tokens") / 1e6),
            preemption_recovery_time=pl.col("recovery"),
        )
        .collect()
    )
    result: dict[tuple[str, str], float] = {}
    for row in out.iter_rows(named=True):
        for m in METRICS:
            if row[m] is not None:
                result[(row["job"], m)] = float(row[m])
    return result


def _polars_child(parquet_dir: str) -> None:
    t0 = time.perf_counter()
    metrics = polars_metrics(Path(parquet_dir))
    seconds = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_mib": peak_rss_mib(),
                "metrics": [[j, m, v] for (j, m), v in metrics.items()],
            }
        )
    )


def export_raw(warehouse: Path, parquet_dir: Path) -> None:
    """The raw tables polars reads, as Parquet files in write order."""
    import duckdb

    parquet_dir.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        for table in RAW_EXPORTS:
            con.execute(f"COPY raw.{table} TO '{parquet_dir / (table + '.parquet')}' (FORMAT parquet)")
    finally:
        con.close()


def mart_job_metrics(warehouse: Path) -> dict[tuple[str, str], float]:
    """The job-scope rows of ``mart_cost_metrics`` that polars computes too."""
    import duckdb

    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        rows = con.execute(
            "SELECT scope, metric, value FROM mart_cost_metrics WHERE scope_kind = 'job'"
        ).fetchall()
    finally:
        con.close()
    return {(j, m): v for j, m, v in rows if m in METRICS}


def worst_difference(dbt: dict[tuple[str, str], float], pol: dict[tuple[str, str], float]) -> float:
    """Largest relative difference between the two sides (inf when a key is on one side only)."""
    worst = 0.0
    for key in dbt.keys() | pol.keys():
        a, b = dbt.get(key), pol.get(key)
        if a is None or b is None:
            print(f"only one side has {key}: dbt={a} polars={b}", file=sys.stderr)
            return float("inf")
        worst = max(worst, abs(a - b) / max(abs(a), abs(b), 1e-12))
    return worst


def compare_with_polars(warehouse: Path, workdir: Path) -> float:
    """Worst relative difference between the warehouse's mart and polars over its raw tables."""
    export_raw(warehouse, workdir / "parquet")
    return worst_difference(mart_job_metrics(warehouse), polars_metrics(workdir / "parquet"))


def _polars_run(parquet: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--polars-child", str(parquet)], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process and its waited-for children so far (dbt runs
    in-process by default, in a child with ``SPOTSHIFT_DBT_SUBPROCESS=1``)."""
    usage = map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return sum(r.ru_utime + r.ru_stime for r in usage)


class _Cpu:
    """``with _Cpu() as c: <work>``; ``c.seconds``: the CPU time it took (a fairer comparison than
    wall time when the machine is shared: a process waiting for a core uses none)."""

    def __enter__(self) -> _Cpu:
        self.c0 = _cpu_s()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = _cpu_s() - self.c0


def _dbt(warehouse: Path, *, child: bool) -> tuple[Any, float]:
    """``dbt DBT_SELECT`` on ``warehouse`` through the library's run_dbt: in a fresh dbt process
    (``child``; what a cold command line pays) or in this one (dbt already imported, as in a
    long-running worker); returns the run and its CPU seconds."""
    from spotshift.costs.dbt import run_dbt

    os.environ["SPOTSHIFT_DBT_SUBPROCESS"] = "1" if child else "0"
    with _Cpu() as cpu:
        run = run_dbt(DBT_SELECT, warehouse=warehouse)
    return run, cpu.seconds


def _figures(run: Any, cpu_s: float) -> dict[str, float]:
    return {
        "seconds": round(run.seconds, 2),
        "cpu_seconds": round(cpu_s, 2),
        "load_1m": round(os.getloadavg()[0], 2),
    }


def _model_seconds(run) -> dict[str, float]:
    return {
        r["unique_id"].split(".")[-1]: round(r["execution_time"], 2)
        for r in run.results
        if r["unique_id"].startswith("model.")
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200,000 rows (smoke test)")
    parser.add_argument("--rows", type=int, help="compute intervals (default 10,000,000)")
    parser.add_argument("--new-rows", type=int, help="intervals of the next day (default 1 %% of --rows)")
    parser.add_argument("--jobs", type=int, default=2000, help="training jobs the rows belong to")
    parser.add_argument("--polars-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.polars_child:
        _polars_child(args.polars_child)
        return 0
    rows = args.rows or (200_000 if args.quick else 10_000_000)
    new_rows = args.new_rows if args.new_rows is not None else max(args.jobs, rows // 100)
    if rows < args.jobs or new_rows < args.jobs:
        print(f"--rows and --new-rows must be at least --jobs ({args.jobs})", file=sys.stderr)
        return 2
    os.environ.setdefault("DO_NOT_TRACK", "1")
    with tempfile.TemporaryDirectory(prefix="bench-costs-") as tmp:
        result = _run(Path(tmp), rows, new_rows, args.jobs)
    result["quick"] = bool(args.quick)
    name = "costs_quick" if args.quick else ("costs" if rows == 10_000_000 else f"costs_{rows}")
    write_result(name, result)
    if not result["agree"]:
        print(f"dbt and polars disagree: {result['max_relative_difference']}", file=sys.stderr)
        return 1
    return 0


def _startup(empty: Path) -> dict[str, dict[str, float]]:
    """dbt's fixed cost: the same command on an empty warehouse, partial-parse state warm (each
    first run parses fully: the state is kept per warehouse path), in a fresh dbt process and in
    this one."""
    out = {}
    for name, child in (("child_process", True), ("in_process", False)):
        _dbt(empty, child=child)
        out[name] = _figures(*_dbt(empty, child=child))
        print(f"dbt on an empty warehouse, {name}: {out[name]}")
    return out


def _daily(warehouse: Path, tmpd: Path, pol2: dict) -> tuple[dict, float]:
    """The next day's incremental run, in this process and (from a copy of the same starting
    warehouse, at the same path) in a fresh dbt process; both must agree with polars."""
    backup = tmpd / "before_daily.duckdb"
    shutil.copyfile(warehouse, backup)
    polars = {(j, m): v for j, m, v in pol2["metrics"]}
    out, worst = {}, 0.0
    for name, child in (("in_process", False), ("child_process", True)):
        if child:
            shutil.copyfile(backup, warehouse)
        run, cpu_s = _dbt(warehouse, child=child)
        models = _model_seconds(run)
        out[name] = {**_figures(run, cpu_s), "models_total_seconds": round(sum(models.values()), 2)}
        out[name]["model_seconds"] = models
        worst = max(worst, worst_difference(mart_job_metrics(warehouse), polars))
        print(f"next day, {name}: {run.seconds:.1f}s, {cpu_s:.1f} CPU-s (models {sum(models.values()):.1f}s)")
    backup.unlink()
    return out, worst


def _run(tmpd: Path, rows: int, new_rows: int, jobs: int) -> dict:
    from spotshift.warehouse import connect
    from tests.fixtures_costs import write_scaled_usage

    empty, warehouse = tmpd / "empty.duckdb", tmpd / "warehouse.duckdb"
    with Timer() as t_gen, connect(warehouse) as con:
        counts = write_scaled_usage(con, rows, jobs=jobs)
    export_raw(warehouse, tmpd / "day1")
    warehouse_mib = warehouse.stat().st_size / 2**20
    print(
        f"generated {counts['compute_usage']:,} intervals in {t_gen.seconds:.1f}s ({warehouse_mib:,.0f} MiB)"
    )
    startup = _startup(empty)
    full, full_cpu = _dbt(warehouse, child=True)  # its own process: its peak RSS
    dbt_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"dbt +mart_cost_metrics, full: {full.seconds:.1f}s, peak {dbt_peak:,.0f} MiB")
    with _Cpu() as pol_cpu:
        pol = _polars_run(tmpd / "day1")
    print(f"polars: {pol['seconds']:.1f}s, peak {pol['peak_rss_mib']:,.0f} MiB")
    worst_full = worst_difference(mart_job_metrics(warehouse), {(j, m): v for j, m, v in pol["metrics"]})
    shutil.rmtree(tmpd / "day1")

    with Timer() as t_gen2, connect(warehouse) as con:
        after = write_scaled_usage(con, new_rows, jobs=jobs, start_row=counts["compute_usage"])
    export_raw(warehouse, tmpd / "day2")
    pol2 = _polars_run(tmpd / "day2")
    daily, worst_inc = _daily(warehouse, tmpd, pol2)
    worst = max(worst_full, worst_inc)
    return {
        "rows": counts["compute_usage"],
        "jobs": jobs,
        "inputs": counts,
        "warehouse_mib": round(warehouse_mib, 1),
        "generate_s": round(t_gen.seconds, 2),
        "dbt": {
            "command": "dbt " + " ".join(DBT_SELECT),
            "seconds": round(full.seconds, 2),
            "cpu_seconds": round(full_cpu, 2),
            "startup_empty_warehouse": startup,
            "peak_rss_mib": round(dbt_peak, 1),
            "model_seconds": _model_seconds(full),
            "rows_per_second": round(counts["compute_usage"] / full.seconds),
        },
        "polars": {
            "seconds": round(pol["seconds"], 2),
            "peak_rss_mib": round(pol["peak_rss_mib"], 1),
            "cpu_seconds": round(pol_cpu.seconds, 2),
            "rows_per_second": round(counts["compute_usage"] / pol["seconds"]),
            "version": __import__("polars").__version__,
        },
        "dbt_over_polars_time": round(full.seconds / pol["seconds"], 2),
        "dbt_over_polars_cpu": round(full_cpu / pol_cpu.seconds, 2),
        "incremental": {
            "new_rows": after["compute_usage"] - counts["compute_usage"],
            "inputs_after": after,
            "generate_s": round(t_gen2.seconds, 2),
            **daily,
            "polars_full_recompute_seconds": round(pol2["seconds"], 2),
        },
        "metrics_compared": len(pol["metrics"]) + len(pol2["metrics"]),
        "max_relative_difference": worst,
        "agree": worst < 1e-9,
        # the box is shared: the 1/5/15-minute load at the end of the run, next to the figures
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


if __name__ == "__main__":
    sys.exit(main())
