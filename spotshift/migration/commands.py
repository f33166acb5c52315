"""``spotshift move JOB --to PROVIDER/REGION``: move a training job by hand, without Dagster.

Standard library only at module level: heavy imports happen inside the handler.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import Any


def register(sub: Any) -> None:
    """Add the ``move`` command."""
    p = sub.add_parser(
        "move",
        help="move a training job to another region now (the whole lifecycle, without Dagster)",
        description="Plans the move from the latest prices (the best eligible offer in the target), then runs "
        "the same steps as migration_job: fingerprint and replicate the dataset, drain the source, carry the "
        "checkpoint, a probation of K steps in the target, the shadow validation against the source, go live. "
        "A failed step or a failed blocking check rolls the move back (the source resumed, the target unfit "
        "for 24 h). A job that is not running is placed (no drain, no shadow). Facts go to the warehouse as "
        "with Dagster. Exit 0 when the job runs in the target, 1 when the move was rolled back, 2 on bad input.",
    )
    p.add_argument("job", help="declared job name")
    p.add_argument(
        "--to", required=True, metavar="PROVIDER/REGION", dest="to_location", help="target location"
    )
    p.add_argument(
        "--shadow-steps",
        type=int,
        default=20,
        metavar="K",
        help="steps the probation and the source's shadow run take (default 20)",
    )
    p.add_argument(
        "--perturb-learning-rate",
        type=float,
        default=0.0,
        metavar="LR",
        help="train the target's probation with this learning rate (to see a failing validation roll back)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_move)


def _move(args: argparse.Namespace) -> int:
    from spotshift.errors import ConfigError
    from spotshift.jobs import get_job
    from spotshift.migration.run import move_by_hand
    from spotshift.migration.state import ShadowOptions
    from spotshift.pricing.regions import split_location

    get_job(args.job)
    split_location(args.to_location)
    if args.shadow_steps <= 0:
        raise ConfigError(f"--shadow-steps must be > 0, got {args.shadow_steps}")
    if args.perturb_learning_rate < 0:
        raise ConfigError(f"--perturb-learning-rate must be >= 0, got {args.perturb_learning_rate}")

    def log(message: str) -> None:
        sys.stderr.write(f"{message}\n")

    outcome = move_by_hand(
        args.job,
        args.to_location,
        shadow=ShadowOptions(
            shadow_steps=args.shadow_steps, perturb_learning_rate=args.perturb_learning_rate
        ),
        run_id=f"move-{uuid.uuid4().hex[:12]}",
        log=None if args.json else log,
    )
    if args.json:
        from spotshift.cliutil import emit_json

        emit_json(outcome.to_dict())
    else:
        plan = outcome.plan
        src = plan.from_location or "(not running)"
        if outcome.status == "cut_over":
            print(f"{plan.job}: {src} -> {plan.to_location} ({plan.market} {plan.instance_type}): cut over")
        else:
            print(f"{plan.job}: {src} -> {plan.to_location}: rolled back ({outcome.error})")
    return 0 if outcome.status == "cut_over" else 1


def decide_all(args: Any) -> int:
    """``spotshift placement decide-all``: one price_change_sensor tick without Dagster
    (:func:`spotshift.migration.plan.tick`), registered with the ``placement`` commands."""
    from spotshift import warehouse
    from spotshift.cliutil import emit_json
    from spotshift.clock import virtual_now
    from spotshift.migration.plan import tick
    from spotshift.training.backend import open_backend

    with warehouse.connect() as con:
        result = tick(con, open_backend("local"), now=virtual_now(), record=not args.no_record)
    summary = result.summary()
    if args.json:
        emit_json(summary)
        return 0
    by_action: dict[str, int] = {}
    for d in result.decisions:
        by_action[d.action] = by_action.get(d.action, 0) + 1
    actions = ", ".join(f"{n} {a}" for a, n in sorted(by_action.items())) or "none"
    print(
        f"decided for {summary['jobs']} job(s) in {summary['seconds']:.2f} s: {actions}; "
        f"{summary['moves']} change a placement"
    )
    return 0
