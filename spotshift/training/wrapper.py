"""The wrapper around your own training command: what ``spotshift run`` and the compute backend start
for a job declared with ``--command`` (the trainer process of :mod:`spotshift.training.worker` sees
``command`` in its request and runs :func:`run_command` instead of the built-in trainer).

It holds the job's trainer lock (never two trainers of one job), starts the command in its own
process group with ``$SPOTSHIFT_RUN_REQUEST`` pointing at the run's request (what
:meth:`spotshift.checkpointing.Session.from_env` reads), and watches the location's notice
endpoints (AWS IMDSv2, GCP metadata, Azure Scheduled Events) and SIGTERM. On a notice it writes
``notice.json`` into the working directory (the command's Session sees it at its next
``step_done``), forwards SIGTERM to the command's process group, and waits for the command to exit
until the provider's deadline (then kills it). Afterwards it records what the built-in trainer
records: the notice event in the region store and the ``raw.preemptions`` fact (after the emergency
checkpoint committed), the ``raw.compute_usage`` fact of the steps the command ran, and
``result.json`` (``status``, ``step``, ``checkpoint``, ``notice``, ``emergency``, ``command_exit_code``).
The Session writes the ``raw.checkpoints`` facts of its uploads itself.

A multi-process command (``torchrun``) whose Session reported ``running`` gets no SIGTERM until its
emergency checkpoint is done (:meth:`CommandRun._may_signal`).

A command that does not use a Session still runs, gets SIGTERM on a notice and is recorded; its
result then says that no emergency checkpoint was reported (exit code 1).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from spotshift.atomic import atomic_write_json
from spotshift.checkpoint.format import StoredCheckpoint, latest_checkpoint
from spotshift.clock import parse_utc, virtual_now
from spotshift.errors import ConfigError
from spotshift.sync.store_url import open_store
from spotshift.training.backend import NOTICE_FILE, SESSION_FILE, STOPPING_FILE
from spotshift.training.preemption import utc_now
from spotshift.training.request import REQUEST_ENV
from spotshift.training.trainer_record import record_preemption, usage_fact
from spotshift.training.trainer_run import TrainerRun

log = logging.getLogger("spotshift.trainer")

#: seconds a command without a ready Session gets before its SIGTERM (one with a Session at once)
SESSION_GRACE_S = 2.0
#: seconds kept between killing the command and the provider's deadline
DEADLINE_MARGIN_S = 0.5


def command_env(req: Any, request_path: Path) -> dict[str, str]:
    """The environment of the command: ours plus what :meth:`Session.from_env` and scripts read."""
    env = {
        **os.environ,
        REQUEST_ENV: str(request_path),
        "SPOTSHIFT_JOB": req.job,
        "SPOTSHIFT_LOCATION": req.location,
        "SPOTSHIFT_WORKDIR": str(req.workdir),
        "PYTHONUNBUFFERED": "1",
    }
    if req.dataset_source:
        env["SPOTSHIFT_DATASET_SOURCE"] = req.dataset_source
    if req.config.get("total_steps"):
        env["SPOTSHIFT_TOTAL_STEPS"] = str(req.config["total_steps"])
    return env


class CommandRun(TrainerRun):
    """One run of a user command under the wrapper (signals and watchers as the built-in trainer's)."""

    def run(self) -> None:
        req = self.req
        self.region = open_store(req.store_url)
        request_path = self.workdir / "request.json"
        if not request_path.exists():
            req.save(request_path)
        for stale in (NOTICE_FILE, SESSION_FILE):
            (self.workdir / stale).unlink(missing_ok=True)
        log.info("starting %s for job %s in %s", " ".join(req.command or []), req.job, req.location)
        try:
            self.proc = subprocess.Popen(
                req.command or [],
                cwd=req.command_cwd or None,
                env=command_env(req, request_path),
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: a notice reaches every process of it
            )
        except OSError as exc:
            raise ConfigError(f"job {req.job}: cannot start {req.command[0]!r}: {exc.strerror}") from None
        self.result["command_pid"] = self.proc.pid
        self.result["status"] = "running"
        while self.proc.poll() is None:
            if self.controller.wait(0.05):
                self._deliver_notice()
                break
        code = self.proc.wait()
        self._collect(code)

    # -- a notice: hand it to the command and wait for its emergency checkpoint -----------------------
    def _deliver_notice(self) -> None:
        notice = self.controller.notice
        assert notice is not None
        notice.assign_id(self.req.job, self.req.location)
        doc = {**notice.to_dict(), "monotonic_at": notice.monotonic_at}
        atomic_write_json(self.workdir / NOTICE_FILE, doc, fsync=False)
        atomic_write_json(
            self.workdir / STOPPING_FILE,
            {"notice_id": notice.notice_id, "kind": notice.kind, "preemption": notice.is_preemption},
            fsync=False,
        )
        log.warning(
            "%s notice %s: deadline in %.1fs, waiting for the command's emergency checkpoint",
            notice.kind,
            notice.notice_id,
            notice.remaining_s(),
        )
        signalled = False
        while self.proc.poll() is None:
            left = notice.remaining_s() - DEADLINE_MARGIN_S
            if left <= 0:
                log.error("command still running at the deadline: killing it")
                self.result["error"] = "the command did not finish before the notice's deadline (killed)"
                self._signal(signal.SIGKILL)
                break
            if not signalled and self._may_signal(time.monotonic() - notice.monotonic_at):
                self._signal(signal.SIGTERM)  # forward: a Session takes it as the notice, others stop
                signalled = True
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=min(0.05, left))

    def _may_signal(self, waited: float) -> bool:
        """Whether to forward SIGTERM now: once the Session reported its emergency checkpoint, or
        ``SESSION_GRACE_S`` after the notice when there is no Session. A multi-process Session reports
        ``running`` from its start and is left alone until it is done: each rank reads ``notice.json``
        itself, and a SIGTERM to ``torchrun`` would start its own countdown (30 s) to SIGKILL of the
        ranks, cutting a longer emergency checkpoint short (the deadline kill still applies)."""
        try:
            status = json.loads((self.workdir / SESSION_FILE).read_text()).get("status")
        except (OSError, ValueError, AttributeError):
            return waited >= SESSION_GRACE_S
        return status != "running"

    def kill_command(self) -> None:
        """SIGKILL the command's process group at once (its trainer lost the run-level lock)."""
        if getattr(self, "proc", None) is not None:
            self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    # -- after the command exited ----------------------------------------------------------------------
    def _collect(self, code: int) -> None:
        req = self.req
        try:
            sess = json.loads((self.workdir / SESSION_FILE).read_text())
        except (OSError, ValueError):
            sess = {}
        self.result["command_exit_code"] = code
        for key in ("resumed_from", "skipped_checkpoints", "shadow"):
            if sess.get(key):
                self.result[key] = sess[key]
        self.start_step = int(sess.get("start_step") or 0)
        step = int(sess.get("step") or self.start_step)
        tokens = int(sess.get("tokens") or 0)
        self.result.update(
            {
                "start_step": self.start_step,
                "step": step,
                "tokens": tokens,
                "steps_run": step - self.start_step,
            }
        )
        if sess.get("checkpoint"):
            self.result["checkpoint"] = sess["checkpoint"]
        notice = self.controller.notice
        status = str(sess.get("status") or "failed")
        if notice is not None:
            self._after_notice(notice, sess, step, code)
        elif code != 0 or status not in ("completed", "stopped_at_step"):
            self.result["status"] = "failed"
            self.result["error"] = sess.get("error") or f"the command exited with code {code}"
            self.result["exit_code_hint"] = 1
        else:
            self.result["status"] = status
        if req.role == "train":
            self.facts.append(
                "raw.compute_usage",
                usage_fact(
                    req,
                    started=self.started_virtual,
                    steps=step - self.start_step,
                    tokens=tokens - int(sess.get("start_tokens") or 0),
                    ended_in_preemption=self.result["status"] == "preempted",
                ),
            )
        self.result["ended_at"] = virtual_now().isoformat()

    def _after_notice(self, notice: Any, sess: dict[str, Any], step: int, code: int) -> None:
        """The result and facts of a run a notice ended: the emergency checkpoint the Session reported
        (or the error that it reported none), the notice event and ``raw.preemptions``."""
        req = self.req
        emergency = sess.get("emergency")
        ckpt = sess.get("checkpoint") or sess.get("resumed_from") or self._latest_ref()
        if emergency and not sess.get("error"):
            emergency_s = float(emergency["seconds"])
            committed_wall = parse_utc(emergency["committed_at"])
            self.result["emergency"] = emergency
        else:
            self.result.setdefault(
                "error",
                sess.get("error")
                or f"the command exited ({code}) without reporting an emergency checkpoint "
                "(does it call Session.step_done?)",
            )
            emergency_s, committed_wall = time.monotonic() - notice.monotonic_at, utc_now()
        self.result["notice"] = notice.to_dict()
        margin = (notice.deadline_at - committed_wall).total_seconds()
        log.warning(
            "emergency checkpoint of step %d committed %.3fs after the notice, %.1fs before the deadline%s",
            step,
            emergency_s,
            margin,
            "" if margin > 0 else " (DEADLINE MISSED)",
        )
        if notice.is_preemption:
            virtual = emergency.get("virtual_noticed_at") if emergency else None
            record_preemption(
                self.region,
                self.facts,
                req,
                notice,
                step=step,
                checkpoint=ckpt,
                emergency_s=emergency_s,
                committed_wall=committed_wall,
                virtual_noticed=parse_utc(virtual) if virtual else virtual_now(),
                watcher=self.watcher_thread,
            )
        self.result["status"] = "preempted" if notice.is_preemption else "stopped"
        if "error" in self.result:
            self.result["exit_code_hint"] = 1

    def _latest_ref(self) -> dict[str, Any] | None:
        found = latest_checkpoint(self.region, self.req.job)
        return StoredCheckpoint(self.region, self.req.job, found).ref().to_dict() if found else None
