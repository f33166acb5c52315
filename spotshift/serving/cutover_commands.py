"""``spotshift cutover start|status|rollback|failback``: gradual cutover of an inference endpoint.

Light at import time (every ``spotshift`` invocation imports each command module): the stage
defaults from :mod:`spotshift.serving.cutover_stages`; the rest (warehouse, launcher, serving
modules) loads inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from spotshift.cliutil import deprecated_alias, emit_json
from spotshift.clock import virtual_now
from spotshift.errors import check_range
from spotshift.serving.cutover_stages import DEFAULT_SHADOW_SHARES, DEFAULT_STAGES

DESCRIPTION = (
    "Moves an endpoint to a target location in stages the router applies: first a shadow phase (a share "
    "of live requests mirrored to the target, its answers compared with the source's and never returned), "
    "then live stages (the target gets that share of requests). Every --interval-seconds the router compares "
    "the target with the source: P99 latency regression (<= 10 % shadow, <= 15 % live), error-rate delta "
    "(<= 0.001), cost per million tokens against the plan, identical answers on the mirrored share; a "
    "failed comparison sets the target's weight to 0 at once and records why. Holds run on the virtual "
    "clock. After promotion the source stays warm at --source-floor replicas for --failback-days; "
    "'cutover failback' restores it in one step. With --model the endpoint declares the new checkpoint "
    "once promoted (the autoscaler launches it) and the old one again on a failback; a rollback before "
    "promotion leaves the declaration as it was. After each action the endpoint's replicas follow the stage's "
    "plan through the replica launcher (target replicas launched, source replicas drained to the rest, "
    "the total within 1.25x the steady state; the source back on a rollback); --no-scale leaves them. "
    "State: $SPOTSHIFT_HOME/serving/<endpoint>/cutover.json."
)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "cutover",
        help="gradual cutover of an inference endpoint (shadow, stages, rollback)",
        description=DESCRIPTION,
    )
    csub = p.add_subparsers(dest="cutover_command", metavar="ACTION")
    csub.required = True

    _register_start(csub)
    for name, helptext, handler in (
        (
            "status",
            "show the cutover (advances a stage whose hold passed; records raw.cutovers; replicas follow)",
            _status,
        ),
        ("rollback", "target weight 0 now (a promoted cutover fails back)", _rollback),
        ("failback", "100 %% back on the source in one step, within the failback window", _failback),
    ):
        c = csub.add_parser(name, help=helptext)
        c.add_argument("endpoint", help="endpoint with a cutover (spotshift cutover start)")
        _common(c)
        if name == "rollback":
            c.add_argument("--reason", default="rollback requested", help="recorded with the rollback")
        c.set_defaults(handler=handler)


def _register_start(csub: Any) -> None:
    s = csub.add_parser("start", help="begin a cutover to PROVIDER/REGION", description=DESCRIPTION)
    s.add_argument("endpoint", help="endpoint to move (its live replicas are the source)")
    _target_options(s)
    _stage_options(s)
    _capacity_options(s)
    _guard_options(s)
    _common(s)
    s.set_defaults(handler=_start)


def _target_options(s: argparse.ArgumentParser) -> None:
    """Where the target replicas run, on which market, serving which checkpoint."""
    s.add_argument("--to", required=True, metavar="PROVIDER/REGION", help="target location")
    s.add_argument(
        "--market",
        default="spot",
        choices=["spot", "on_demand", "reserved"],
        help="market of the target replicas (default spot)",
    )
    s.add_argument(
        "--model",
        default="",
        metavar="CHECKPOINT",
        help="checkpoint the target serves (default: the endpoint's model); with --to a location the "
        "endpoint already serves from, its replicas there on their current checkpoint are the source",
    )


def _stage_options(s: argparse.ArgumentParser) -> None:
    """The shadow shares, the live stages and the analysis window."""
    s.add_argument(
        "--shadow",
        default=DEFAULT_SHADOW_SHARES,
        metavar="P[:HOLD],...",
        help="shadow shares in percent (default 5,15,25,35,45,50: the first held 48h, the others "
        "24h); 'none' skips the shadow phase",
    )
    s.add_argument(
        "--stages",
        default=DEFAULT_STAGES,
        metavar="P:HOLD,...",
        help="live stages, percent:hold, ending at 100 (default 5:24h,25:48h,50:72h,100:0)",
    )
    s.add_argument(
        "--interval-seconds",
        type=float,
        default=60.0,
        metavar="N",
        help="analysis window, wall seconds (default 60)",
    )
    deprecated_alias(s, "--interval-s", "--interval-seconds", type=float, metavar="N")


def _capacity_options(s: argparse.ArgumentParser) -> None:
    """Prices and replica counts: the plan the target is costed against, the warm source."""
    s.add_argument(
        "--usd-per-hour",
        type=float,
        metavar="USD",
        help="price of a target replica (default: the cheapest quote at --to in the warehouse)",
    )
    s.add_argument(
        "--capacity-tokens-s",
        type=float,
        default=2400.0,
        metavar="N",
        help="tokens/s one replica serves, for cost per million tokens (default 2400, as the router)",
    )
    s.add_argument(
        "--steady-replicas",
        type=int,
        metavar="N",
        help="steady-state replica count (default: the live source replicas)",
    )
    s.add_argument(
        "--source-floor",
        type=int,
        default=1,
        metavar="N",
        help="source replicas kept warm after promotion (default 1)",
    )
    s.add_argument(
        "--failback-days",
        type=float,
        default=7.0,
        metavar="D",
        help="failback window after promotion, virtual days (default 7)",
    )


def _guard_options(s: argparse.ArgumentParser) -> None:
    """The limits a comparison of target and source must stay within."""
    s.add_argument("--max-p99-regression-shadow", type=float, default=0.10, metavar="F", help="default 0.10")
    s.add_argument("--max-p99-regression", type=float, default=0.15, metavar="F", help="live (default 0.15)")
    s.add_argument(
        "--p99-slack-ms",
        type=float,
        default=5.0,
        metavar="MS",
        help="latency noise ignored on top of the regression limit (default 5)",
    )
    s.add_argument("--max-error-rate-delta", type=float, default=0.001, metavar="F", help="default 0.001")
    s.add_argument(
        "--cost-tolerance",
        type=float,
        default=0.05,
        metavar="F",
        help="target cost per million tokens allowed above the plan (default 0.05)",
    )
    s.add_argument(
        "--min-agreement",
        type=float,
        default=1.0,
        metavar="F",
        help="share of mirrored answers that must be identical (default 1.0)",
    )
    s.add_argument(
        "--min-samples",
        type=int,
        default=20,
        metavar="N",
        help="requests per side and window before latency and errors are judged (default 20)",
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the state as one JSON object")
    p.add_argument(
        "--no-scale",
        action="store_true",
        help="only change the weights: launch and drain no replica (another system scales them)",
    )
    p.add_argument(
        "--stop-timeout-seconds",
        type=float,
        default=60.0,
        metavar="S",
        help="how long a drained replica may take to finish its requests and exit (default 60)",
    )


def _done(st: Any, args: argparse.Namespace) -> int:
    """Replicas follow the plan (unless --no-scale), then the state is printed."""
    from spotshift.migration.endpoint_cutover import scale_replicas
    from spotshift.serving.launcher import open_launcher

    step = None
    if not args.no_scale:
        check_range(args.stop_timeout_seconds, "--stop-timeout-seconds", low=0, high=86400)
        step = scale_replicas(st.endpoint, open_launcher(), stop_timeout_s=args.stop_timeout_seconds)
    _print(st, args.json, step)
    return 0


def _print(st: Any, as_json: bool, step: Any = None) -> None:
    from spotshift.serving.cutover import summary

    doc = summary(st, virtual_now())
    doc["scaled"] = step.to_dict() if step is not None else None
    if as_json:
        emit_json(doc)
        return
    w = sys.stdout.write
    w(
        f"cutover {doc['cutover_id']} of {doc['endpoint']}: {', '.join(doc['source_locations'])} -> "
        f"{doc['to_location']} ({doc['market']})\n"
    )
    w(
        f"  phase {doc['phase']}, stage {doc['stage']} ({doc['stage_index'] + 1}/{len(doc['stages'])}: "
        f"{' '.join(doc['stages'])})\n"
    )
    w(
        f"  target weight {doc['target_weight']:.0%}, mirrored {doc['mirror_share']:.0%}; replicas "
        f"source {doc['replicas']['source']} + target {doc['replicas']['target']} (steady {doc['steady_replicas']})\n"
    )
    if doc["hold_left_s"] is not None:
        w(
            f"  hold left {doc['hold_left_s'] / 3600:.1f} h; windows passed in stage {doc['passed_windows_in_stage']}\n"
        )
    if doc["plan_usd_per_mtok"] is not None:
        src = doc["source_usd_per_mtok"]
        w(
            f"  cost per million tokens: plan {doc['plan_usd_per_mtok']:.4f} USD"
            + (f", source {src:.4f} USD" if src is not None else "")
            + "\n"
        )
    for v in doc["last_verdicts"]:
        mark = {True: "pass", False: "FAIL", None: "n/a "}[v["passed"]]
        w(f"  [{mark}] {v['criterion']}: {v['detail']}\n")
    if doc["reason"]:
        w(f"  reason: {doc['reason']}\n")
    if doc["failback_until"]:
        w(f"  failback window until {doc['failback_until']}\n")
    if doc["replica_hours_saved"] is not None:
        w(f"  source decommissioned; replica-hours saved {doc['replica_hours_saved']:g}\n")
    if step is not None:
        w(
            f"  replicas now source {step.after['source']} + target {step.after['target']} "
            f"(launched {len(step.launched)}, drained {len(step.drained)}; cap {step.cap})\n"
        )
        for note in step.notes:
            w(f"  note: {note}\n")


def _start(args: argparse.Namespace) -> int:
    from spotshift.migration.endpoint_cutover import StartOptions, start
    from spotshift.serving.cutover import Thresholds

    check_range(args.failback_days, "--failback-days", low=0, high=365, low_inclusive=True)
    th = Thresholds(
        p99_shadow=args.max_p99_regression_shadow,
        p99_live=args.max_p99_regression,
        p99_slack_ms=args.p99_slack_ms,
        error_rate_delta=args.max_error_rate_delta,
        cost_tolerance=args.cost_tolerance,
        min_agreement=args.min_agreement,
        min_samples=args.min_samples,
    )
    st = start(
        args.endpoint,
        StartOptions(
            to_location=args.to,
            market=args.market,
            model=args.model,
            shadow=args.shadow,
            stages=args.stages,
            interval_s=args.interval_seconds,
            thresholds=th,
            usd_per_hour=args.usd_per_hour,
            capacity_tokens_s=args.capacity_tokens_s,
            steady_replicas=args.steady_replicas,
            source_floor=args.source_floor,
            failback_s=args.failback_days * 86400.0,
        ),
    )
    return _done(st, args)


def _status(args: argparse.Namespace) -> int:
    from spotshift.migration.endpoint_cutover import check

    return _done(check(args.endpoint), args)


def _rollback(args: argparse.Namespace) -> int:
    from spotshift.migration.endpoint_cutover import rollback

    return _done(rollback(args.endpoint, args.reason), args)


def _failback(args: argparse.Namespace) -> int:
    from spotshift.migration.endpoint_cutover import failback

    return _done(failback(args.endpoint), args)
