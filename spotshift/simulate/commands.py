"""``spotshift simulate`` (policy comparison on a price history) and ``spotshift traces`` (availability traces).

Standard library only at module level: heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

POLICY_LABELS = {
    "on_demand": "always on-demand",
    "stay_first_spot": "stay on first spot region",
    "greedy_full": "greedy spot, full copies (SkyPilot-like)",
    "greedy_delta": "greedy spot, delta sync",
    "uniform_progress": "uniform progress (Can't Be Late)",
    "spotshift": "spotshift economics",
    "hindsight": "hindsight lower bound",
    "optimum": "offline optimum (knows the future)",
}


def register(sub: Any) -> None:
    """Add the ``simulate``, ``simulate-fleet`` and ``traces`` command groups."""
    _register_simulate(sub)
    _register_fleet(sub)
    _register_traces(sub)


def _register_simulate(sub: Any) -> None:
    p = sub.add_parser(
        "simulate",
        help="compare placement policies on a price history and availability traces",
        description=(
            "Replay a GPU price history (CSV of the shape of ../shared/data/gcp_gpu_prices_2022_2024.csv) and "
            "spot availability traces for one described training job, and compare policies: always on-demand, "
            "stay on the first spot region, greedy cheapest spot restarting elsewhere on preemption with full "
            "copies (SkyPilot-like) or with delta sync, Can't Be Late's uniform progress, spotshift's own "
            "migration economics (the function price_change_sensor calls), a hindsight lower bound (cheapest "
            "hours, free moves, no preemptions) and the offline optimum (dynamic programming over the trace with "
            "future prices and availability, paying for moves, waits and the deadline). Every "
            "spot policy switches to on-demand when the remaining slack only just covers the remaining work. "
            "Deterministic for a given --seed."
        ),
    )
    p.add_argument(
        "--prices",
        metavar="CSV",
        help="price history (default: the real GCP history when present, else the generated market)",
    )
    p.add_argument(
        "--instance", metavar="TYPE", help="instance type to simulate (default: a2-highgpu-8g when present)"
    )
    p.add_argument(
        "--work-hours",
        type=float,
        default=400.0,
        metavar="H",
        help="instance-hours of work the job needs (default 400)",
    )
    p.add_argument(
        "--deadline-hours",
        type=float,
        default=700.0,
        metavar="H",
        help="hours from --start to the deadline (default 700)",
    )
    p.add_argument(
        "--start",
        metavar="DATE",
        help="ISO date/time the job is submitted (default: first time two regions price spot)",
    )
    p.add_argument(
        "--data-gb", type=float, default=2000.0, metavar="G", help="dataset size, GB (default 2000)"
    )
    p.add_argument(
        "--checkpoint-gb",
        dest="ckpt_gb",
        type=float,
        default=300.0,
        metavar="G",
        help="checkpoint size, GB (default 300)",
    )
    p.add_argument(
        "--traces",
        metavar="DIR",
        help="directory of availability traces (JSON; default: generated per region)",
    )
    p.add_argument(
        "--trace-map", metavar="REGION=FILE,...", help="which trace file each region uses (with --traces)"
    )
    p.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seed of the generated traces (default 0)"
    )
    _add_simulation_args(p)


def _add_simulation_args(p: argparse.ArgumentParser) -> None:
    """The rest of ``simulate``'s options: where, how the job checkpoints and moves, which policies."""
    p.add_argument(
        "--regions",
        metavar="PATTERNS",
        help="comma-separated region patterns to consider, e.g. 'us-*,europe-west4'",
    )
    p.add_argument(
        "--data-location",
        metavar="REGION",
        help="region holding the dataset at the start (default: cheapest spot region)",
    )
    p.add_argument(
        "--checkpoint-interval-hours",
        dest="ckpt_interval_hours",
        type=float,
        default=0.25,
        metavar="H",
        help="checkpoint every H hours of work (default 0.25)",
    )
    p.add_argument(
        "--changeover-hours",
        type=float,
        default=0.25,
        metavar="H",
        help="start-up time of a new instance (default 0.25)",
    )
    p.add_argument(
        "--transfer-gbps",
        type=float,
        default=10.0,
        metavar="GBPS",
        help="cross-region copy throughput (default 10)",
    )
    p.add_argument(
        "--checkpoint-delta-fraction",
        dest="ckpt_delta_fraction",
        type=float,
        default=1.0,
        metavar="F",
        help="share of a stale checkpoint a delta resends (default 1.0)",
    )
    p.add_argument(
        "--gap-seconds", type=int, default=600, metavar="S", help="tick of generated traces (default 600)"
    )
    p.add_argument(
        "--policies", metavar="NAMES", help="comma-separated subset of: " + ", ".join(POLICY_LABELS)
    )
    p.add_argument("--json", action="store_true", help='print {"policies": {name: {...}}, "scenario": {...}}')
    from spotshift.cliutil import deprecated_alias

    for old, new in (
        ("--ckpt-gb", "--checkpoint-gb"),
        ("--ckpt-interval-hours", "--checkpoint-interval-hours"),
        ("--ckpt-delta-fraction", "--checkpoint-delta-fraction"),
    ):
        deprecated_alias(p, old, new, type=float)
    p.set_defaults(handler=_simulate)


def _register_fleet(sub: Any) -> None:
    f = sub.add_parser(
        "simulate-fleet",
        help="run spotshift's policy for many generated jobs on one market (batched)",
        description=(
            "Generate --jobs training jobs (24-240 h of work, deadlines 1.3-2x the work, submitted over the "
            "period and due inside it, datasets 50-2,000 GB in random regions) and run spotshift's decision "
            "function for all of them on one price history and availability traces, batched: decide() is "
            "skipped only where a bound proves it would stay. Prints the totals, deadlines met and the CPU time."
        ),
    )
    f.add_argument("--jobs", type=int, default=1000, metavar="N", help="number of jobs (default 1000)")
    f.add_argument("--days", type=float, default=30.0, metavar="D", help="length of the period (default 30)")
    f.add_argument(
        "--prices", metavar="CSV", help="price history (default: the real GCP history when present)"
    )
    f.add_argument("--instance", metavar="TYPE", help="instance type (default: a2-highgpu-8g when present)")
    f.add_argument(
        "--start", metavar="DATE", help="start of the period (default: first time two regions price spot)"
    )
    f.add_argument("--regions", metavar="PATTERNS", help="comma-separated region patterns (default: all)")
    f.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the jobs and traces (default 0)")
    f.add_argument("--json", action="store_true", help="print the result as JSON")
    f.set_defaults(handler=_simulate_fleet)


def _register_traces(sub: Any) -> None:
    t = sub.add_parser("traces", help="generate or summarize spot availability traces (DESIGN §4 JSON)")
    tsub = t.add_subparsers(dest="traces_command", metavar="ACTION")
    tsub.required = True
    g = tsub.add_parser(
        "generate",
        help="write Markov on/off traces with per-zone rates from the published ranges",
        description="Write one trace per name as NAME.json into OUTDIR; deterministic for --seed.",
    )
    g.add_argument("outdir", help="directory to write the traces into")
    g.add_argument("names", nargs="+", help="zone or region names, one trace each")
    g.add_argument(
        "--hours", type=float, default=24 * 45.0, help="length of each trace (default 1080 = 45 days)"
    )
    g.add_argument("--gap-seconds", type=int, default=600, help="tick length (default 600)")
    g.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seed of the generated traces (default 0)"
    )
    g.add_argument("--json", action="store_true", help="print the statistics as JSON")
    g.set_defaults(handler=_traces_generate)
    s = tsub.add_parser("stats", help="fraction available and mean spell lengths of trace files")
    s.add_argument("files", nargs="+", help="trace JSON files")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(handler=_traces_stats)


def _csv_list(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def _simulate(args: argparse.Namespace) -> int:
    from spotshift.cliutil import emit_json
    from spotshift.errors import ConfigError
    from spotshift.simulate.engine import POLICIES, Scenario
    from spotshift.simulate.run import SimulationRequest, parse_trace_map, run_simulation

    policies = tuple(_csv_list(args.policies)) or POLICIES
    unknown = [x for x in policies if x not in POLICIES]
    if unknown:
        raise ConfigError(f"--policies: unknown {', '.join(unknown)} (known: {', '.join(POLICIES)})")
    if args.gap_seconds <= 0:
        raise ConfigError("--gap-seconds must be > 0")
    scenario = Scenario(
        work_hours=args.work_hours,
        deadline_hours=args.deadline_hours,
        data_gb=args.data_gb,
        ckpt_gb=args.ckpt_gb,
        checkpoint_interval_hours=args.ckpt_interval_hours,
        changeover_hours=args.changeover_hours,
        transfer_gbps=args.transfer_gbps,
        checkpoint_delta_fraction=args.ckpt_delta_fraction,
        data_location=args.data_location,
    )
    report = run_simulation(
        SimulationRequest(
            scenario=scenario,
            prices=args.prices,
            instance=args.instance,
            start=args.start,
            traces_dir=args.traces,
            trace_map=parse_trace_map(args.trace_map),
            seed=args.seed,
            regions=tuple(_csv_list(args.regions)),
            gap_seconds=args.gap_seconds,
            policies=policies,
        )
    )
    for warning in report.warnings:
        sys.stderr.write(f"spotshift: warning: {warning}\n")
    if args.json:
        emit_json(report.to_dict())
        return 0
    sc = report.scenario
    print(
        f"{sc['instance_type']} ({sc['gpu_count']}x {sc['gpu_model']}) in {sc['locations']} locations from {sc['start']}; "
        f"{sc['work_hours']:g} h of work due in {sc['deadline_hours']:g} h; data {sc['data_gb']:g} GB in "
        f"{sc['data_location']}, checkpoint {sc['ckpt_gb']:g} GB"
    )
    print(f"prices: {sc['prices']}; traces: {sc['traces']}")
    header = f"{'policy':44s} {'cost USD':>12s} {'saving':>8s} {'x opt':>6s} {'deadline':>9s} {'moves':>6s} {'GB moved':>10s} {'egress USD':>11s} {'preempt':>8s} {'finish h':>9s}"
    print(header)
    print("-" * len(header))
    for name, r in report.policies.items():
        saving = "" if r.saving_vs_on_demand is None else f"{100 * r.saving_vs_on_demand:.1f}%"
        finish = "" if r.finish_hours is None else f"{r.finish_hours:.1f}"
        label = POLICY_LABELS[name] + (" *" if name == "hindsight" else " **" if name == "optimum" else "")
        ratio = "" if r.vs_optimum is None else f"{r.vs_optimum:.3f}"
        egress = "" if math.isnan(r.egress_usd) else f"{r.egress_usd:,.2f}"
        moved = "" if name == "optimum" else f"{r.gb_moved:,.1f}"
        moves = "" if name == "optimum" else str(r.moves)
        print(
            f"{label:44s} {r.cost_usd:12,.2f} {saving:>8s} {ratio:>6s} {'met' if r.deadline_met else 'MISSED':>9s} "
            f"{moves:>6s} {moved:>10s} {egress:>11s} {'' if name == 'optimum' else r.preemptions:>8} {finish:>9s}"
        )
    if "hindsight" in report.policies:
        print(
            "* lower bound: cheapest available hours before the deadline, no changeover, copies or lost work"
        )
    if "optimum" in report.policies:
        print(
            "** offline optimum: the cheapest plan knowing future prices and capacity, paying egress, changeovers, "
            "lost work and waits, finishing by the deadline (x opt: cost / its cost)"
        )
    return 0


def _simulate_fleet(args: argparse.Namespace) -> int:
    import time

    from spotshift.cliutil import emit_json
    from spotshift.clock import parse_utc
    from spotshift.errors import ConfigError, check_range
    from spotshift.simulate.fleet import generate_fleet, simulate_fleet
    from spotshift.simulate.market import build_market, choose_instance, default_start
    from spotshift.simulate.run import load_history
    from spotshift.simulate.traces import generate_traces

    check_range(args.jobs, "--jobs", low=0, high=1_000_000, integer=True)
    check_range(args.days, "--days", low=0, high=3650)
    history, desc = load_history(args.prices, args.seed)
    instance = choose_instance(history, args.instance)
    start = parse_utc(args.start) if args.start else default_start(history, instance)
    regions = _csv_list(args.regions) or None
    hours = 24.0 * args.days
    probe = build_market(
        history, instance, start=start, hours=1.0, gap_seconds=3600, traces={}, regions=regions
    )
    traces = generate_traces(probe.locations, hours, seed=args.seed)
    market = build_market(
        history, instance, start=start, hours=hours, gap_seconds=600, traces=traces, regions=regions
    )
    if all(all(v != v for v in row) for row in market.spot):
        raise ConfigError(f"no spot price for {instance} in the period from {start.isoformat()}")
    jobs = generate_fleet(market, args.jobs, seed=args.seed)
    c0 = time.process_time()
    res = simulate_fleet(market, jobs)
    cpu = time.process_time() - c0
    doc = {
        "prices": desc,
        "instance_type": instance,
        "locations": len(market.locations),
        "start": start.isoformat(),
        "ticks": market.n_ticks,
        "cpu_s": round(cpu, 2),
        **res.to_dict(),
    }
    if args.json:
        emit_json(doc)
        return 0
    print(
        f"{res.jobs} jobs on {instance} in {len(market.locations)} locations, {market.n_ticks} ticks of 10 min from "
        f"{start.isoformat()} ({desc})"
    )
    print(
        f"cost {res.cost_usd:,.2f} USD (egress {res.egress_usd:,.2f}); deadlines met {res.deadlines_met}/{res.jobs}; "
        f"{res.moves} moves, {res.preemptions} preemptions"
    )
    print(
        f"{res.job_ticks:,} job-ticks: {res.decide_calls:,} decide() calls, {res.screened_stays:,} proven stays; "
        f"{cpu:.1f} s CPU"
    )
    return 0


def _stats_row(name: str, st: Any) -> str:
    up = "" if st.mean_available_spell_hours is None else f"{st.mean_available_spell_hours:.2f}"
    down = "" if st.mean_preempted_spell_hours is None else f"{st.mean_preempted_spell_hours:.2f}"
    return f"{name:32s} {st.hours:8.1f} {st.fraction_available:10.3f} {up:>12s} {down:>12s}"


_STATS_HEADER = f"{'trace':32s} {'hours':>8s} {'available':>10s} {'up spell h':>12s} {'down spell h':>12s}"


def _traces_generate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from spotshift.cliutil import emit_json
    from spotshift.errors import ConfigError
    from spotshift.simulate.traces import generate_trace, spell_stats, write_trace

    for name in args.names:
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(f"trace name {name!r} must be a plain file name (no '/')")
    stats = {}
    for name in args.names:
        tr = generate_trace(name, args.hours, seed=args.seed, gap_seconds=args.gap_seconds)
        path = write_trace(Path(args.outdir) / f"{name}.json", tr)
        stats[name] = (str(path), spell_stats(tr))
    if args.json:
        emit_json({"traces": {n: {"path": p, **st.to_dict()} for n, (p, st) in stats.items()}})
    else:
        print(_STATS_HEADER)
        for name, (_, st) in stats.items():
            print(_stats_row(name, st))
    return 0


def _traces_stats(args: argparse.Namespace) -> int:
    from spotshift.cliutil import emit_json
    from spotshift.simulate.traces import read_trace, spell_stats

    stats = {f: spell_stats(read_trace(f)) for f in args.files}
    if args.json:
        emit_json({"traces": {f: s.to_dict() for f, s in stats.items()}})
    else:
        print(_STATS_HEADER)
        for f, s in stats.items():
            print(_stats_row(f, s))
    return 0
