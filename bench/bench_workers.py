"""Migration chains per hour through Celery workers per region: 1 vs 2 workers on the region's queue.

The production shape on one machine: a Dagster instance on PostgreSQL (a scratch database on
127.0.0.1:5432), the dagster-celery executor on RabbitMQ (127.0.0.1:5672), real worker processes
(``spotshift workers start``) and real trainers. A chain is ``migration_job`` for a job's first
placement: plan (control queue), fingerprint, dataset sync, checkpoint carry, live trainer started,
cut over (the region's queue), each step a Celery task. ``--chains`` jobs, each with its own small
dataset, are submitted at once (one orchestrating process per run, as the run launcher starts
them side by side; each has loaded the code location before the clock starts) and timed until every run has finished; then the same with two workers
on the region's queue, in the same script. Workers are started and ready (code location loaded)
before the clock starts. The live trainers are stopped between the two rounds.

``--quick``: 2 chains (the suite does not run this benchmark: it needs PostgreSQL and RabbitMQ).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from _common import Timer, write_result  # noqa: E402

REGION = "aws/us-east-1"
PG = "postgresql://postgres@127.0.0.1:5432"


def _admin(sql: str) -> None:
    import psycopg2

    con = psycopg2.connect(f"{PG}/test")
    con.autocommit = True
    try:
        con.cursor().execute(sql)
    finally:
        con.close()


def _declare(home: Path, names: list[str]) -> None:
    """A small dataset and a paced job (0.05 s per step, checkpoint every 10) per name."""
    from spotshift.jobs import TrainingJob, add_job
    from spotshift.sync.datasets import Dataset, add_dataset

    for name in names:
        data = home / "data" / name
        data.mkdir(parents=True)
        for i in range(3):
            (data / f"part-{i}.txt").write_text(("chain benchmark shard " * 400 + f"{name}{i}") * 10)
        add_dataset(Dataset(name=f"{name}-data", source=str(data), location=REGION, min_chunk=4096,
                            avg_chunk=16384, max_chunk=65536))  # fmt: skip
        add_job(TrainingJob(name=name, dataset=f"{name}-data", total_steps=100000, work_hours=100000.0,
                            checkpoint_every_steps=10, gpu_model="A100", gpu_count=8, min_topology_score=7.0,
                            allowed_locations=["aws/*"], submitted_at=datetime(2025, 3, 3, tzinfo=UTC).isoformat(),
                            deadline_hours=1e6))  # fmt: skip


def _wait_ready(workers: list[Any], timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    for w in workers:
        while "ready." not in Path(w.log).read_text(errors="replace"):
            if time.monotonic() > deadline or not w.alive:
                raise SystemExit(f"worker {w.name} not ready: see {w.log}")
            time.sleep(0.5)


def _delete_queues() -> None:
    """Remove this run's queues from the shared broker (Celery declares them durable)."""
    from kombu import Connection

    from spotshift.workers.settings import load_settings

    settings = load_settings()
    with Connection(settings.broker_url()) as conn:
        for name in (REGION, settings.control_queue):
            conn.default_channel.queue_delete(settings.queue_name(name))


def _chain_process(name: str) -> int:
    """One chain's orchestrating process, as the run launcher starts one per run: load the code
    location, say ``ready``, wait for ``go`` on stdin, run ``migration_job`` for the job's placement."""
    import dagster as dg
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    from spotshift.migration import contract
    from spotshift.migration.plan import MovePlan

    repo = ReconstructableRepository.for_module("definitions", "defs", working_directory=str(ROOT))
    job = repo.get_reconstructable_job(contract.MIGRATION_JOB)
    job.get_definition()  # the code location, loaded before the clock starts
    plan = MovePlan(job=name, trigger="place", to_location=REGION, market="spot",
                    instance_type="p4d.24xlarge", price_usd_hour=10.0, gpu_model="A100-40GB",
                    gpu_count=8, snapshot_id="bench", run_key=f"{name}:-->{REGION}:bench")  # fmt: skip
    instance = dg.DagsterInstance.get()
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        result = dg.execute_job(job, instance=instance, run_config=contract.move_run_config(plan.to_dict()),
                                tags=plan.tags(), raise_on_error=False)  # fmt: skip
    finally:
        instance.dispose()
    return 0 if result.success else 1


def _round(home: Path, workers_per_region: int, chains: int) -> dict[str, Any]:
    import subprocess

    from spotshift.training.backend import open_backend
    from spotshift.workers import processes

    names = [f"w{workers_per_region}-{i}" for i in range(chains)]
    _declare(home, names)
    workers = processes.start_workers([REGION], per_region=workers_per_region, code_dir=ROOT)
    runs: list[Any] = []
    try:
        for n in names:
            runs.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--chain", n],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    cwd=ROOT,
                )
            )
        for run in runs:
            if run.stdout.readline().strip() != "ready":
                raise SystemExit("a chain's process did not start")
        _wait_ready(workers)
        load = os.getloadavg()[0]
        with Timer() as t:
            for run in runs:
                run.stdin.write("go\n")
                run.stdin.flush()
            codes = [run.wait() for run in runs]
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
        processes.stop_workers(timeout_s=30)
        backend = open_backend("local")
        for info in backend.list():
            if info.alive:
                backend.stop(info.name, reason="benchmark round over", timeout_s=60)
    if any(codes):
        raise SystemExit(f"chains failed with {workers_per_region} worker(s): exit codes {codes}")
    return {
        "workers_on_region_queue": workers_per_region,
        "chains": chains,
        "seconds": round(t.seconds, 1),
        "chains_per_hour": round(chains / t.seconds * 3600, 1),
        "load_average_1m_at_start": round(load, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 chains per round")
    parser.add_argument("--chains", type=int, default=4, help="placement chains per round (default 4)")
    parser.add_argument("--chain", help=argparse.SUPPRESS)  # internal: one chain's orchestrating process
    args = parser.parse_args()
    if args.chain:
        return _chain_process(args.chain)
    chains = 2 if args.quick else args.chains
    db = f"spotshift_bench_{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        os.environ.update(
            SPOTSHIFT_HOME=str(home),
            SPOTSHIFT_WAREHOUSE=str(home / "warehouse.duckdb"),
            SPOTSHIFT_EXECUTOR="celery",
            SPOTSHIFT_CELERY_QUEUE_PREFIX=f"b{secrets.token_hex(4)}.",
            SPOTSHIFT_DAGSTER_POSTGRES_URL=f"{PG}/{db}",
            DAGSTER_HOME=str(home / "dagster"),
            PYTHONPATH=str(ROOT),
        )
        from spotshift.clock import VirtualClock
        from spotshift.home import init_home

        _admin(f'CREATE DATABASE "{db}"')
        try:
            init_home()
            import dagster as dg

            dg.DagsterInstance.get().dispose()  # the schema, created once (the chains' processes start at once)
            VirtualClock(
                datetime(2025, 3, 3, 1, tzinfo=UTC).isoformat(), time.time(), 0.0, True, 3600.0 / 0.05
            ).save()
            one = _round(home, 1, chains)
            print(f"1 worker:  {one}", flush=True)
            two = _round(home, 2, chains)
            print(f"2 workers: {two}", flush=True)
        finally:
            _delete_queues()
            _admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    write_result(
        "workers" if not args.quick else "workers_quick",
        {
            "region": REGION,
            "one_worker": one,
            "two_workers": two,
            "speedup_two_vs_one": round(two["chains_per_hour"] / one["chains_per_hour"], 2),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
