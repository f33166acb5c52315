"""``spotshift pools add|list|submit|tick|report``: private GPU pools with bursting to the clouds.

Standard library only at module level: heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
from typing import Any

from spotshift.cliutil import emit_json


def register(sub: Any) -> None:
    """Add the ``pools`` command group."""
    from spotshift.pools.pool import DEFAULT_USD_PER_GPU_HOUR
    from spotshift.pools.site import DEFAULT_SITE_EGRESS_USD_PER_GB

    p = sub.add_parser("pools", help="private GPU pools: queue, burst to the cheapest cloud, come back")
    psub = p.add_subparsers(dest="pools_command", metavar="ACTION")
    psub.required = True

    a = psub.add_parser(
        "add",
        help="declare a private GPU pool",
        description="Declare owned GPUs. The default price is seed 000's owned 8x A100 node, $14.20 an "
        "hour including power, cooling and amortised hardware ($1.775 per GPU-hour); owning pays "
        "only above ~70 percent utilisation (`spotshift pools report` says where you are).",
    )
    a.add_argument("name", help="pool name ([a-z0-9-_.])")
    a.add_argument("--gpu-model", required=True, help="GPU model of the pool, e.g. A100")
    a.add_argument("--gpus", type=int, required=True, help="GPUs in the pool")
    a.add_argument(
        "--usd-per-gpu-hour",
        type=float,
        default=DEFAULT_USD_PER_GPU_HOUR,
        help=f"all-in price per GPU-hour (default {DEFAULT_USD_PER_GPU_HOUR:.3f} = $14.20 per 8-GPU node-hour)",
    )
    a.add_argument("--location", default="", help="onprem/<site> (default onprem/<name>)")
    a.add_argument(
        "--egress-usd-per-gb",
        type=float,
        default=DEFAULT_SITE_EGRESS_USD_PER_GB,
        help=f"what the site pays per GB sent out (default {DEFAULT_SITE_EGRESS_USD_PER_GB}: an assumption, "
        "committed IP transit at ~$0.50 per Mbps-month, 30 percent average use)",
    )
    a.add_argument("--replace", action="store_true", help="replace an existing pool of that name")
    a.set_defaults(handler=_add)

    ls = psub.add_parser("list", help="declared pools and what runs, waits and is burst")
    ls.add_argument("--json", action="store_true", help="print one JSON object")
    ls.set_defaults(handler=_list)

    s = psub.add_parser(
        "submit",
        help="queue a declared job on a pool (it bursts when waiting misses its deadline or costs more)",
    )
    s.add_argument("pool", help="declared pool")
    s.add_argument("job", help="declared job (its GPU model must be the pool's)")
    s.add_argument(
        "--at", metavar="TIME", help="ISO-8601 UTC time to act at (default: now on the virtual clock)"
    )
    s.add_argument("--json", action="store_true", help="print one JSON object")
    _move_arguments(s)
    s.set_defaults(handler=_act)

    t = psub.add_parser("tick", help="advance a pool to now: finish, start, burst, repatriate")
    t.add_argument("pool", help="declared pool")
    t.add_argument(
        "--at", metavar="TIME", help="ISO-8601 UTC time to act at (default: now on the virtual clock)"
    )
    t.add_argument("--json", action="store_true", help="print one JSON object")
    _move_arguments(t)
    t.set_defaults(handler=_act)

    r = psub.add_parser("report", help="utilisation, queue waits, burst hours, cost of bursting vs waiting")
    r.add_argument("pool", help="declared pool")
    r.add_argument(
        "--at", metavar="TIME", help="ISO-8601 UTC time to act at (default: now on the virtual clock)"
    )
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.set_defaults(handler=_report)


def _move_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--move",
        action="store_true",
        help="carry the starts, bursts and returns out as real moves (dataset delta-synced, checkpoint "
        "encrypted and carried, probation + shadow validation, go-live or rollback), as pool_move_sensor does",
    )
    p.add_argument(
        "--shadow-steps",
        type=int,
        default=20,
        metavar="K",
        help="with --move: steps of a burst's or return's probation and shadow run (default 20)",
    )


def _add(args: argparse.Namespace) -> int:
    from spotshift.pools.pool import BREAKEVEN_UTILISATION, PrivatePool, add_pool

    pool = PrivatePool(
        name=args.name,
        gpu_model=args.gpu_model,
        gpus=args.gpus,
        usd_per_gpu_hour=args.usd_per_gpu_hour,
        location=args.location,
        egress_usd_per_gb=args.egress_usd_per_gb,
    )
    add_pool(pool, replace=args.replace)
    print(
        f"pool {pool.name}: {pool.gpus}x {pool.gpu_model} at {pool.location}, ${pool.usd_per_gpu_hour:.3f}/GPU-h "
        f"(${pool.usd_per_node_hour:.2f} per 8-GPU node-hour); owning pays above ~{BREAKEVEN_UTILISATION:.0%} utilisation"
    )
    return 0


def _summary(doc: dict[str, Any]) -> str:
    run = ", ".join(r["job"] for r in doc["running"]) or "-"
    queue = ", ".join(q["job"] for q in doc["queue"]) or "-"
    burst = ", ".join(f"{b['job']}@{b['location']}" for b in doc["burst"]) or "-"
    return f"running {run}; queued {queue}; burst {burst}"


def _list(args: argparse.Namespace) -> int:
    from spotshift.pools.pool import load_pools
    from spotshift.pools.state import load_pool_state

    rows = []
    for pool in load_pools():
        doc = load_pool_state(pool.name)
        rows.append(
            {**pool.to_dict(), **{k: [e["job"] for e in doc[k]] for k in ("running", "queue", "burst")}}
        )
    if args.json:
        emit_json({"pools": rows})
    else:
        for pool in load_pools():
            print(
                f"{pool.name:16s} {pool.gpus:5d}x {pool.gpu_model:10s} {pool.location:20s} {_summary(load_pool_state(pool.name))}"
            )
    return 0


def _now(args: argparse.Namespace) -> Any:
    from spotshift.clock import parse_utc, virtual_now

    return parse_utc(args.at) if args.at else virtual_now()


def _print_events(doc: dict[str, Any], since: int, as_json: bool, moves: list[dict[str, Any]]) -> None:
    new = doc["events"][since:]
    if as_json:
        emit_json(
            {
                "pool": doc["pool"],
                "running": doc["running"],
                "queue": doc["queue"],
                "burst": doc["burst"],
                "events": new,
                "moves": moves,
            }
        )
        return
    for e in new:
        why = e.get("choice", {}).get("reason", "") or e.get("reason", "")
        print(f"{e['at']} {e['job']}: {e['event']} {e.get('location', '')} {why}".rstrip())
    for m in moves:
        print(f"move {m['run_key']}: {m['status']} {m['error']}".rstrip())
    print(_summary(doc))


def _act(args: argparse.Namespace) -> int:
    """``submit`` and ``tick``: act on the pool, record its ledger as ``raw.pool_events``, carry the
    moves out with ``--move``, print the events it produced and where jobs are. Exit 1 when a move
    was rolled back."""
    import sys

    from spotshift.errors import ConfigError
    from spotshift.pools.lifecycle import carry_out, record_pool_facts
    from spotshift.pools.scheduler import submit, tick
    from spotshift.pools.state import load_pool_state

    if args.shadow_steps <= 0:
        raise ConfigError(f"--shadow-steps must be > 0, got {args.shadow_steps}")
    before = len(load_pool_state(args.pool)["events"])
    if args.pools_command == "submit":
        submit(args.pool, args.job, now=_now(args))
    else:
        tick(args.pool, now=_now(args))
    moves: list[dict[str, Any]] = []
    if args.move:
        from spotshift.migration.state import ShadowOptions

        def log(message: str) -> None:
            sys.stderr.write(f"{message}\n")

        outcomes = carry_out(
            args.pool, shadow=ShadowOptions(shadow_steps=args.shadow_steps), log=None if args.json else log
        )
        moves = [o.to_dict() for o in outcomes]
    else:
        record_pool_facts(args.pool)
    _print_events(load_pool_state(args.pool), before, args.json, moves)
    return 1 if any(m["status"] != "cut_over" for m in moves) else 0


def _report(args: argparse.Namespace) -> int:
    from spotshift.pools.scheduler import pool_report

    rep = pool_report(args.pool, now=_now(args))
    if args.json:
        emit_json(rep)
        return 0
    verdict = "owning pays" if rep["owning_pays"] else "below break-even"
    print(
        f"pool {rep['pool']} ({rep['gpus']} GPUs at {rep['location']}): utilisation {rep['utilisation']:.0%} over "
        f"{rep['window_hours']:.1f} h ({verdict}: seed 000 puts it at ~{rep['breakeven_utilisation']:.0%})"
    )
    print(f"queue waits: mean {rep['queue_wait_hours_mean']:.2f} h, max {rep['queue_wait_hours_max']:.2f} h")
    print(
        f"bursts {rep['bursts']}, repatriations {rep['repatriations']}, burst hours {rep['burst_hours']:.2f}; "
        f"bursting cost ${rep['burst_cost_usd']:,.2f} where waiting would have cost ${rep['waiting_cost_usd']:,.2f}"
    )
    for d in rep["burst_decisions"]:
        print(f"  {d['at']} {d['job']} -> {d['to']}: {d['reason']}")
    return 0
