"""``spotshift train`` (start or resume a declared job) and ``spotshift trainers`` (list, stop).

Standard library at import time; torch is only imported by the trainer process itself.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from typing import Any

from spotshift.cliutil import deprecated_alias, emit_json


def register(sub: Any) -> None:
    _register_train(sub)
    _register_run(sub)
    _register_trainers(sub)


def _register_train(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="start or resume a declared training job as a trainer process",
        description="Runs the job's trainer in LOCATION (a provider/region label; its checkpoints go to that "
        "region's store). Resumes from the newest committed checkpoint there unless --resume says otherwise. "
        "In the foreground, Ctrl-C stops it at the next step boundary with a committed checkpoint.",
    )
    p.add_argument("job", help="declared job name (spotshift.yaml, section jobs)")
    p.add_argument(
        "--location",
        help="provider/region to run in (default: where the job last checkpointed, else its "
        "start_location, else where `spotshift placement plan` places it)",
    )
    bound = p.add_mutually_exclusive_group()
    bound.add_argument(
        "--steps", type=int, help="run this many steps past the resumed checkpoint, then checkpoint and stop"
    )
    bound.add_argument("--until-step", type=int, help="stop (with a checkpoint) after this absolute step")
    p.add_argument(
        "--resume",
        default="auto",
        help="auto (newest checkpoint in LOCATION's store that verifies, default; newer ones that do not are "
        "skipped with the reason) | none | a checkpoint path/URL in any store",
    )
    p.add_argument(
        "--replicate-to",
        action="append",
        default=[],
        metavar="LOCATION",
        help="also copy periodic checkpoints to this region's store (repeatable)",
    )
    p.add_argument(
        "--checkpoint-every-steps",
        type=int,
        metavar="STEPS",
        help="checkpoint every STEPS steps (default: the job's checkpoint_every_steps)",
    )
    deprecated_alias(p, "--checkpoint-every", "--checkpoint-every-steps", type=int, metavar="STEPS")
    p.add_argument("--key-provider", help="key provider spec (default $SPOTSHIFT_KEY_PROVIDER or local)")
    p.add_argument(
        "--detach", action="store_true", help="start in the background and return (see spotshift trainers)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress display (step, loss, rate on stderr at a terminal)",
    )
    p.set_defaults(handler=_train)


def _register_run(sub: Any) -> None:
    r = sub.add_parser(
        "run",
        help="run your own training command for a declared job (notices, checkpoints, moves)",
        description="Runs COMMAND for JOB in LOCATION under spotshift's wrapper: the command's "
        "spotshift.checkpointing.Session (Session.from_env()) checkpoints to LOCATION's region store on the "
        "job's cadence and resumes from its newest checkpoint; the wrapper watches the provider's preemption "
        "notices, forwards SIGTERM, waits for the emergency checkpoint until the deadline, and records usage. "
        "Without COMMAND the job's declared --command runs. The command's output is shown on stderr.",
        usage="spotshift run JOB [--location L] [options] [-- COMMAND [ARG ...]]",
    )
    r.add_argument("job", help="declared job name (spotshift jobs add NAME ... [--command CMD])")
    r.add_argument(
        "--location",
        help="provider/region to run in (default: where the job last checkpointed, else its start_location, "
        "else where `spotshift placement plan` places it)",
    )
    r.add_argument(
        "--resume",
        default="auto",
        help="auto (newest checkpoint in LOCATION's store that verifies, default) | none | a checkpoint path/URL",
    )
    r.add_argument("--key-provider", help="key provider spec (default $SPOTSHIFT_KEY_PROVIDER or local)")
    r.add_argument(
        "--detach", action="store_true", help="start in the background and return (see spotshift trainers)"
    )
    r.add_argument("--json", action="store_true", help="print one JSON object (the run's result)")
    # everything after `--` is the command (split off by spotshift.cli.main before parsing)
    r.set_defaults(handler=_run, command=[])


def _register_trainers(sub: Any) -> None:
    t = sub.add_parser("trainers", help="list or stop running trainer processes")
    ts = t.add_subparsers(dest="trainers_command", metavar="ACTION")
    ts.required = True
    ls = ts.add_parser("list", help="live trainers (optionally in one location)")
    ls.add_argument("--location", help="only trainers in this provider/region")
    ls.add_argument("--json", action="store_true", help="print one JSON object")
    ls.set_defaults(handler=_list)
    st = ts.add_parser(
        "stop", help="stop a job's trainer at the next step boundary with a committed checkpoint"
    )
    st.add_argument("job", help="job name")
    st.add_argument(
        "--preemption",
        action="store_true",
        help="treat it as a preemption (writes the preemption notice event the sensor reacts to)",
    )
    st.add_argument(
        "--timeout-seconds",
        type=float,
        default=300.0,
        metavar="S",
        help="seconds to wait for the checkpoint (default 300)",
    )
    deprecated_alias(st, "--timeout", "--timeout-seconds", type=float, metavar="S")
    st.add_argument("--json", action="store_true", help="print one JSON object")
    st.set_defaults(handler=_stop)


def _resume_arg(text: str) -> Any:
    if text in ("auto", "none"):
        return text
    from spotshift.checkpoint.format import parse_checkpoint_path

    store_url, _job, ckpt = parse_checkpoint_path(text)
    return {"store_url": store_url, "checkpoint_id": ckpt or "latest"}


def _location(args: argparse.Namespace, verb: str) -> tuple[str, dict[str, Any]]:
    """``--location``, else where the job should run (said on stderr), and the usage to price it with."""
    from spotshift.training.runs import train_location

    if args.location:
        return args.location, {}
    location, usage, why = train_location(args.job)
    sys.stderr.write(f"spotshift: {verb} {args.job} in {location}: {why}\n")
    return location, usage


def _train(args: argparse.Namespace) -> int:
    from spotshift.progress import progress_for
    from spotshift.training.backend import LocalProcessBackend
    from spotshift.training.runs import build_request, collect, watch_trainer

    location, usage = _location(args, "training")
    req = build_request(
        args.job,
        location,
        resume=_resume_arg(args.resume),
        steps=args.steps,
        until_step=args.until_step,
        replicate_to=args.replicate_to,
        key_provider=args.key_provider,
        checkpoint_every_steps=args.checkpoint_every_steps,
        usage=usage or None,
        run_id="cli:train",
    )
    if not req.usage.get("price_usd_hour"):
        sys.stderr.write(
            f"spotshift: warning: no validated quote fits {args.job} in {location}: its compute interval "
            "stays unpriced (spotshift report lists it); poll prices or choose a location "
            "`spotshift placement plan` ranks\n"
        )
    backend = LocalProcessBackend()
    info = backend.start(req)
    if args.detach:
        out = {"started": True, **info.to_dict()}
        emit_json(out) if args.json else print(
            f"started {info.name} in {info.location} (pid {info.pid}); logs in {info.workdir}"
        )
        return 0

    def forward(signum: int, _frame: Any) -> None:
        sys.stderr.write("stopping at the next step boundary (checkpointing)...\n")
        backend.stop(req.name, reason="interrupted from the command line", wait=False)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with progress_for(args.quiet) as progress:
            watch_trainer(
                backend, req.name, progress.task(f"train {req.job}", total=req.until_step, unit="steps")
            )
        result = collect(backend, req.name)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return _report(args, req, location, result)


def _report(args: argparse.Namespace, req: Any, location: str, result: dict[str, Any]) -> int:
    """Print a finished trainer's result (one line, or ``--json``); its exit code (2: raised)."""

    code = int(result.get("exit_code", 1))
    if code == 2:  # bad input or integrity: the trainer's one-line reason, exit 2
        from spotshift.errors import ConfigError

        raise ConfigError(str(result.get("error")))
    if args.json:
        emit_json(result)
    else:
        for skipped in result.get("skipped_checkpoints") or []:
            print(f"skipped checkpoint {req.job}/{skipped['checkpoint_id']}: {skipped['reason']}")
        ck = result.get("checkpoint") or {}
        print(
            f"{result.get('status')}: {req.job} in {location} at step {result.get('step')} "
            f"({result.get('steps_run', 0)} steps run)"
            + (f"; checkpoint {ck.get('url')}" if ck else "")
            + (f"; error: {result.get('error')}" if result.get("error") else "")
        )
    return code


def _run(args: argparse.Namespace) -> int:
    import os
    import time
    from pathlib import Path

    from spotshift.errors import ConfigError
    from spotshift.jobs import get_job
    from spotshift.training.backend import LocalProcessBackend
    from spotshift.training.runs import build_request, collect

    command = list(args.command)
    job = get_job(args.job)
    if not command and job.command is None:
        raise ConfigError(
            f"job {args.job!r} declares no --command: give one after `--` (spotshift run {args.job} -- python train.py)"
        )
    location, usage = _location(args, "running")
    req = build_request(
        args.job,
        location,
        resume=_resume_arg(args.resume),
        key_provider=args.key_provider,
        usage=usage or None,
        run_id="cli:run",
        command=command or None,
    )
    backend = LocalProcessBackend()
    info = backend.start(req)
    if args.detach:
        out = {"started": True, **info.to_dict()}
        emit_json(out) if args.json else print(
            f"started {info.name} in {info.location} (pid {info.pid}); output in {info.workdir}/trainer.out"
        )
        return 0

    def forward(signum: int, _frame: Any) -> None:
        if signum == signal.SIGTERM:  # what a cloud sends before reclaiming the VM: a preemption notice
            os.kill(info.pid, signal.SIGTERM)
        else:
            sys.stderr.write("stopping at the next step boundary (checkpointing)...\n")
            backend.stop(req.name, reason="interrupted from the command line", wait=False)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    out_path, pos = Path(info.workdir) / "trainer.out", 0
    try:
        with contextlib.suppress(OSError):
            pos = out_path.stat().st_size  # earlier runs' output
        while True:
            alive = (backend.status(req.name) or info).alive
            with contextlib.suppress(OSError), open(out_path, "rb") as f:
                f.seek(pos)
                chunk = f.read()
                pos += len(chunk)
                if chunk:
                    sys.stderr.buffer.write(chunk)
                    sys.stderr.flush()
            if not alive:
                break
            time.sleep(0.2)
        result = collect(backend, req.name)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return _report(args, req, location, result)


def _list(args: argparse.Namespace) -> int:
    from spotshift.training.backend import LocalProcessBackend

    backend = LocalProcessBackend()
    live = backend.list(args.location)
    if args.json:
        emit_json({"trainers": [dict(t.to_dict(), step=backend.progress(t.name)) for t in live]})
    elif not live:
        where = f" in {args.location}" if args.location else ""
        print(f"no trainers running{where}; start one with `spotshift train JOB`")
    else:
        print(f"{'trainer':30s} {'location':24s} {'pid':>8s} {'step':>8s}  workdir")
        for t in live:
            step = backend.progress(t.name)
            print(
                f"{t.name:30s} {t.location:24s} {t.pid:8d} {step if step is not None else '-':>8}  {t.workdir}"
            )
    return 0


def _stop(args: argparse.Namespace) -> int:
    from spotshift.training.backend import LocalProcessBackend
    from spotshift.training.runs import stop_with_checkpoint

    out = stop_with_checkpoint(
        LocalProcessBackend(),
        args.job,
        reason="spotshift trainers stop",
        preemption=args.preemption,
        timeout_s=args.timeout_seconds,
    )
    if args.json:
        emit_json({k: v for k, v in out.items() if k != "result"})
    else:
        verb = "stopped" if out["stopped"] else "no live trainer;"
        print(f"{verb} {args.job} in {out['location']}: checkpoint {out['checkpoint']['url']}")
    return 0
