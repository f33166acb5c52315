"""Gradual cutover under constant load (issue 15): a whole promotion, then a rollback.

One process: a real router (:class:`~spotshift.serving.router.Router` over HTTP under uvicorn),
model-less replica peers (``bench/_replica_peer.py``, 40 ms per answer, each its own process under
``spotshift serve``'s contract) started and drained through the replica launcher by the cutover's own
follower (:func:`spotshift.serving.cutover_replicas.follow`: target launched as it takes weight,
source drained — 503 to new requests, in-flight ones finish, deregistered — within 1.25x the steady
state), and an open-loop load of constant rate through the router for the whole run
(:class:`bench._cutover_fleet.Load`). The virtual clock is frozen and jumps to the end of a
stage's hold once the stage had a passing window, so the seed schedule (shadow 5..50 %, live
5/25/50/100 %) runs in seconds while every decision is the router's, from real windows.

1. **Promotion**: steady state 4 source replicas; cutover with the seed defaults (except the
   analysis window, ``--interval-s``) to a cheaper location, through every stage to 100 %; then a
   failback to the source in one step.
2. **Rollback**: a second cutover straight into live 5 % (no shadow); after two passing windows the
   target turns 5x slower (the breach); measured: wall time from the breach to the router routing
   with target weight 0, in analysis intervals.

Reported: non-2xx responses over both (goal 0); breach -> weight 0 (goal <= 2 intervals), from the
first answer of the slowed target the router saw (a latency breach exists only once an answer is
late: before that no analysis can see it), and also from the moment the target was slowed (which
adds the slow answer's own duration); peak replicas / steady state (goal <= 1.25), sampled every
100 ms over everything running: ready, draining (until gone) and launches still provisioning. The box is shared: the load average is recorded.
``--quick``: a shorter load and a coarser schedule (the test suite's smoke run).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import write_result  # noqa: E402

STEADY = 4


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rps", type=float, default=30.0)
    p.add_argument("--interval-s", type=float, default=3.0)
    p.add_argument("--slow-ms", type=float, default=2500.0)
    args = p.parse_args()
    home = tempfile.mkdtemp(prefix="spotshift-bench-cutover-")
    os.environ["SPOTSHIFT_HOME"] = home
    for k in ("SPOTSHIFT_WAREHOUSE", "DAGSTER_HOME"):
        os.environ.pop(k, None)

    from bench._cutover_fleet import TARGET, Fleet, Load, ServerThread, drive, freeze_clock
    from spotshift.migration.endpoint_cutover import StartOptions, failback, start
    from spotshift.serving import cutover as co
    from spotshift.serving.router import Router
    from spotshift.serving.router_app import build_app
    from spotshift.serving.router_state import RouterConfig

    freeze_clock()
    # a few samples per window on this box, and router queueing of hundreds of ms: see the docstring
    th = co.Thresholds(min_samples=3, p99_slack_ms=400.0)
    shadow = "5,25,50" if args.quick else co.DEFAULT_SHADOW
    fleet = Fleet(service_ms=40.0)
    fleet.add("source", STEADY)
    router = Router(RouterConfig(fleet.endpoint, slo_ms=5000))
    load1 = os.getloadavg()
    out: dict[str, object] = {}
    try:
        with ServerThread(build_app(router, tick_s=0.1)) as r:
            load = Load(r.url, rps=args.rps).start()
            t0 = time.perf_counter()
            st = start(
                fleet.endpoint,
                StartOptions(
                    TARGET,
                    interval_s=args.interval_s,
                    thresholds=th,
                    shadow=shadow,
                    usd_per_hour=fleet.target_usd,
                ),
                record=False,
            )
            st = drive(fleet, timeout_s=600)
            promote_s = time.perf_counter() - t0
            promoted = st.phase == "promoted"
            stages = [row["stage"] for row in st.stage_rows]
            peak_promotion = fleet.peak
            back = failback(fleet.endpoint, record=False)
            settle = time.monotonic() + 120
            while (
                len(fleet.live("source")) < STEADY or fleet.count() > STEADY
            ) and time.monotonic() < settle:
                fleet.follow(back)  # drained targets go, sources come back
                time.sleep(0.2)
            failback_peak = fleet.peak

            # 2: rollback
            fleet.peak = fleet.count()
            start(
                fleet.endpoint,
                StartOptions(
                    TARGET,
                    interval_s=args.interval_s,
                    thresholds=th,
                    shadow="none",
                    usd_per_hour=fleet.target_usd,
                ),
                record=False,
            )
            breach_at: list[float] = []

            def breach(s: co.CutoverState) -> None:
                if (
                    not breach_at
                    and s.phase == "live"
                    and len(s.windows) >= 2
                    and all(v["passed"] is not False for w in s.windows[-2:] for v in w["verdicts"])
                    and all(  # two windows in which the target's latency was judged, and passed
                        v["passed"] is True
                        for w in s.windows[-2:]
                        for v in w["verdicts"]
                        if v["criterion"] == "p99_latency"
                    )
                ):
                    fleet.set_service_ms("target", args.slow_ms)
                    breach_at.append(time.perf_counter())

            zero_at: list[float] = []
            first_slow: list[float] = []  # when the router saw the first answer of the slowed target
            observe = router.cutover.observe

            def timed_observe(replica: object, status: int | None, ms: float | None, tokens: float) -> None:
                slow = ms is not None and ms >= args.slow_ms and router.cutover.side_of(replica) == "target"  # type: ignore[arg-type]
                if breach_at and not first_slow and slow:
                    first_slow.append(time.perf_counter())
                observe(replica, status, ms, tokens)  # type: ignore[arg-type]

            router.cutover.observe = timed_observe  # type: ignore[method-assign]

            def watch(s: co.CutoverState) -> None:
                breach(s)
                split = router.cutover.split
                if breach_at and not zero_at and split is not None and split.target_weight == 0.0:
                    zero_at.append(time.perf_counter())

            st2 = drive(fleet, on_state=watch, timeout_s=300)
            while not zero_at and router.cutover.split is not None:
                watch(st2)
                time.sleep(0.01)
            time.sleep(1.0)
            fleet.follow(co.require_state(fleet.endpoint))  # the target drained, the source at steady
            statuses = load.stop()
            total_s = time.perf_counter() - t0
        failed = sum(n for k, n in statuses.items() if k != 200)
        breach_s = (zero_at[0] - breach_at[0]) if zero_at and breach_at else None
        seen_s = (zero_at[0] - first_slow[0]) if zero_at and first_slow else None
        out = {
            "load": {
                "rps": args.rps,
                "requests": sum(statuses.values()),
                "seconds": round(total_s, 1),
                "statuses": {str(k): n for k, n in statuses.items()},
                "non_2xx": failed,
            },
            "interval_s": args.interval_s,
            "promotion": {
                "promoted": promoted,
                "stages": stages,
                "wall_s": round(promote_s, 1),
                "peak_replicas": peak_promotion,
                "peak_replicas_through_failback": failback_peak,
            },
            "rollback": {
                "phase": st2.phase,
                "at_stage": st2.rolled_back_at_stage,
                "criterion": st2.failed_criterion,
                "slowed_to_weight_zero_s": None if breach_s is None else round(breach_s, 3),
                "slowed_to_weight_zero_intervals": None
                if breach_s is None
                else round(breach_s / args.interval_s, 2),
                "slow_ms": args.slow_ms,
                "breach_to_weight_zero_s": None if seen_s is None else round(seen_s, 3),
                "breach_to_weight_zero_intervals": None
                if seen_s is None
                else round(seen_s / args.interval_s, 2),
                "peak_replicas": fleet.peak,
            },
            "steady_replicas": STEADY,
            "peak_over_steady": round(max(failback_peak, fleet.peak) / STEADY, 3),
            "targets": {"non_2xx": 0, "breach_to_weight_zero_intervals": 2.0, "peak_over_steady": 1.25},
            "load_average_at_start": [round(x, 2) for x in load1],
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "quick": args.quick,
        }
        met = (
            failed == 0
            and promoted
            and st2.phase == "rolled_back"
            and seen_s is not None
            and seen_s <= 2 * args.interval_s
            and max(failback_peak, fleet.peak) <= 1.25 * STEADY
        )
        out["targets_met"] = met
        print(
            f"cutover: {sum(statuses.values())} requests at {args.rps:g}/s, non-2xx {failed}; promoted through "
            f"{len(stages)} stage rows in {promote_s:.1f}s; rollback {st2.phase} at {st2.rolled_back_at_stage} "
            f"({st2.failed_criterion}), first slow answer -> weight 0 in "
            f"{seen_s if seen_s is None else round(seen_s, 2)}s, target slowed -> weight 0 in "
            f"{breach_s if breach_s is None else round(breach_s, 2)}s "
            f"({args.interval_s}s windows); peak/steady {out['peak_over_steady']}"
        )
    finally:
        fleet.close()
    write_result("cutover_quick" if args.quick else "cutover", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
