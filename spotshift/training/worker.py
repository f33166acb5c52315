"""The trainer process: ``python -m spotshift.training.worker --request <workdir>/request.json``.

Lifecycle: take the job's trainer lock (a second trainer of the same job exits 3 without touching
anything), resume from the requested checkpoint (verified, in whatever store it is), train with
periodic checkpoints (local disk, background upload to the region store, optional cross-region
copies), and stop at the first of: ``until_step``, a preemption notice from the provider's
metadata endpoint, SIGTERM (SIGINT). On a notice it stops at the next step boundary, commits an
emergency checkpoint in the region store, records the notice event (for the preemption sensor:
``events/preemption/<notice_id>.json`` there, or a row in PostgreSQL, :mod:`~spotshift.training.notice_events`), acknowledges the notice (Azure), logs how long it took against the
deadline, and exits 0. Results go to ``<workdir>/result.json``; warehouse facts to
``<workdir>/facts/`` (see :mod:`spotshift.facts`).

A request with a ``command`` runs that command under the wrapper instead of the built-in trainer
(:mod:`spotshift.training.wrapper`; same lock, signals, notices, result and facts).

Exit codes: 0 done (completed, stopped or preempted with a committed checkpoint), 1 unexpected
failure, 2 bad input / integrity (one line in ``result.json`` and on stderr), 3 another trainer of
the job holds the lock, 4 the lock was lost while running (its PostgreSQL session ended: the trainer
stops within :data:`spotshift.runlocks.WATCH_INTERVAL_S` seconds and commits nothing after the
loss, result status ``lock_lost``; a ``command`` is killed with it, :func:`~spotshift.training.backend.fence_trainer_lock`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from spotshift.atomic import atomic_write_json
from spotshift.errors import SpotshiftError
from spotshift.facts import ingest_facts
from spotshift.training.backend import (
    RESULT_FILE,
    acquire_trainer_lock,
    fence_trainer_lock,
    unfence,
)
from spotshift.training.request import TrainRequest
from spotshift.training.trainer_run import EXIT_LOCKED, TrainerRun, setup_logging
from spotshift.training.wrapper import CommandRun

log = logging.getLogger("spotshift.trainer")


def run_request(req: TrainRequest) -> int:
    """Run one trainer to its end in this process; returns the exit code (see module docstring)."""
    workdir = Path(req.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    setup_logging(workdir)
    lock = acquire_trainer_lock(req.name)
    if lock is None:
        msg = (
            f"job {req.job}: another trainer ({req.name}) is already running; refusing to start a second one"
        )
        log.error(msg)
        sys.stderr.write(msg + "\n")
        return EXIT_LOCKED
    if req.command:  # your own training command under the wrapper
        run: TrainerRun = CommandRun(req)
    else:
        run = TrainerRun(req)
    fence_trainer_lock(
        lock, req.job, workdir / RESULT_FILE, run.result, also=getattr(run, "kill_command", None)
    )
    run.install_signals()
    code = 0
    try:
        run.start_watchers()
        run.run()
    except SpotshiftError as exc:
        run.result.update({"status": "failed", "error": str(exc)})
        log.error("%s", exc)
        code = 2
    except Exception as exc:
        log.exception("trainer failed")
        run.result.update({"status": "failed", "error": f"{type(exc).__name__}: {exc}"})
        code = 1
    finally:
        if run.watcher_thread is not None:
            run.watcher_thread.stop()
        if code == 0 and run.result.pop("exit_code_hint", 0):
            code = 1  # preempted, but the emergency checkpoint did not make it to the store
        run.result["exit_code"] = code
        atomic_write_json(workdir / RESULT_FILE, run.result)
    if code == 0:
        _ingest_quietly(run)
    lock.release()
    unfence(req.job)
    return code


def _ingest_quietly(run: TrainerRun) -> None:
    """Move this run's facts into the warehouse if the lock is free soon; otherwise leave them pending."""
    notice = run.controller.notice
    budget = 5.0 if notice is None else max(0.0, min(5.0, notice.remaining_s() - 2.0))
    if budget <= 0:
        return
    try:
        ingest_facts(run.workdir, timeout_s=budget)
    except Exception as exc:  # facts stay pending; the collector ingests them
        log.info("facts left pending for the collector (%s)", exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spotshift.training.worker", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--request", required=True, help="path of the request.json written by the backend")
    args = parser.parse_args(argv)
    try:
        req = TrainRequest.load(args.request)
    except SpotshiftError as exc:
        sys.stderr.write(f"spotshift trainer: error: {exc}\n")
        return 2
    return run_request(req)


if __name__ == "__main__":
    sys.exit(main())
