"""``spotshift devenvs add|list|start|check|hibernate|resume|report``: idle dev/test environments.

Standard library only at module level: heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
from typing import Any

from spotshift.cliutil import emit_json


def register(sub: Any) -> None:
    """Add the ``devenvs`` command group."""
    d = sub.add_parser(
        "devenvs", help="dev/test environments: hibernate or downsize when idle, resume in one step"
    )
    dsub = d.add_subparsers(dest="devenvs_command", metavar="ACTION")
    dsub.required = True

    a = dsub.add_parser(
        "add",
        help="declare a dev/test environment",
        description="Declare a workspace and the command serving it. After --idle-hours without activity "
        "(CPU use of its processes, its heartbeat file, requests served) the policy applies: hibernate "
        "(workspace delta-synced to the region's store and verified, process stopped) or cpu (restarted "
        "without GPUs on a CPU instance). Seed 001's figure: 4 hours.",
    )
    a.add_argument("name", help="environment name ([a-z0-9-])")
    a.add_argument("--workspace", required=True, help="the environment's working directory")
    a.add_argument("--command", required=True, help="what serves it (run with sh -c in the workspace)")
    a.add_argument("--gpu-model", required=True, help="GPU model it runs on, e.g. A100, L4")
    a.add_argument("--gpu-count", type=int, default=1, help="GPUs (default 1)")
    a.add_argument("--idle-hours", type=float, default=4.0, help="idle limit in hours (default 4, seed 001)")
    a.add_argument("--team", default="default", help="team the waste avoided is reported for")
    a.add_argument(
        "--policy",
        choices=["hibernate", "cpu"],
        default="hibernate",
        help="what idleness does (default hibernate)",
    )
    a.add_argument("--location", default="", help="provider/region (default: the cheapest suitable offer)")
    a.add_argument(
        "--allow",
        action="append",
        metavar="LOCATION",
        help="allowed provider/region pattern for resume (repeatable)",
    )
    a.add_argument("--replace", action="store_true", help="replace an existing declaration")
    a.set_defaults(handler=_add)

    ls = dsub.add_parser("list", help="environments, status, place, idle time")
    ls.add_argument("--json", action="store_true", help="print one JSON object")
    ls.set_defaults(handler=_list)

    for verb, helptext in (
        ("start", "start the environment's process"),
        ("check", "sample activity; apply the policy when idle past the limit"),
        ("hibernate", "snapshot the workspace to the region store and stop the process now"),
        ("resume", "restore the workspace byte for byte in the cheapest suitable place and start it"),
    ):
        p = dsub.add_parser(verb, help=helptext)
        p.add_argument("name", help="declared environment")
        p.add_argument(
            "--at", metavar="TIME", help="ISO-8601 UTC time to act at (default: the virtual clock)"
        )
        p.add_argument("--json", action="store_true", help="print one JSON object")
        p.set_defaults(handler=_verb, verb=verb)

    r = dsub.add_parser("report", help="idle GPU-hours and dollars not paid, per team")
    r.add_argument("--at", metavar="TIME", help="ISO-8601 UTC time to report at (default: the virtual clock)")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.set_defaults(handler=_report)


def _now(args: argparse.Namespace) -> Any:
    from spotshift.clock import parse_utc, virtual_now

    return parse_utc(args.at) if args.at else virtual_now()


def _add(args: argparse.Namespace) -> int:
    import os

    from spotshift.devenvs.env import DevEnv, add_devenv

    env = DevEnv(
        name=args.name,
        workspace=os.path.abspath(args.workspace),
        command=args.command,
        gpu_model=args.gpu_model,
        gpu_count=args.gpu_count,
        idle_hours=args.idle_hours,
        team=args.team,
        policy=args.policy,
        location=args.location,
        allowed_locations=args.allow or ["*"],
    )
    add_devenv(env, replace=args.replace)
    print(
        f"devenv {env.name}: {env.gpu_count}x {env.gpu_model}, {env.policy} after {env.idle_hours:g} h idle (team {env.team})"
    )
    return 0


def _line(doc: dict[str, Any]) -> str:
    where = doc.get("location", "")
    price = doc.get("usd_hour")
    cost = (
        f" ${price:.2f}/h"
        if isinstance(price, (int, float)) and doc["status"] in ("running", "downsized")
        else ""
    )
    return f"{doc['name']}: {doc['status']} {where}{cost}".rstrip()


def _list(args: argparse.Namespace) -> int:
    from spotshift.devenvs.env import load_devenvs
    from spotshift.devenvs.state import load_env_state

    rows = []
    for env in load_devenvs():
        doc = load_env_state(env.name)
        rows.append(
            {
                "name": env.name,
                "team": env.team,
                "status": doc["status"],
                "location": doc.get("location", ""),
                "usd_hour": doc.get("usd_hour"),
                "last_active_at": doc.get("last_active_at"),
            }
        )
    if args.json:
        emit_json({"devenvs": rows})
    else:
        for env in load_devenvs():
            print(_line(load_env_state(env.name)))
    return 0


def _verb(args: argparse.Namespace) -> int:
    from spotshift.devenvs import runtime
    from spotshift.devenvs.activity import observe
    from spotshift.devenvs.state import load_env_state

    now = _now(args)
    if args.verb == "check":
        act = observe(args.name, now=now)
        doc = runtime.act_on_idle(args.name, now=now) if act.over_limit else load_env_state(args.name)
        if args.json:
            emit_json({"activity": act.__dict__, "status": doc["status"]})
        else:
            moved = ", ".join(act.active) or "nothing"
            print(
                f"{args.name}: {act.status}, idle {act.idle_hours:.2f} h of {act.idle_limit_hours:g} h (activity: {moved})"
            )
            if act.over_limit:
                print(_line(doc))
        return 0
    fn = {"start": runtime.start, "hibernate": runtime.hibernate, "resume": runtime.resume}[args.verb]
    doc = fn(args.name, now=now)
    if args.json:
        emit_json({k: v for k, v in doc.items() if k != "events"} | {"last_event": doc["events"][-1]})
    else:
        print(_line(doc))
    return 0


def _report(args: argparse.Namespace) -> int:
    from spotshift.devenvs.runtime import waste_report

    rep = waste_report(now=_now(args))
    if args.json:
        emit_json(rep)
        return 0
    if not rep["teams"]:
        print("no dev environments declared")
    for team, t in sorted(rep["teams"].items()):
        print(
            f"team {team}: {t['gpu_hours']:.1f} idle GPU-hours not paid, ${t['usd']:,.2f} avoided ({t['environments']:g} environments)"
        )
    return 0
