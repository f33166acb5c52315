"""``spotshift jobs add|list|show`` (declared training jobs) and ``spotshift placement plan``.

Standard library only at module level: heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
import os
from typing import Any


def register(sub: Any) -> None:
    """Add the ``jobs`` and ``placement`` command groups."""
    j = sub.add_parser("jobs", help="declare and inspect training jobs")
    jsub = j.add_subparsers(dest="jobs_command", metavar="ACTION")
    jsub.required = True
    _add_jobs_add(jsub)
    _add_jobs_manage(jsub)
    _register_placement(sub)


def _add_jobs_add(jsub: Any) -> None:
    a = jsub.add_parser(
        "add",
        help="declare a training job",
        description="Declare a training job in $SPOTSHIFT_HOME/spotshift.yaml (section jobs). "
        "work_hours is instance-hours of work on the job's GPU requirement.",
    )
    a.add_argument("name", help="job name ([a-z0-9-_.]); also its Dagster partition key")
    a.add_argument("--dataset", required=True, help="declared dataset the job trains on")
    a.add_argument("--total-steps", type=int, required=True, help="optimizer steps of the whole run")
    a.add_argument("--work-hours", type=float, required=True, help="instance-hours the whole run needs")
    a.add_argument("--gpu-model", help="GPU model, e.g. A100 (matches A100-40GB and a100)")
    a.add_argument("--gpu-count", type=int, default=1, help="GPUs per instance (default 1)")
    a.add_argument(
        "--min-topology-score", type=float, default=0.0, help="0-10; multi-GPU training needs >= 7"
    )
    a.add_argument("--no-spot", action="store_true", help="on-demand only")
    a.add_argument(
        "--max-usd-per-hour", type=float, help="reject placements whose all-in hourly cost is higher"
    )
    a.add_argument(
        "--allow",
        action="append",
        metavar="LOCATION",
        help="allowed provider/region pattern (repeatable; e.g. 'gcp/*', 'aws/us-east-1'; default: any)",
    )
    a.add_argument("--deadline-hours", type=float, help="hours from submission to the deadline")
    a.add_argument("--submitted-at", help="ISO-8601 submission time (default: now on the virtual clock)")
    a.add_argument("--start-location", help="provider/region to start in (default: placement chooses)")
    a.add_argument(
        "--team",
        help="team whose monthly budget pays for the job (`spotshift budgets set TEAM`); placement never "
        "starts spend that would cross the team's limit",
    )
    a.add_argument(
        "--checkpoint-every-steps",
        type=int,
        default=500,
        metavar="STEPS",
        help="checkpoint cadence (default 500)",
    )
    a.add_argument(
        "--checkpoint-every-minutes",
        type=float,
        default=15.0,
        metavar="MIN",
        help="or every MIN minutes of wall time, whichever comes first (default 15)",
    )
    a.add_argument("--batch-size", type=int, default=8, metavar="N", help="sequences per step (default 8)")
    a.add_argument(
        "--learning-rate", type=float, default=3e-4, metavar="LR", help="AdamW peak rate (default 3e-4)"
    )
    a.add_argument("--seed", type=int, default=0, metavar="N", help="seed of weights and batches (default 0)")
    a.add_argument(
        "--model", metavar="KEY=INT,...", help="model config overrides, e.g. d_model=128,n_layer=4"
    )
    a.add_argument(
        "--command",
        metavar="CMD",
        help="your own training command (e.g. 'python train.py --lr 3e-4'), run by `spotshift run` and by "
        "moves in the current directory; it uses spotshift.checkpointing.Session (default: the built-in trainer)",
    )
    a.add_argument("--replace", action="store_true", help="replace an existing declaration of the same name")
    a.add_argument("--json", action="store_true", help="print the declaration as JSON")
    a.set_defaults(handler=_jobs_add)


def _add_jobs_manage(jsub: Any) -> None:
    """``jobs list | show | remove | import``."""
    ls = jsub.add_parser("list", help="list declared jobs with their placement")
    ls.add_argument("--json", action="store_true", help="print one JSON object")
    ls.set_defaults(handler=_jobs_list)

    sh = jsub.add_parser("show", help="one job: declaration and placement state")
    sh.add_argument("name", help="declared job")
    sh.add_argument("--json", action="store_true", help="print one JSON object")
    sh.set_defaults(handler=_jobs_show)

    rm = jsub.add_parser(
        "remove",
        help="undeclare a job and drop its placement state (refused while it runs or migrates)",
        description="Remove NAME from spotshift.yaml and delete its placement state. Refused while a trainer of "
        "the job is alive or its placement state says starting, running or migrating; --force overrides the "
        "state (left behind by a crashed run), never a live trainer. Checkpoints in the stores are kept.",
    )
    rm.add_argument("name", help="declared job")
    rm.add_argument("--force", action="store_true", help="remove even if the placement state says it runs")
    rm.add_argument("--json", action="store_true", help="print one JSON object")
    rm.set_defaults(handler=_jobs_remove)

    im = jsub.add_parser(
        "import",
        help="declare many jobs at once from a YAML or JSON list",
        description="Declare every job of FILE (a YAML or JSON list of job declarations, the fields of "
        "`spotshift jobs list --json`: name, dataset, total_steps, work_hours, ...) in one atomic write. "
        "All are validated first: one bad entry declares none. Names already declared are refused "
        "unless --replace.",
    )
    im.add_argument("file", help="YAML (.yaml/.yml) or JSON (.json) file holding a list of jobs")
    im.add_argument("--replace", action="store_true", help="replace existing declarations of the same names")
    im.add_argument("--json", action="store_true", help="print one JSON object")
    im.set_defaults(handler=_jobs_import)


def _register_placement(sub: Any) -> None:
    p = sub.add_parser("placement", help="rank placement candidates and decide for a declared job")
    psub = p.add_subparsers(dest="placement_command", metavar="ACTION")
    psub.required = True
    pl = psub.add_parser(
        "plan",
        help="score every quote of the latest snapshot for a job and show the decision",
        description="Rank the candidates of the latest quote snapshot in the warehouse (main.gpu_quotes) for "
        "JOB with every score term, and print the decision (place|move|stay|fallback_on_demand|queue) "
        "with its reasons. --record appends it to raw.decisions.",
    )
    pl.add_argument("name", help="declared job")
    pl.add_argument("--top", type=int, default=10, help="candidates to print (default 10)")
    pl.add_argument("--record", action="store_true", help="write the decision to raw.decisions")
    pl.add_argument("--json", action="store_true", help="print one JSON object")
    pl.set_defaults(handler=_placement_plan)
    da = psub.add_parser(
        "decide-all",
        help="run one price_change_sensor tick: decide for every declared job and record the decisions",
        description="Decide for every declared job that is not finished, migrating or busy (what one "
        "price_change_sensor tick runs: batched inputs, vectorised scoring, the decisions of "
        "`placement plan`) over the latest quote snapshot, record them in raw.decisions, and print "
        'the summary {"jobs": N, "seconds": S, "moves": M}. Requests no migration (Dagster does).',
    )
    da.add_argument("--no-record", action="store_true", help="decide without recording the decisions")
    da.add_argument("--json", action="store_true", help='print {"jobs", "seconds", "moves", "skipped"}')
    da.set_defaults(handler=_placement_decide_all)


def _model(text: str | None) -> dict[str, int]:
    from spotshift.errors import ConfigError
    from spotshift.jobs import DEFAULT_MODEL

    model = dict(DEFAULT_MODEL)
    for part in (text or "").split(","):
        if not part.strip():
            continue
        k, sep, v = part.partition("=")
        k = k.strip()
        if not sep or k not in DEFAULT_MODEL:
            raise ConfigError(
                f"--model entry {part!r}: expected KEY=INT with KEY one of {', '.join(DEFAULT_MODEL)}"
            )
        try:
            model[k] = int(v)
        except ValueError:
            raise ConfigError(f"--model entry {part!r}: {v!r} is not an integer") from None
    return model


def _jobs_add(args: argparse.Namespace) -> int:
    from spotshift.cliutil import emit_json
    from spotshift.clock import virtual_now
    from spotshift.jobs import TrainingJob, add_job

    job = TrainingJob(
        name=args.name,
        dataset=args.dataset,
        total_steps=args.total_steps,
        work_hours=args.work_hours,
        model=_model(args.model),
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        checkpoint_every_steps=args.checkpoint_every_steps,
        checkpoint_every_minutes=args.checkpoint_every_minutes,
        gpu_model=args.gpu_model,
        gpu_count=args.gpu_count,
        min_topology_score=args.min_topology_score,
        spot_allowed=not args.no_spot,
        max_usd_per_hour=args.max_usd_per_hour,
        allowed_locations=args.allow or ["*"],
        submitted_at=args.submitted_at or virtual_now().isoformat(),
        deadline_hours=args.deadline_hours,
        start_location=args.start_location,
        command=args.command,
        command_cwd=os.getcwd() if args.command else None,
        team=args.team,
    )
    add_job(job, replace=args.replace)
    if args.json:
        emit_json(job.to_dict())
    else:
        print(
            f"declared job {job.name}: {job.work_hours:g} h of work, {job.total_steps} steps on {_gpus(job)}"
        )
    return 0


def _gpus(job: Any) -> str:
    return f"{job.gpu_count}x {job.gpu_model or 'any GPU'}"


def _jobs_list(args: argparse.Namespace) -> int:
    from spotshift.cliutil import emit_json
    from spotshift.jobs import load_jobs
    from spotshift.placement.state import load_state

    jobs = load_jobs()
    states = {j.name: load_state(j.name) for j in jobs}
    if args.json:
        emit_json({"jobs": [{**j.to_dict(), "placement": states[j.name].to_dict()} for j in jobs]})
        return 0
    if not jobs:
        print(
            "no jobs declared; add one with "
            "`spotshift jobs add NAME --dataset D --total-steps N --work-hours H`"
        )
        return 0
    print(
        f"{'job':24s} {'dataset':16s} {'work h':>8s} {'GPUs':14s} {'spot':5s} {'deadline h':>10s} {'status':10s} location"
    )
    for j in jobs:
        st = states[j.name]
        where = f"{st.location} {st.market}" if st.location else "-"
        dl = f"{j.deadline_hours:g}" if j.deadline_hours else "-"
        print(
            f"{j.name:24s} {j.dataset:16s} {j.work_hours:8g} {_gpus(j):14s} {'yes' if j.spot_allowed else 'no':5s} "
            f"{dl:>10s} {st.status:10s} {where}"
        )
    return 0


def _jobs_show(args: argparse.Namespace) -> int:
    from spotshift.cliutil import emit_json
    from spotshift.jobs import get_job
    from spotshift.placement.state import load_state

    job = get_job(args.name)
    st = load_state(args.name)
    if args.json:
        emit_json({"job": job.to_dict(), "placement": st.to_dict()})
        return 0
    for k, v in job.to_dict().items():
        print(f"{k:26s} {v}")
    print("placement:")
    for k, v in st.to_dict().items():
        if k != "job":
            print(f"  {k:24s} {v}")
    return 0


def _jobs_remove(args: argparse.Namespace) -> int:
    from spotshift.cliutil import emit_json
    from spotshift.jobs import remove_job

    out = remove_job(args.name, force=args.force)
    if args.json:
        emit_json(out)
    else:
        print(f"removed job {args.name} (was {out['status_was']}; its checkpoints in the stores are kept)")
    return 0


def _placement_plan(args: argparse.Namespace) -> int:
    from spotshift import warehouse
    from spotshift.cliutil import emit_json
    from spotshift.clock import virtual_now
    from spotshift.placement.inputs import decide_for_job, record_decision

    now = virtual_now()
    with warehouse.connect() as con:
        d = decide_for_job(con, args.name, now=now)
        recorded = record_decision(con, d) if args.record else False
    if args.json:
        out = d.to_dict()
        out["candidates"] = [c.to_row() for c in d.candidates[: max(0, args.top)]]
        out["recorded"] = recorded
        emit_json(out)
        return 0
    target = d.target_location or "-"
    print(
        f"{d.job}: {d.action} -> {target} (snapshot {d.snapshot_id}, {d.remaining_hours:.1f} h of work left)"
    )
    for r in d.reasons:
        print(f"  - {r}")
    print(
        f"{'#':>3s} {'location':28s} {'market':9s} {'instance':18s} {'USD/h':>8s} {'eff/GPU-h':>9s} "
        f"{'+transfer':>9s} {'-locality':>9s} {'+risk':>7s} {'= expected':>10s}  rejected"
    )
    for c in d.candidates[: max(0, args.top)]:
        q = c.quote
        print(
            f"{c.rank or '-':>3} {q.location:28s} {q.market:9s} {q.instance_type:18s} {q.price_usd_hour:8.3f} "
            f"{c.effective_gpu_hour_usd:9.4f} {c.transfer_penalty_gpu_hour_usd:9.4f} "
            f"{c.locality_bonus_gpu_hour_usd:9.4f} {c.risk_gpu_hour_usd:7.4f} {c.expected_gpu_hour_usd:10.4f}  "
            f"{'; '.join(c.rejected)}"
        )
    if args.record:
        print("recorded in raw.decisions" if recorded else "already recorded (same decision id)")
    return 0


def _jobs_import(args: argparse.Namespace) -> int:
    from spotshift.cliutil import emit_json
    from spotshift.jobs import import_jobs, read_job_file

    jobs = read_job_file(args.file)
    import_jobs(jobs, replace=args.replace)
    if args.json:
        emit_json({"imported": len(jobs), "jobs": [j.name for j in jobs]})
    else:
        print(f"declared {len(jobs)} job(s) from {args.file}")
    return 0


def _placement_decide_all(args: argparse.Namespace) -> int:
    # the tick needs the trainers' liveness (spotshift.training) and the jobs the move lifecycle is not
    # busy with (spotshift.migration), which placement never imports: the command lives beside them
    import importlib

    return int(importlib.import_module("spotshift.migration.commands").decide_all(args))
