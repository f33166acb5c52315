"""Simulator speed (simulated hours per second, per policy) and the policy comparison on the real
GCP price history (issue 7): 400 h of 8-GPU work (a2-highgpu-8g), deadline at 0.75 slack (700 h),
2.3 TB per full copy (2,000 GB dataset + 300 GB checkpoint), generated availability traces, over
several submission dates and trace seeds. Savings are vs always-on-demand in the same run.

Without ../shared/data the comparison is skipped (the speed part runs on a generated market).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import Timer, peak_rss_mib, write_result  # noqa: E402
from spotshift.home import shared_data_file  # noqa: E402
from spotshift.simulate.engine import POLICIES, Scenario, default_home, run_policy  # noqa: E402
from spotshift.simulate.run import REAL_HISTORY, SimulationRequest, run_simulation  # noqa: E402


def speed(report_market, sc: Scenario) -> dict[str, dict[str, float]]:
    """Wall time of each policy on one market; simulated hours = ticks the policy ran x tick length."""
    home = default_home(report_market)
    out = {}
    for name in POLICIES:
        with Timer() as t:
            r = run_policy(name, report_market, sc, home)
        sim_hours = r.finish_hours or report_market.n_ticks * report_market.gap_hours
        out[name] = {
            "seconds": round(t.seconds, 4),
            "simulated_hours": round(sim_hours, 1),
            "simulated_hours_per_s": round(sim_hours / t.seconds, 1),
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    real = shared_data_file(REAL_HISTORY)
    sc = Scenario(work_hours=400.0, deadline_hours=700.0, data_gb=2000.0, ckpt_gb=300.0)
    result: dict[str, object] = {"scenario": sc.__dict__, "quick": args.quick}
    regions = ("us-*",)
    if real is None:
        result["real_history"] = None
        with Timer() as t:
            rep = run_simulation(SimulationRequest(scenario=sc, seed=0, regions=()))
        result["speed_market"] = "synthetic"
    else:
        result["real_history"] = str(real)
        with Timer() as t:
            rep = run_simulation(SimulationRequest(scenario=sc, prices=str(real), seed=0, regions=regions))
        result["speed_market"] = f"{real.name} regions={','.join(regions)}"
    result["one_run_all_policies_s"] = round(t.seconds, 2)
    result["locations"] = len(rep.market.locations)
    result["ticks"] = rep.market.n_ticks
    result["tick_hours"] = rep.market.gap_hours
    result["speed"] = speed(rep.market, sc)
    print(result["speed"])

    if real is not None:
        starts = (
            ["2023-06-01", "2024-03-01"]
            if args.quick
            else ["2023-06-01", "2023-09-01", "2023-12-01", "2024-03-01", "2024-06-01"]
        )
        seeds = range(1) if args.quick else range(4)
        region_sets = {"us": ("us-*",), "us+europe": ("us-*", "europe-*"), "all": ()}
        if args.quick:
            region_sets = {"us": ("us-*",)}
        comparison = {}
        for label, rs in region_sets.items():
            savings: dict[str, list[float]] = {p: [] for p in POLICIES}
            missed: dict[str, int] = {p: 0 for p in POLICIES}
            egress: dict[str, list[float]] = {p: [] for p in POLICIES}
            for start in starts:
                for seed in seeds:
                    rep = run_simulation(
                        SimulationRequest(scenario=sc, prices=str(real), start=start, seed=seed, regions=rs)
                    )
                    for name, r in rep.policies.items():
                        savings[name].append(r.saving_vs_on_demand or 0.0)
                        egress[name].append(r.egress_usd)
                        missed[name] += 0 if r.deadline_met else 1
            comparison[label] = {
                name: {
                    "runs": len(v),
                    "saving_min": round(min(v), 4),
                    "saving_median": round(statistics.median(v), 4),
                    "saving_max": round(max(v), 4),
                    "egress_usd_median": round(statistics.median(egress[name]), 2),
                    "deadlines_missed": missed[name],
                }
                for name, v in savings.items()
            }
            print(
                label,
                {
                    k: (v["saving_min"], v["saving_median"], v["saving_max"])
                    for k, v in comparison[label].items()
                },
            )
        result["comparison"] = {"starts": starts, "seeds": list(seeds), "by_regions": comparison}
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    write_result("simulate" + ("_quick" if args.quick else ""), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
