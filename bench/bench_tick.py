"""Sensor tick at scale (issue 17 item 5): ``price_change_sensor`` over 100 / 1,000 / 10,000 jobs.

A warehouse holds one 10,000-quote snapshot over 12 regions (3 providers, 5 GPU models, 4 GPU
counts, spot and on-demand, zones), dataset and checkpoint transfers, preemptions and spot usage.
N jobs are declared (``spotshift jobs import`` path: :func:`spotshift.jobs.import_jobs`), half of
them running somewhere (live trainers, so the sensor decides for them), half new. One tick is
:func:`spotshift.migration.plan.tick` — the jobs to decide for, batched inputs, vectorised
shortlist, :func:`~spotshift.placement.economics.decide`, decisions recorded — exactly what
``price_change_sensor`` and ``spotshift placement decide-all`` run. Reported per N: tick seconds,
p50/p99 of one decision inside the tick, and a second tick with unchanged inputs (skipped jobs).
Baseline in the same process: the per-job path (:func:`spotshift.placement.inputs.decide_for_job`,
the pre-issue-17 tick body) on a sample of jobs, its p50/p99, and the tick time it implies.
Goal: 10,000 jobs in <= 30 s. The machine is shared (load average recorded): CPU seconds of this
process are reported next to wall seconds, the steadier figure on a busy box.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import Timer, write_result  # noqa: E402

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
GB = 10**9
LOCATIONS = [
    "aws/us-east-1", "aws/us-west-2", "aws/eu-west-1", "aws/ap-northeast-1",
    "gcp/us-central1", "gcp/us-east1", "gcp/europe-west4", "gcp/asia-east1",
    "azure/eastus", "azure/westus2", "azure/westeurope", "azure/japaneast",
]  # fmt: skip
GPUS = [("A100-40GB", 1.9), ("A100-80GB", 2.5), ("H100-80GB", 4.0), ("L4", 0.6), ("V100", 1.2)]
COUNTS = [1, 2, 4, 8]


class AliveBackend:
    """Every declared trainer is alive (so running jobs are decided for), none is stopping."""

    def __init__(self, workdir: str):
        self.info = SimpleNamespace(alive=True, workdir=workdir)

    def status(self, name: str) -> SimpleNamespace:
        return self.info

    def stopping(self, name: str) -> bool:
        return False


def seed(home: Path, n_quotes: int, rng: random.Random) -> list:
    from spotshift import warehouse
    from spotshift.pricing.quote import NormalizedGPUQuote, effective_gpu_hour_usd

    quotes = []
    for i in range(n_quotes):
        provider, _, region = rng.choice(LOCATIONS).partition("/")
        model, per_gpu = rng.choice(GPUS)
        count = rng.choice(COUNTS)
        market = "spot" if i % 2 else "on_demand"
        price = per_gpu * count * rng.uniform(0.8, 1.3) * (rng.uniform(0.3, 0.5) if market == "spot" else 1.0)
        net, storage = rng.choice([50.0, 100.0, 200.0, 400.0]), rng.choice([2.0, 8.0, 16.0])
        quotes.append(
            NormalizedGPUQuote(
                provider=provider, region=region, zone=f"{region}-{'abc'[i % 3]}",
                instance_type=f"{model.lower()}-{count}g-{i % 7}", gpu_model=model, gpu_count=count,
                market=market, price_usd_hour=price,
                effective_gpu_hour_usd=effective_gpu_hour_usd(price, count, net, storage),
                net_gbps=net, storage_gbps=storage, topology_score=rng.choice([5.0, 7.0, 9.0]),
                observed_at=NOW, source="bench",
            )
        )  # fmt: skip
    rows = [
        {**q.to_dict(), "snapshot_id": "bench-snap", "polled_at": NOW, "observed_at": NOW} for q in quotes
    ]
    with warehouse.connect() as con:
        warehouse.append_rows(con, "main.gpu_quotes", rows)
        warehouse.append_rows(
            con,
            "raw.preemptions",
            [
                {"notice_id": f"n{i}", "job": "x", "location": loc, "noticed_at": NOW - timedelta(days=1 + i),
                 "recovered_at": NOW - timedelta(days=1 + i) + timedelta(hours=1)}
                for i, loc in enumerate(LOCATIONS[::2])
            ],
        )  # fmt: skip
        warehouse.append_rows(
            con,
            "raw.compute_usage",
            [
                {"usage_id": f"u{i}", "job": "x", "provider": loc.split("/")[0], "region": loc.split("/")[1],
                 "market": "spot", "started_at": NOW - timedelta(days=20), "ended_at": NOW - timedelta(days=10)}
                for i, loc in enumerate(LOCATIONS)
            ],
        )  # fmt: skip
    return quotes


def declare(n: int, quotes: list, rng: random.Random) -> None:
    from spotshift import registry, warehouse
    from spotshift.jobs import TrainingJob, import_jobs
    from spotshift.placement.state import record_placement

    datasets = [f"ds-{i}" for i in range(20)]
    registry.update(
        lambda d: d.update(datasets=[{"name": x, "location": rng.choice(LOCATIONS)} for x in datasets])
    )
    jobs, running, ckpts, moves = [], [], [], []
    for i in range(n):
        model, _ = rng.choice(GPUS)
        count = rng.choice(COUNTS)
        job = TrainingJob(
            name=f"job-{i}", dataset=rng.choice(datasets), total_steps=10_000, work_hours=rng.uniform(50, 500),
            gpu_model=model.split("-")[0], gpu_count=count, min_topology_score=rng.choice([0.0, 7.0]),
            max_usd_per_hour=rng.choice([None, 50.0, 200.0]),
            allowed_locations=rng.choice([["*"], ["aws/*", "gcp/*"], ["gcp/*"], ["*/us-*", "*/eastus*"]]),
            submitted_at=(NOW - timedelta(hours=10)).isoformat(), deadline_hours=rng.choice([None, 1200.0]),
        )  # fmt: skip
        jobs.append(job)
        if i % 2:
            fits = [q for q in quotes if q.gpu_count == count and q.gpu_model == model]
            q = rng.choice(fits)
            running.append((job.name, q))
            ckpts.append({"checkpoint_id": f"c{i}", "job": job.name, "step": rng.randrange(1000, 9000),
                          "location": q.location, "bytes": int(rng.uniform(1, 100) * GB), "created_at": NOW - timedelta(minutes=20)})  # fmt: skip
            moves.append({"transfer_id": f"m{i}", "kind": "checkpoint", "entity": job.name, "method": "tensor_delta",
                          "src_location": q.location, "dst_location": rng.choice(LOCATIONS), "root": f"c{i}",
                          "bytes_full": 10 * GB, "bytes_sent": 3 * GB, "started_at": NOW - timedelta(minutes=10)})  # fmt: skip
    moves += [
        {"transfer_id": f"d{i}", "kind": "dataset", "entity": ds, "src_location": rng.choice(LOCATIONS),
         "dst_location": rng.choice(LOCATIONS), "root": "r1", "bytes_full": 500 * GB, "bytes_changed": 50 * GB,
         "started_at": NOW - timedelta(days=1)}
        for i, ds in enumerate(datasets)
    ]  # fmt: skip
    import_jobs(jobs)
    for name, q in running:
        record_placement(
            name, location=q.location, market=q.market, instance_type=q.instance_type, zone=q.zone,
            price_usd_hour=q.price_usd_hour, now=NOW - timedelta(hours=2),
        )  # fmt: skip
    with warehouse.connect() as con:
        warehouse.append_rows(con, "raw.checkpoints", ckpts)
        warehouse.append_rows(con, "raw.transfers", moves)


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def run_size(n: int, n_quotes: int, baseline_sample: int) -> dict:
    from spotshift import warehouse
    from spotshift.migration.plan import tick
    from spotshift.placement.inputs import decide_for_job

    rng = random.Random(n)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SPOTSHIFT_HOME"] = tmp
        os.environ.pop("SPOTSHIFT_WAREHOUSE", None)
        quotes = seed(Path(tmp), n_quotes, rng)
        with Timer() as t_declare:
            declare(n, quotes, rng)
        backend = AliveBackend(str(Path(tmp) / "no-trainer"))
        with warehouse.connect() as con:
            cpu0 = time.process_time()
            first = tick(con, backend, now=NOW)
            cpu_first = time.process_time() - cpu0
            previous = {j: (d, NOW.timestamp()) for j, d in first.digests.items()}
            cpu0 = time.process_time()
            second = tick(con, backend, now=NOW + timedelta(minutes=1), previous=previous)
            cpu_second = time.process_time() - cpu0
            sample = [d.job for d in first.decisions[:baseline_sample]]
            per_job = []
            per_job_cpu = []
            for name in sample:
                t0, c0 = time.perf_counter(), time.process_time()
                decide_for_job(con, name, now=NOW)
                per_job.append(time.perf_counter() - t0)
                per_job_cpu.append(time.process_time() - c0)
    actions: dict[str, int] = {}
    for d in first.decisions:
        actions[d.action] = actions.get(d.action, 0) + 1
    base_p50 = statistics.median(per_job) if per_job else 0.0
    return {
        "jobs": n,
        "quotes": n_quotes,
        "regions": len(LOCATIONS),
        "declare_seconds": round(t_declare.seconds, 2),
        "tick_seconds": round(first.seconds, 3),
        "tick_cpu_seconds": round(cpu_first, 3),
        "decided": len(first.decisions),
        "moves": first.moves,
        "actions": actions,
        "decision_p50_ms": round(1000 * statistics.median(first.decision_seconds), 3),
        "decision_p99_ms": round(1000 * pct(first.decision_seconds, 0.99), 3),
        "unchanged_tick_seconds": round(second.seconds, 3),
        "unchanged_tick_cpu_seconds": round(cpu_second, 3),
        "unchanged_tick_skipped": second.skipped,
        "baseline_per_job_sample": len(per_job),
        "baseline_decision_p50_ms": round(1000 * base_p50, 3),
        "baseline_decision_p99_ms": round(1000 * pct(per_job, 0.99), 3),
        "baseline_implied_tick_seconds": round(base_p50 * n, 1),
        "baseline_decision_cpu_p50_ms": round(1000 * statistics.median(per_job_cpu), 3)
        if per_job_cpu
        else 0.0,
        "baseline_implied_tick_cpu_seconds": round(statistics.median(per_job_cpu) * n, 1)
        if per_job_cpu
        else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100 jobs x 1,000 quotes")
    parser.add_argument("--sizes", default="100,1000,10000", help="job counts (default 100,1000,10000)")
    parser.add_argument(
        "--baseline-sample",
        type=int,
        default=30,
        help="jobs decided by the per-job path per size (default 30)",
    )
    args = parser.parse_args()
    sizes = [100] if args.quick else [int(x) for x in args.sizes.split(",")]
    n_quotes = 1000 if args.quick else 10_000
    load = os.getloadavg()
    results = []
    for n in sizes:
        r = run_size(n, n_quotes, baseline_sample=5 if args.quick else args.baseline_sample)
        print(r, flush=True)
        results.append(r)
    big = results[-1]
    write_result(
        "tick" if not args.quick else "tick_quick",
        {
            "load_average_1m_at_start": round(load[0], 2),
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
            "sizes": results,
            "goal": "10,000 jobs x 12 regions over a 10,000-quote snapshot in <= 30 s",
            "goal_met": big["jobs"] >= 10_000 and big["tick_seconds"] <= 30.0,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
