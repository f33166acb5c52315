"""``spotshift simulate-inference``: compare inference scaling policies on prices, traces and demand.

Standard library only at module level: heavy imports happen inside the handler.
"""

from __future__ import annotations

import argparse
from typing import Any

POLICY_NAMES = ("on_demand", "reserved", "spot_greedy", "spothedge", "spotshift")

DESCRIPTION = (
    "Replay a GPU price history (CSV of the shape of ../shared/data/gcp_gpu_prices_2022_2024.csv), spot "
    "availability traces (JSON, real or generated) and request demand per user region, one tick a minute, "
    "and compare: all on-demand, all reserved (1-year), spot greedy, a SpotHedge-like policy (SkyServe, "
    "NSDI'24) and spotshift's autoscaler + router. Per policy: cost_usd, saving_vs_on_demand, "
    "slo_attainment (share of requests within the SLO: round trip + queueing + inference, with cold "
    "starts and preemptions with notice) and availability (share of requests that found a ready "
    "replica). Deterministic for a given --seed."
)


def register(sub: Any) -> None:
    """Add the ``simulate-inference`` command."""
    p = sub.add_parser(
        "simulate-inference",
        help="compare inference autoscaling policies on a price history, availability traces and demand",
        description=DESCRIPTION,
    )
    _input_options(p)
    _window_options(p)
    _synthetic_demand_options(p)
    _replica_options(p)
    _policy_options(p)
    p.set_defaults(handler=_simulate_inference)


def _input_options(p: argparse.ArgumentParser) -> None:
    """The inputs: price history, availability traces, demand, and the SLO."""
    p.add_argument(
        "--prices",
        metavar="CSV",
        help="price history (default: the real GCP history when present, else the generated market)",
    )
    p.add_argument(
        "--traces", metavar="DIR", help="directory of availability traces (default: generated per location)"
    )
    p.add_argument(
        "--demand",
        required=True,
        metavar="CSV|synthetic",
        help="demand CSV (timestamp,user_region,tokens_s or requests_s) or 'synthetic' (daily curve per user region)",
    )
    p.add_argument("--slo-ms", type=float, required=True, metavar="N", help="end-to-end latency SLO, ms")


def _window_options(p: argparse.ArgumentParser) -> None:
    """Which replicas, where and when: instance type, window, location patterns."""
    p.add_argument("--instance", metavar="TYPE", help="instance type of a replica (default a2-ultragpu-1g)")
    p.add_argument("--start", metavar="DATE", help="ISO date/time the window starts (default: from the data)")
    p.add_argument("--days", type=float, default=7.0, metavar="D", help="window length in days (default 7)")
    p.add_argument(
        "--regions",
        metavar="PATTERNS",
        help="comma-separated location patterns to consider, e.g. 'us-*,europe-*'",
    )


def _synthetic_demand_options(p: argparse.ArgumentParser) -> None:
    """The synthetic demand curve: user regions and global peak."""
    p.add_argument(
        "--users",
        metavar="REGION=SHARE,...",
        help="synthetic demand: user regions and their shares (default us-east=0.4,us-west=0.2,eu-west=0.25,ap-northeast=0.15)",
    )
    p.add_argument(
        "--peak-tokens-s",
        type=float,
        default=60_000.0,
        metavar="N",
        help="synthetic demand: global peak tokens/s",
    )


def _replica_options(p: argparse.ArgumentParser) -> None:
    """What one replica does: capacity, request size, latency, cold start, spread."""
    p.add_argument(
        "--capacity-tokens-s",
        type=float,
        default=2400.0,
        metavar="N",
        help="tokens/s one replica serves with p99 within the SLO (measured; default 2400)",
    )
    p.add_argument(
        "--tokens-per-request",
        type=float,
        default=512.0,
        metavar="N",
        help="mean tokens per request (default 512)",
    )
    p.add_argument(
        "--inference-ms",
        type=float,
        default=800.0,
        metavar="MS",
        help="latency of one request on an idle replica",
    )
    p.add_argument(
        "--cold-start-s",
        type=float,
        default=240.0,
        metavar="S",
        help="launch to first request served (default 240)",
    )
    p.add_argument(
        "--floor-share",
        type=float,
        metavar="F",
        help="share of traffic that keeps the SLO after losing every spot replica of one location",
    )


def _policy_options(p: argparse.ArgumentParser) -> None:
    """The policies compared, their seed and the output."""
    p.add_argument(
        "--spothedge-extra",
        type=int,
        default=1,
        metavar="N",
        help="SpotHedge's N_extra spot replicas (default 1)",
    )
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of traces and synthetic demand")
    p.add_argument(
        "--policies", metavar="NAMES", help="comma-separated subset of: " + ", ".join(POLICY_NAMES)
    )
    p.add_argument("--json", action="store_true", help='print {"policies": {name: {...}}, "scenario": {...}}')


def _csv_list(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def parse_users(text: str) -> dict[str, float]:
    """``us-east=0.5,eu-west=0.5`` -> dict; :class:`ConfigError` naming a malformed entry."""
    from spotshift.errors import ConfigError

    out: dict[str, float] = {}
    for part in _csv_list(text):
        region, sep, share = part.partition("=")
        try:
            value = float(share)
        except ValueError:
            value = float("nan")
        if not sep or not region.strip() or not value == value:
            raise ConfigError(f"--users entry {part!r} is not REGION=SHARE")
        out[region.strip()] = value
    if not out:
        raise ConfigError("--users names no user region")
    return out


def _simulate_inference(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from spotshift.cliutil import emit_json
    from spotshift.errors import ConfigError
    from spotshift.serving.scaling_types import ScalingParams
    from spotshift.serving.simulate import (
        POLICY_LABELS,
        InferenceSimRequest,
        SyntheticDemand,
        run_inference_simulation,
    )
    from spotshift.serving.slo import ServingProfile

    policies = tuple(_csv_list(args.policies)) or POLICY_NAMES
    unknown = [x for x in policies if x not in POLICY_NAMES]
    if unknown:
        raise ConfigError(f"--policies: unknown {', '.join(unknown)} (known: {', '.join(POLICY_NAMES)})")
    profile = ServingProfile(
        slo_ms=args.slo_ms,
        capacity_tokens_s=args.capacity_tokens_s,
        tokens_per_request=args.tokens_per_request,
        inference_ms=args.inference_ms,
        cold_start_s=args.cold_start_s,
    )
    synthetic = SyntheticDemand(seed=args.seed, peak_tokens_s=args.peak_tokens_s)
    if args.users:
        synthetic = replace(synthetic, users=parse_users(args.users))
    params = ScalingParams()
    if args.floor_share is not None:
        params = replace(params, floor_share=args.floor_share)
    demand_csv = None if args.demand == "synthetic" else args.demand
    if demand_csv is not None and args.users:
        raise ConfigError("--users applies to --demand synthetic only")
    report = run_inference_simulation(
        InferenceSimRequest(
            profile=profile,
            prices=args.prices,
            traces_dir=args.traces,
            demand_csv=demand_csv,
            synthetic=synthetic,
            instance=args.instance,
            start=args.start,
            days=args.days,
            regions=tuple(_csv_list(args.regions)),
            seed=args.seed,
            policies=policies,
            params=params,
            spothedge_extra=args.spothedge_extra,
        )
    )
    if args.json:
        emit_json(report.to_dict())
        return 0
    sc = report.scenario
    print(
        f"{sc['instance_type']} ({sc['gpu_model']}) replicas in {len(sc['locations'])} locations, "
        f"{sc['days']:g} days from {sc['start']}, SLO {args.slo_ms:g} ms; users {', '.join(sc['users'])}"
    )
    print(f"prices: {sc['prices']}; traces: {sc['traces']}; demand: {sc['demand']}")
    header = (
        f"{'policy':34s} {'cost USD':>12s} {'saving':>8s} {'SLO met':>9s} {'available':>10s} {'preempt':>8s}"
    )
    print(header)
    print("-" * len(header))
    for name, r in report.policies.items():
        saving = "" if r.saving_vs_on_demand is None else f"{100 * r.saving_vs_on_demand:.1f}%"
        print(
            f"{POLICY_LABELS[name]:34s} {r.cost_usd:12,.2f} {saving:>8s} {100 * r.slo_attainment:8.3f}% "
            f"{100 * r.availability:9.3f}% {r.preemptions:8d}"
        )
    return 0
