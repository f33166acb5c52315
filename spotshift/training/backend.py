"""``ComputeBackend``: starts, stops, queries and lists trainer processes per location.

:class:`LocalProcessBackend` (the embedded default) runs each trainer as a local process
(``python -m spotshift.training.worker``) labelled with its ``provider/region`` location, and keeps
a pid file per trainer under ``$SPOTSHIFT_HOME/run/trainers/<name>.json`` so any later process
(the command line, another Dagster run) finds it. ``<name>`` is the job for training runs and
``<job>.shadow-<side>`` for shadow runs.

Never two live trainers for one job: the worker holds the run-level lock of ``<name>``
(:mod:`spotshift.runlocks`: an ``flock`` on ``run/trainers/<name>.lock``, or a PostgreSQL advisory
lock when the instance is on PostgreSQL) for its whole life (released when the process dies, even
on SIGKILL) and exits 3 if it cannot take it; the backend refuses to start a trainer while that
lock is held or the pid file names a live process (:func:`trainer_is_live` checks both, and is what
other parts of spotshift should call). Standard library + psutil only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from spotshift import runlocks
from spotshift.atomic import atomic_write_json
from spotshift.checkpoint import fence
from spotshift.clock import virtual_now
from spotshift.errors import ConfigError, NotFoundError
from spotshift.home import run_dir
from spotshift.pricing.regions import split_location
from spotshift.runlocks import HeldLock
from spotshift.training.request import TrainRequest

RESULT_FILE = "result.json"
METRICS_FILE = "metrics.jsonl"
STOP_REQUEST_FILE = "stop-request.json"
STOPPING_FILE = "stopping.json"  # written by a trainer the moment it starts to stop (notice or request)
NOTICE_FILE = "notice.json"  # `spotshift run`: the notice the wrapper hands its command's Session
SESSION_FILE = (
    "session.json"  # `spotshift run`: what the command's Session reports (step, checkpoint, notice)
)


def trainers_dir() -> Path:
    return run_dir() / "trainers"


def default_workdir(job: str, location: str, role: str = "train", side: str = "") -> Path:
    """``$SPOTSHIFT_HOME/run/work/<job>/<provider>/<region>[/shadow-<side>]``."""
    provider, region = split_location(location, zone=True)
    base = run_dir() / "work" / job / provider / region
    return base / f"shadow-{side}" if role == "shadow" else base


def acquire_trainer_lock(name: str, *, wait_s: float = 2.0) -> HeldLock | None:
    """The run-level lock of trainer ``name`` (:mod:`spotshift.runlocks`; keep the handle, call
    ``release()`` at the end), or None when a live process holds it."""
    return runlocks.acquire(name, wait_s=wait_s)


EXIT_LOCK_LOST = 4  # a trainer whose run-level lock was lost while it ran (fence_trainer_lock)


def fence_trainer_lock(
    lock: HeldLock,
    job: str,
    result_path: Path,
    result: dict[str, Any],
    *,
    also: Callable[[], None] | None = None,
) -> None:
    """Fence trainer ``job`` on ``lock``: no checkpoint of ``job`` commits once the lock is lost
    (:mod:`spotshift.checkpoint.fence`), and the process ends within
    :data:`~spotshift.runlocks.WATCH_INTERVAL_S` of the loss, with one error line naming the job and
    the lock, ``result`` written to ``result_path`` with status ``lock_lost``, and exit code
    :data:`EXIT_LOCK_LOST`; ``also()`` runs first (the wrapper kills its command).
    ``lock.release()`` stops the watch; call :func:`unfence` after it."""

    def on_lost() -> None:
        logging.getLogger("spotshift.trainer").error(
            "job %s: run-level lock %s lost (its session ended); stopping now without committing",
            job,
            lock.name,
        )
        if also is not None:
            with contextlib.suppress(Exception):
                also()
        with contextlib.suppress(Exception):  # exiting matters more than the report
            atomic_write_json(result_path, {**result, "status": "lock_lost", "exit_code": EXIT_LOCK_LOST})
        logging.shutdown()
        os._exit(EXIT_LOCK_LOST)  # another trainer may hold the lock now: stop at once, whatever runs

    fence.install(job, lock.alive, on_lost)  # whichever notices first: a commit or the watch
    lock.watch(on_lost)


def unfence(job: str) -> None:
    """Undo :func:`fence_trainer_lock` for ``job`` (after the lock is released)."""
    fence.remove(job)


def lock_held(name: str) -> bool:
    """Whether a live process holds the trainer lock of ``name`` (here, or on any host of a
    PostgreSQL instance)."""
    return runlocks.held(name)


@dataclass
class TrainerInfo:
    """A trainer process as the backend knows it."""

    name: str
    job: str
    location: str
    role: str
    pid: int
    create_time: float
    workdir: str
    started_at: str
    alive: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _process_alive(pid: int, create_time: float) -> bool:
    import psutil

    try:
        p = psutil.Process(pid)
        return abs(p.create_time() - create_time) < 0.01 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def trainer_is_live(name: str) -> bool:
    """The one check for "is a trainer of ``name`` running": its lock is held or its pid file is live."""
    if lock_held(name):
        return True
    info = _read_pidfile(trainers_dir() / f"{name}.json")
    return info is not None and _process_alive(info.pid, info.create_time)


def _read_pidfile(path: Path) -> TrainerInfo | None:
    try:
        raw = json.loads(path.read_text())
        return TrainerInfo(**{k: raw[k] for k in TrainerInfo.__dataclass_fields__ if k in raw})
    except (OSError, ValueError, TypeError):
        return None


class ComputeBackend(ABC):
    """Where trainers run. ``kind`` names the implementation (``local`` here; a cloud launcher later)."""

    kind: str

    @abstractmethod
    def start(self, request: TrainRequest) -> TrainerInfo:
        """Start a trainer; :class:`ConfigError` if one of the same name is live."""

    @abstractmethod
    def stop(
        self,
        name: str,
        *,
        reason: str = "stop",
        preemption: bool = False,
        wait: bool = True,
        timeout_s: float | None = 300.0,
    ) -> dict[str, Any] | None:
        """Send the trainer its stop notice (SIGTERM); with ``wait`` return its result."""

    @abstractmethod
    def status(self, name: str) -> TrainerInfo | None:
        """The trainer named ``name`` (live or last known), or None."""

    @abstractmethod
    def list(self, location: str | None = None) -> list[TrainerInfo]:
        """Live trainers, optionally only those in ``location``."""

    def stopping(self, name: str) -> bool:
        """Whether trainer ``name`` is alive but already stopping (a preemption notice or a stop
        request reached it): the control plane must not plan around it as if it were running."""
        return False

    @abstractmethod
    def wait(self, name: str, timeout_s: float | None = None) -> dict[str, Any]:
        """Wait for the trainer to exit and return its ``result.json``."""


class LocalProcessBackend(ComputeBackend):
    """Trainers as local processes (one per job; shadow runs side by side)."""

    kind = "local"

    def __init__(self, python: str | None = None):
        self.python = python or sys.executable
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def dir(self) -> Path:
        d = trainers_dir()
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _pidfile(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    @contextlib.contextmanager
    def _backend_lock(self):  # noqa: ANN202
        with open(self.dir / ".backend.lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def start(self, request: TrainRequest) -> TrainerInfo:
        import psutil

        name = request.name
        with self._backend_lock():
            if trainer_is_live(name):
                live = self.status(name)
                where = f" in {live.location} (pid {live.pid})" if live else ""
                raise ConfigError(
                    f"job {request.job}: a trainer ({name}) is already running{where}; stop it first"
                )
            workdir = Path(request.workdir)
            workdir.mkdir(parents=True, exist_ok=True)
            for stale in (
                RESULT_FILE,
                STOP_REQUEST_FILE,
                METRICS_FILE,
                STOPPING_FILE,
                NOTICE_FILE,
                SESSION_FILE,
            ):
                (workdir / stale).unlink(missing_ok=True)
            req_path = request.save(workdir / "request.json")
            out = open(workdir / "trainer.out", "ab")  # noqa: SIM115 - handed to the child
            try:
                proc = subprocess.Popen(
                    [self.python, "-m", "spotshift.training.worker", "--request", str(req_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # outlives the process that started it (a Dagster step)
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            finally:
                out.close()
            info = TrainerInfo(
                name=name,
                job=request.job,
                location=request.location,
                role=request.role,
                pid=proc.pid,
                create_time=psutil.Process(proc.pid).create_time(),
                workdir=str(workdir),
                started_at=virtual_now().isoformat(),
                alive=True,
            )
            atomic_write_json(self._pidfile(name), info.to_dict())
            self._procs[name] = proc
            return info

    def status(self, name: str) -> TrainerInfo | None:
        info = _read_pidfile(self._pidfile(name))
        if info is None:
            return None
        info.alive = _process_alive(info.pid, info.create_time)
        if not info.alive and name in self._procs:
            self._procs.pop(name).poll()  # reap our own child
        return info

    def list(self, location: str | None = None) -> list[TrainerInfo]:
        out = []
        for p in sorted(self.dir.glob("*.json")):
            info = self.status(p.stem)
            if info and info.alive and (location is None or info.location == location):
                out.append(info)
        return out

    def result(self, name: str) -> dict[str, Any] | None:
        """The trainer's ``result.json`` if it has finished."""
        info = _read_pidfile(self._pidfile(name))
        if info is None:
            return None
        try:
            return json.loads((Path(info.workdir) / RESULT_FILE).read_text())
        except (OSError, ValueError):
            return None

    def stopping(self, name: str) -> bool:
        info = self.status(name)
        if info is None or not info.alive:
            return False
        workdir = Path(info.workdir)
        return (workdir / STOPPING_FILE).exists() or (workdir / STOP_REQUEST_FILE).exists()

    def progress(self, name: str) -> int | None:
        """The last step the trainer logged (None before its first step)."""
        last = self.last_metrics(name)
        try:
            return int(last["step"]) if last else None
        except (KeyError, TypeError, ValueError):
            return None

    def last_metrics(self, name: str) -> dict[str, Any] | None:
        """The trainer's last logged step record (``step``, ``loss``, ``grad_norm``, ``lr``), or None."""
        info = _read_pidfile(self._pidfile(name))
        if info is None:
            return None
        try:
            with open(Path(info.workdir) / METRICS_FILE, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4096))
                lines = [ln for ln in f.read().splitlines() if ln.strip()]
            for line in reversed(lines):  # the first line of the window may be cut
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                return rec if isinstance(rec, dict) else None
        except OSError:
            return None
        return None

    def wait(self, name: str, timeout_s: float | None = None) -> dict[str, Any]:
        info = _read_pidfile(self._pidfile(name))
        if info is None:
            raise NotFoundError(f"no trainer named {name} has been started")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        proc = self._procs.get(name)
        if proc is not None and proc.pid == info.pid:
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                raise ConfigError(f"trainer {name} still running after {timeout_s:.0f}s") from None
            self._procs.pop(name, None)
        else:
            while _process_alive(info.pid, info.create_time):
                if deadline is not None and time.monotonic() > deadline:
                    raise ConfigError(f"trainer {name} still running after {timeout_s:.0f}s")
                time.sleep(0.05)
        result = self.result(name)
        if result is None:
            tail = _tail(Path(info.workdir) / "trainer.out")
            raise ConfigError(f"trainer {name} exited without a result ({tail or 'no output'})")
        return result

    def stop(
        self,
        name: str,
        *,
        reason: str = "stop",
        preemption: bool = False,
        wait: bool = True,
        timeout_s: float | None = 300.0,
    ) -> dict[str, Any] | None:
        info = self.status(name)
        if info is None:
            raise NotFoundError(f"no trainer named {name} has been started")
        if info.alive:
            atomic_write_json(
                Path(info.workdir) / STOP_REQUEST_FILE,
                {"reason": reason, "preemption": preemption, "requested_at": virtual_now().isoformat()},
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(info.pid, signal.SIGTERM)
        if not wait:
            return None
        return self.wait(name, timeout_s=timeout_s)


def _tail(path: Path, n: int = 200) -> str:
    try:
        data = path.read_bytes()[-n:]
    except OSError:
        return ""
    lines = [ln for ln in data.decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def open_backend(kind: str = "local") -> ComputeBackend:
    """The backend named ``kind`` (only ``local`` is built in)."""
    if kind == "local":
        return LocalProcessBackend()
    raise ConfigError(f"compute backend {kind!r} is not available (use local)")
