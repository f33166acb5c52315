"""Simulator scale (issue 18 item 4): 1,000 jobs x one month of 10-minute ticks with spotshift's
decision function, batched (:func:`spotshift.simulate.fleet.simulate_fleet`).

Market: the real GCP history (a2-highgpu-8g, us-* regions) from 2023-06-01 when present, else the
generated market; generated availability traces (seed 0). Jobs: :func:`generate_fleet` (24-240 h of
work, deadline 1.3-2x the work, submitted over the month, due inside it).

Target: < 60 s on this machine. The box is shared (load average 8-40 on 2 cores), so the figure
is the process CPU time; wall time and the load average are recorded beside it. Baseline in the
same run: the unbatched reference (``decide()`` for every active job at every tick) on the first
50 jobs, whose results must equal the batched run's for those jobs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import peak_rss_mib, write_result  # noqa: E402
from spotshift.home import shared_data_file  # noqa: E402
from spotshift.simulate.fleet import generate_fleet, simulate_fleet  # noqa: E402
from spotshift.simulate.market import build_market  # noqa: E402
from spotshift.simulate.run import REAL_HISTORY, load_history  # noqa: E402
from spotshift.simulate.traces import generate_traces  # noqa: E402


def timed(fn, *a, **k):
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn(*a, **k)
    return out, time.process_time() - c0, time.perf_counter() - w0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--days", type=float, default=30.0)
    ap.add_argument("--regions", default="us-*", help="comma-separated patterns, or 'all'")
    args = ap.parse_args()
    n_jobs, days = (50, 7.0) if args.quick else (args.jobs, args.days)
    real = shared_data_file(REAL_HISTORY)
    hist, desc = load_history(str(real) if real else None)
    regions = None if args.regions == "all" else args.regions.split(",")
    start = datetime(2023, 6, 1, tzinfo=UTC) if real else None
    if start is None:
        from spotshift.simulate.market import default_start

        start = default_start(hist, "a2-highgpu-8g")
    hours = 24 * days
    probe = build_market(
        hist, "a2-highgpu-8g", start=start, hours=1, gap_seconds=3600, traces={}, regions=regions
    )
    traces = generate_traces(probe.locations, hours, seed=0)
    m = build_market(
        hist, "a2-highgpu-8g", start=start, hours=hours, gap_seconds=600, traces=traces, regions=regions
    )
    jobs = generate_fleet(m, n_jobs, seed=0)
    load_before = os.getloadavg()
    res, cpu, wall = timed(simulate_fleet, m, jobs)
    load_after = os.getloadavg()
    ref_n = min(50, n_jobs)
    sub, sub_cpu, _ = timed(simulate_fleet, m, jobs[:ref_n])
    ref, ref_cpu, _ = timed(simulate_fleet, m, jobs[:ref_n], screen=False)
    same = sub.per_job == ref.per_job
    out = {
        "prices": desc,
        "regions": args.regions,
        "locations": len(m.locations),
        "ticks": m.n_ticks,
        "tick_minutes": 10,
        "jobs": n_jobs,
        "job_ticks": res.job_ticks,
        "decide_calls": res.decide_calls,
        "screened": res.screened_stays,
        "cpu_s": round(cpu, 2),
        "wall_s": round(wall, 2),
        "load_average_before_after": [round(load_before[0], 1), round(load_after[0], 1)],
        "target_s": 60,
        "target_met_cpu": cpu < 60,
        "deadlines_met": res.deadlines_met,
        "cost_usd": round(res.cost_usd, 2),
        "moves": res.moves,
        "preemptions": res.preemptions,
        "actions": res.actions,
        "reference": {
            "jobs": ref_n,
            "batched_cpu_s": round(sub_cpu, 2),
            "every_tick_cpu_s": round(ref_cpu, 2),
            "speedup": round(ref_cpu / sub_cpu, 2) if sub_cpu > 0 else None,
            "decide_calls_batched": sub.decide_calls,
            "decide_calls_every_tick": ref.decide_calls,
            "identical_results": same,
        },
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }
    print({k: v for k, v in out.items() if k != "actions"})
    write_result("fleet" + ("_quick" if args.quick else ""), out)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
