"""Placement decision latency: 10,000 quotes x 100 jobs (issue 6).

Each job gets a full :func:`spotshift.placement.economics.decide` over the whole snapshot: scoring of
every quote (filters, egress of missing bytes, amortized penalty, locality bonus, risk), ranking,
the deadline safety net and the move economics against its current placement. The baseline, run in
the same process on the same data, is the seed's scheduler sketch: effective cost of each quote,
filter on GPU and price, sort — what any placement must at least do.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import Timer, peak_rss_mib, write_result  # noqa: E402
from spotshift.jobs import TrainingJob  # noqa: E402
from spotshift.placement.decision import DecisionInputs, Placement  # noqa: E402
from spotshift.placement.economics import decide  # noqa: E402
from spotshift.placement.risk import estimate  # noqa: E402
from spotshift.placement.scoring import DataFootprint  # noqa: E402
from spotshift.pricing.quote import NormalizedGPUQuote, effective_gpu_hour_usd  # noqa: E402

NOW = datetime(2025, 3, 1, tzinfo=UTC)
REGIONS = {
    "aws": [
        "us-east-1",
        "us-east-2",
        "us-west-2",
        "eu-west-1",
        "eu-central-1",
        "ap-northeast-1",
        "ap-southeast-2",
    ],
    "gcp": ["us-central1", "us-east1", "us-east4", "us-west1", "europe-west4", "europe-west1", "asia-east1"],
    "azure": ["eastus", "eastus2", "westus2", "westeurope", "northeurope", "japaneast"],
}
GPUS = [("A100-40GB", 1.9), ("A100-80GB", 2.5), ("H100-80GB", 4.0), ("L4", 0.6), ("V100", 1.2)]
COUNTS = [1, 2, 4, 8]


def make_quotes(n: int, rng: random.Random) -> list[NormalizedGPUQuote]:
    out = []
    for i in range(n):
        provider = rng.choice(list(REGIONS))
        region = rng.choice(REGIONS[provider])
        model, per_gpu = rng.choice(GPUS)
        count = rng.choice(COUNTS)
        market = "spot" if i % 2 else "on_demand"
        price = per_gpu * count * rng.uniform(0.8, 1.3) * (rng.uniform(0.3, 0.5) if market == "spot" else 1.0)
        net = rng.choice([50.0, 100.0, 200.0, 400.0])
        storage = rng.choice([2.0, 8.0, 16.0])
        out.append(
            NormalizedGPUQuote(
                provider=provider,
                region=region,
                zone=f"{region}-{'abc'[i % 3]}",
                instance_type=f"{model.lower()}-{count}g-{i % 7}",
                gpu_model=model,
                gpu_count=count,
                market=market,
                price_usd_hour=price,
                effective_gpu_hour_usd=effective_gpu_hour_usd(price, count, net, storage),
                net_gbps=net,
                storage_gbps=storage,
                topology_score=rng.choice([5.0, 7.0, 9.0]),
                observed_at=NOW,
                source="bench",
            )
        )
    return out


def make_inputs(i: int, quotes: list[NormalizedGPUQuote], rng: random.Random) -> DecisionInputs:
    model, _ = rng.choice(GPUS)
    count = rng.choice(COUNTS)
    locs = sorted({q.location for q in quotes})
    home = rng.choice(locs)
    job = TrainingJob(
        name=f"job-{i}",
        dataset=f"ds-{i}",
        total_steps=10_000,
        work_hours=rng.uniform(50, 500),
        gpu_model=model.split("-")[0],
        gpu_count=count,
        min_topology_score=rng.choice([0.0, 7.0]),
        max_usd_per_hour=rng.choice([None, 50.0, 200.0]),
        allowed_locations=rng.choice([["*"], ["aws/*", "gcp/*"], ["gcp/*"], ["*/us-*", "*/eastus*"]]),
        submitted_at=(NOW - timedelta(hours=10)).isoformat(),
        deadline_hours=rng.uniform(600, 1200),
    )
    foot = DataFootprint(
        dataset_bytes=int(rng.uniform(0.1, 100) * 1e12),
        checkpoint_bytes=int(rng.uniform(1, 500) * 1e9),
        dataset_present={home: 10**15},
        checkpoint_present={home: 10**15},
    )
    current = rng.choice([None, Placement(home, "spot", f"{model.lower()}-{count}g-0", price_usd_hour=5.0)])
    risks = {loc: estimate(loc, rng.randint(0, 10), rng.uniform(10, 500)) for loc in locs}
    return DecisionInputs(
        job=job,
        quotes=quotes,
        now=NOW,
        remaining_hours=job.work_hours * rng.uniform(0.2, 1.0),
        footprint=foot,
        current=current,
        checkpoint_age_hours=rng.uniform(0, 0.25),
        risks=risks,
        snapshot_id="bench",
    )


def baseline(inp: DecisionInputs) -> list[NormalizedGPUQuote]:
    """Seed sketch: effective cost, GPU/price filter, sort."""
    job = inp.job
    ok = [
        q
        for q in inp.quotes
        if q.gpu_count == job.gpu_count
        and q.gpu_model.lower().startswith((job.gpu_model or "").lower())
        and (job.max_usd_per_hour is None or q.effective_gpu_hour_usd * q.gpu_count <= job.max_usd_per_hour)
    ]
    return sorted(ok, key=lambda q: q.effective_gpu_hour_usd)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n_quotes, n_jobs = (1_000, 10) if args.quick else (10_000, 100)
    rng = random.Random(42)
    quotes = make_quotes(n_quotes, rng)
    inputs = [make_inputs(i, quotes, rng) for i in range(n_jobs)]
    decide(inputs[0])  # warm caches (egress rates, imports)
    latencies = []
    actions: dict[str, int] = {}
    with Timer() as total:
        for inp in inputs:
            t0 = time.perf_counter()
            d = decide(inp)
            latencies.append(time.perf_counter() - t0)
            actions[d.action] = actions.get(d.action, 0) + 1
    with Timer() as base:
        for inp in inputs:
            baseline(inp)
    lat_ms = sorted(x * 1000 for x in latencies)
    result = {
        "quotes": n_quotes,
        "jobs": n_jobs,
        "decide_total_s": round(total.seconds, 3),
        "decide_ms_p50": round(statistics.median(lat_ms), 2),
        "decide_ms_p95": round(lat_ms[int(0.95 * (len(lat_ms) - 1))], 2),
        "decide_ms_max": round(lat_ms[-1], 2),
        "decisions_per_s": round(n_jobs / total.seconds, 1),
        "candidates_scored_per_s": round(n_jobs * n_quotes / total.seconds),
        "baseline_total_s": round(base.seconds, 3),
        "ratio_vs_baseline": round(total.seconds / base.seconds, 2),
        "actions": actions,
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "quick": args.quick,
    }
    print(result)
    write_result("placement" + ("_quick" if args.quick else ""), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
