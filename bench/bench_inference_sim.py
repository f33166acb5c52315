"""Inference simulator (issue 14, third target): spotshift's autoscaler + router against all on-demand,
all reserved, spot greedy and a SpotHedge-like policy, on the real GCP history with generated
availability traces and the synthetic daily demand (4 user regions, 60,000 tokens/s global peak).

Targets: spotshift >= 50 % cheaper than all on-demand with >= 99.9 % SLO attainment, and cheaper
than the SpotHedge-like policy at equal or better SLO attainment. SpotHedge is run with N_extra
0..3 (its over-provisioning knob), so the comparison is reported two ways: head to head with the
default N_extra = 1, and SLO-matched (the cheapest SpotHedge setting whose SLO attainment is at
least spotshift's).

Windows: the two the autoscaler's constants were chosen on ("tuned": 2023-09 with trace seed 0,
2024-06 with seed 1) and held-out ones never used for tuning (other months of the same history,
other trace seeds), reported apart so the comparison is honest. They run one after another (the
machine's two cores are shared); the load average is recorded with each window.

Also measured: simulator speed on a month of one-minute ticks over a handful of regions.
Without ../shared/data the comparison runs on the generated market (and says so).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import Timer, peak_rss_mib, write_result  # noqa: E402
from spotshift.home import shared_data_file  # noqa: E402
from spotshift.serving.simulate import (  # noqa: E402
    InferenceSimRequest,
    build_sim_inputs,
    run_policy,
)
from spotshift.simulate.run import REAL_HISTORY  # noqa: E402

BASELINES = ("on_demand", "reserved", "spot_greedy")
SPOTHEDGE_EXTRAS = (0, 1, 2, 3)
# (start, trace seed): the windows the autoscaler was tuned on, and held-out ones
TUNED = (("2023-09-01", 0), ("2024-06-01", 1))
# the history has no spot price for the A100-80GB instance before 2023-05: 2022-11 is held out too,
# but as the case without a spot market (no policy can use spot there; reported, not in the targets)
HELD_OUT = (
    ("2023-06-01", 2),
    ("2023-12-01", 4),
    ("2024-02-01", 5),
    ("2024-10-01", 6),
    ("2022-11-01", 3),
)
TARGETS = (
    "saving_ge_50pct",
    "slo_ge_99_9pct",
    "cheaper_than_spothedge_extra1_at_equal_or_better_slo",
    "cheaper_than_slo_matched_spothedge",
)
SPEED_REGIONS = ("us-central1", "us-east4", "us-west1", "europe-west4", "asia-northeast1", "asia-southeast1")


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def scenario(
    prices: str | None, start: str, days: float, seed: int, regions: tuple[str, ...], window: str = "tuned"
) -> dict:
    """Every policy (SpotHedge at each N_extra) on one window; the verdict on the targets."""
    load_before = load_avg()
    req = InferenceSimRequest(prices=prices, start=start, days=days, seed=seed, regions=regions)
    with Timer() as tb:
        sim, sc = build_sim_inputs(req)
    spot_market = bool(np.isfinite(sim.spot).any())
    runs: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    for name in (*BASELINES, "spotshift"):
        with Timer() as t:
            runs[name] = run_policy(sim, name)[0].to_dict()
        seconds[name] = round(t.seconds, 2)
    for extra in SPOTHEDGE_EXTRAS:
        with Timer() as t:
            runs[f"spothedge_extra{extra}"] = run_policy(sim, "spothedge", spothedge_extra=extra)[0].to_dict()
        seconds[f"spothedge_extra{extra}"] = round(t.seconds, 2)
    base = runs["on_demand"]["cost_usd"]
    for r in runs.values():
        r["saving_vs_on_demand"] = 1 - r["cost_usd"] / base
    ss = runs["spotshift"]
    sh = runs["spothedge_extra1"]
    matched = [
        (k, r)
        for k, r in runs.items()
        if k.startswith("spothedge") and r["slo_attainment"] >= ss["slo_attainment"]
    ]
    cheapest_matched = min(matched, key=lambda kr: kr[1]["cost_usd"]) if matched else None
    verdict = {
        "spot_market": spot_market,
        "saving_ge_50pct": ss["saving_vs_on_demand"] >= 0.5,
        "slo_ge_99_9pct": ss["slo_attainment"] >= 0.999,
        "head_to_head_vs_spothedge_extra1": {
            "cheaper": ss["cost_usd"] < sh["cost_usd"],
            "slo_equal_or_better": ss["slo_attainment"] >= sh["slo_attainment"],
        },
        "slo_matched_spothedge": None
        if cheapest_matched is None
        else {
            "setting": cheapest_matched[0],
            "cost_usd": cheapest_matched[1]["cost_usd"],
            "slo_attainment": cheapest_matched[1]["slo_attainment"],
            "spotshift_cheaper": ss["cost_usd"] < cheapest_matched[1]["cost_usd"],
            "spotshift_saving_vs_it": 1 - ss["cost_usd"] / cheapest_matched[1]["cost_usd"],
        },
    }
    summary = {
        k: (
            round(r["cost_usd"]),
            round(100 * r["saving_vs_on_demand"], 1),
            round(100 * r["slo_attainment"], 4),
        )
        for k, r in runs.items()
    }
    print(start, seed, summary, verdict, flush=True)
    return {
        "window": window,
        "load_avg": {"before": load_before, "after": load_avg()},
        "start": sc["start"],
        "days": sc["days"],
        "seed": seed,
        "locations": len(sc["locations"]),
        "users": sc["users"],
        "build_s": round(tb.seconds, 2),
        "policy_s": seconds,
        "policies": runs,
        "verdict": verdict,
    }


def speed(prices: str | None, quick: bool, days: float = 30.0) -> dict:
    """A month (a day with --quick) of one-minute ticks over a handful of regions: wall time per policy."""
    days = 1.0 if quick else days
    req = InferenceSimRequest(prices=prices, start="2024-03-01", days=days, regions=SPEED_REGIONS)
    with Timer() as tb:
        sim, _ = build_sim_inputs(req)
    out = {"days": days, "ticks": sim.ticks, "locations": len(sim.locations), "build_s": round(tb.seconds, 2)}
    for name in (*BASELINES, "spothedge", "spotshift"):
        with Timer() as t:
            run_policy(sim, name)
        out[name] = {"seconds": round(t.seconds, 2), "simulated_days_per_s": round(days / t.seconds, 2)}
    print("speed", out, flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--days",
        type=float,
        default=30.0,
        help="length of each window in days (default 30; results go to inference_sim_<days>d.json unless 30)",
    )
    ap.add_argument(
        "--tuned-only", action="store_true", help="only the two windows the autoscaler was tuned on"
    )
    args = ap.parse_args()
    real = shared_data_file(REAL_HISTORY)
    prices = str(real) if real is not None else None
    result: dict[str, object] = {
        "quick": args.quick,
        "real_history": prices,
        "market": "real GCP history" if real is not None else "generated market (../shared/data absent)",
        "profile": InferenceSimRequest().profile.to_dict(),
        "params": InferenceSimRequest().params.to_dict(),
        "demand": "synthetic daily curve, users us-east 0.4 / us-west 0.2 / eu-west 0.25 / ap-northeast 0.15, peak 60,000 tokens/s",
    }
    if args.quick:
        windows = [("2024-03-01", 1.0, 0, ("us-*", "europe-west4", "asia-northeast1"), "tuned")]
    else:
        windows = [(start, args.days, seed, (), "tuned") for start, seed in TUNED]
        if not args.tuned_only:
            windows += [(start, args.days, seed, (), "held_out") for start, seed in HELD_OUT]
    if real is None:  # the generated market starts 2023-01-04 and prices four GCP regions
        windows = [("2023-02-01", w[1], w[2], (), w[4]) for w in windows]
    result["load_avg_start"] = load_avg()
    # one window after another: the two cores are shared with other work
    result["scenarios"] = [scenario(prices, *w) for w in windows]
    result["speed"] = speed(prices, args.quick, min(args.days, 30.0)) if real is not None else None
    result["load_avg_end"] = load_avg()
    scenarios: list[dict] = result["scenarios"]  # type: ignore[assignment]
    # the targets need a spot market: windows without one are reported, not counted
    with_spot = [s for s in scenarios if s["verdict"]["spot_market"]]
    result["targets_met"] = targets_met([s["verdict"] for s in with_spot])
    result["targets_met_by_window"] = {
        group: targets_met([s["verdict"] for s in with_spot if s["window"] == group])
        for group in ("tuned", "held_out")
        if any(s["window"] == group for s in with_spot)
    }
    result["windows_without_spot_market"] = [s["start"] for s in scenarios if not s["verdict"]["spot_market"]]
    print("targets", result["targets_met"], result["targets_met_by_window"])
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    name = "inference_sim" + ("_quick" if args.quick else "" if args.days == 30.0 else f"_{args.days:g}d")
    write_result(name, result)
    return 0


def targets_met(verdicts: list[dict]) -> dict[str, bool]:
    """The targets over ``verdicts``: met on every window (none: ``False``)."""
    if not verdicts:
        return dict.fromkeys(TARGETS, False)
    return {
        "saving_ge_50pct": all(v["saving_ge_50pct"] for v in verdicts),
        "slo_ge_99_9pct": all(v["slo_ge_99_9pct"] for v in verdicts),
        "cheaper_than_spothedge_extra1_at_equal_or_better_slo": all(
            v["head_to_head_vs_spothedge_extra1"]["cheaper"]
            and v["head_to_head_vs_spothedge_extra1"]["slo_equal_or_better"]
            for v in verdicts
        ),
        "cheaper_than_slo_matched_spothedge": all(
            v["slo_matched_spothedge"] is None or v["slo_matched_spothedge"]["spotshift_cheaper"]
            for v in verdicts
        ),
    }


if __name__ == "__main__":
    sys.exit(main())
