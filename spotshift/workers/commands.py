"""``spotshift workers start|list|stop``: the Celery workers of this machine, one queue per region.

Standard library only at module level: heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
from typing import Any

from spotshift.cliutil import emit_json


def register(sub: Any) -> None:
    """Add the ``workers`` command group."""
    w = sub.add_parser(
        "workers",
        help="Celery workers per region that run the steps of moves (home initialised with --executor celery)",
    )
    wsub = w.add_subparsers(dest="workers_command", metavar="ACTION")
    wsub.required = True

    s = wsub.add_parser(
        "start",
        help="start workers for regions (and the control queue), in the background",
        description="Start Celery workers on this machine, each serving one queue: a region's "
        "(provider/region; the target's workers sync, run the probation and go live, the source's "
        "drain) or the control queue (planning). Run it from the code location's directory.",
    )
    s.add_argument(
        "--region",
        action="append",
        default=[],
        metavar="LOCATION",
        help="a region whose queue the workers serve, provider/region (repeatable)",
    )
    s.add_argument("--per-region", type=int, default=1, help="workers per region queue (default 1)")
    s.add_argument("--no-control", action="store_true", help="start no worker for the control queue")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(handler=_start)

    r = wsub.add_parser(
        "run",
        help="be one worker in the foreground (a container's command): a region's queue or the control queue",
    )
    r.add_argument("--region", metavar="LOCATION", help="the region whose queue to serve, provider/region")
    r.add_argument("--control", action="store_true", help="serve the control queue (planning steps)")
    r.set_defaults(handler=_run)

    ls = wsub.add_parser("list", help="this machine's workers: name, queue, pid, alive")
    ls.add_argument("--json", action="store_true", help="print one JSON object")
    ls.set_defaults(handler=_list)

    st = wsub.add_parser(
        "stop",
        help="stop workers: each finishes the step it runs, then exits",
        description="SIGTERM (a worker finishes its current step), SIGKILL after --timeout-seconds.",
    )
    st.add_argument("--name", action="append", default=[], help="a worker to stop (repeatable; default all)")
    st.add_argument(
        "--timeout-seconds", type=float, default=60.0, help="wait this long before killing (default 60)"
    )
    st.set_defaults(handler=_stop)


def _show(workers: list[Any], as_json: bool) -> None:
    from dataclasses import asdict

    if as_json:
        emit_json({"workers": [asdict(w) for w in workers]})
        return
    if not workers:
        print("no workers running; start them with `spotshift workers start --region provider/region`")
        return
    print(f"{'worker':40s} {'queue':24s} {'pid':12s} state")
    for w in workers:
        print(f"{w.name:40s} {w.queue:24s} pid {w.pid:<8d} {'alive' if w.alive else 'gone'}")


def _start(args: argparse.Namespace) -> int:
    from spotshift.workers.processes import start_workers

    started = start_workers(args.region, per_region=args.per_region, control=not args.no_control)
    _show(started, args.json)
    return 0


def _run(args: argparse.Namespace) -> int:
    from spotshift.errors import ConfigError
    from spotshift.workers.processes import run_worker

    if bool(args.region) == bool(args.control):
        raise ConfigError("spotshift workers run: give --region LOCATION or --control")
    run_worker(args.region)
    return 0  # not reached: the process became the worker


def _list(args: argparse.Namespace) -> int:
    from spotshift.workers.processes import list_workers

    _show(list_workers(), args.json)
    return 0


def _stop(args: argparse.Namespace) -> int:
    from spotshift.workers.processes import stop_workers

    for name in stop_workers(args.name, timeout_s=args.timeout_seconds):
        print(f"stopped {name}")
    return 0
