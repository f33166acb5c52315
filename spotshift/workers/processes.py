"""The worker processes of this machine: ``spotshift workers start | list | stop``.

A worker is one Celery worker process (``celery -A ops.celery_worker worker -Q <queue>``, the
dagster-celery step task on the executor's own app) serving one queue: a region's
(``provider/region``) or the control queue. Each runs in its own session, so stopping (or killing)
a worker takes its pool process with it, and keeps a pid file under
``$SPOTSHIFT_HOME/run/workers/<name>.json`` so any later command finds it. Its log is
``<name>.log`` beside it. Workers are started from the code location's directory (where
``definitions.py`` is): they load the move jobs from it for every step.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from spotshift.atomic import atomic_write_json
from spotshift.errors import ConfigError
from spotshift.home import run_dir
from spotshift.locations import region_of
from spotshift.workers.settings import load_settings

#: the module holding the worker's Celery app (Dagster glue, top level of the code location)
APP_MODULE = "ops.celery_worker"


@dataclass
class WorkerInfo:
    """A worker process as its pid file records it."""

    name: str
    queue: str
    pid: int
    create_time: float
    log: str
    alive: bool = False


def workers_dir() -> Path:
    """``$SPOTSHIFT_HOME/run/workers``: pid files and logs of this machine's workers."""
    return run_dir() / "workers"


def worker_name(queue: str, index: int) -> str:
    """``spotshift-<provider>-<region>-<i>`` (``spotshift-control-<i>`` for the control queue)."""
    return f"spotshift-{queue.replace('/', '-')}-{index}"


def worker_command(python: str, queue: str, name: str) -> list[str]:
    """The Celery worker command line for one queue: one step at a time, no gossip between workers."""
    return [
        python, "-m", "celery", "-A", APP_MODULE, "worker",
        "-Q", queue, "-n", f"{name}@%h",
        "--concurrency", "1", "--prefetch-multiplier", "1",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        "--loglevel", "INFO",
    ]  # fmt: skip


def _alive(pid: int, create_time: float) -> bool:
    import psutil

    try:
        p = psutil.Process(pid)
        return abs(p.create_time() - create_time) < 1.0 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def list_workers() -> list[WorkerInfo]:
    """Every worker with a pid file, ``alive`` set; in name order."""
    out = []
    for path in sorted(workers_dir().glob("*.json")):
        try:
            info = WorkerInfo(**{**json.loads(path.read_text()), "alive": False})
        except (OSError, ValueError, TypeError):
            continue  # a pid file being replaced: the next listing sees it
        info.alive = _alive(info.pid, info.create_time)
        out.append(info)
    return out


def start_workers(
    regions: list[str], *, per_region: int = 1, control: bool = True, code_dir: Path | None = None
) -> list[WorkerInfo]:
    """Start ``per_region`` workers on each region's queue (and one on the control queue unless
    ``control`` is false); returns them once each process runs. ConfigError for a malformed region,
    a home not configured for Celery, or a directory without the code location."""
    settings = load_settings()
    if not settings.distributed:
        raise ConfigError(
            "the move jobs run in-process: `spotshift home init --executor celery` (or "
            "SPOTSHIFT_EXECUTOR=celery) before starting workers"
        )
    if per_region < 1:
        raise ConfigError(f"--per-region must be at least 1, got {per_region}")
    code = _code_location(code_dir)
    queues = [(settings.queue_name(region_of(r)), per_region) for r in regions]
    if control:
        queues.append((settings.queue_name(settings.control_queue), 1))
    existing = {w.name for w in list_workers() if w.alive}
    env = {**os.environ, "PYTHONPATH": _pythonpath(code)}
    started = []
    workers_dir().mkdir(parents=True, exist_ok=True)
    for queue, count in queues:
        index = 0
        for _ in range(count):
            index += 1
            while worker_name(queue, index) in existing:
                index += 1
            started.append(_spawn(queue, worker_name(queue, index), code, env))
    return started


def run_worker(region: str | None, *, code_dir: Path | None = None) -> None:
    """Become the worker of ``region``'s queue (the control queue when None), in the foreground:
    the process is replaced by the Celery worker (a container's or a service manager's command)."""
    settings = load_settings()
    if not settings.distributed:
        raise ConfigError(
            "the move jobs run in-process: set SPOTSHIFT_EXECUTOR=celery (or home init --executor celery)"
        )
    code = _code_location(code_dir)
    queue = settings.queue_name(region_of(region) if region else settings.control_queue)
    os.environ["PYTHONPATH"] = _pythonpath(code)
    os.chdir(code)
    os.execv(sys.executable, worker_command(sys.executable, queue, worker_name(queue, os.getpid())))


def _code_location(code_dir: Path | None) -> Path:
    code = (code_dir or Path.cwd()).resolve()
    if not (code / "definitions.py").is_file() or not (code / "ops" / "celery_worker.py").is_file():
        raise ConfigError(f"{code}: not the spotshift code location (no definitions.py): start workers there")
    return code


def _pythonpath(code: Path) -> str:
    return os.pathsep.join(p for p in (str(code), os.environ.get("PYTHONPATH")) if p)


def _spawn(queue: str, name: str, code: Path, env: dict[str, str]) -> WorkerInfo:
    import psutil

    log = workers_dir() / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            worker_command(sys.executable, queue, name),
            cwd=code,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop and kill take the pool process too
        )
    info = WorkerInfo(name, queue, proc.pid, psutil.Process(proc.pid).create_time(), str(log), True)
    atomic_write_json(workers_dir() / f"{name}.json", asdict(info))
    return info


def stop_workers(names: list[str] | None = None, *, timeout_s: float = 60.0) -> list[str]:
    """Stop workers (all when ``names`` is empty): SIGTERM, which lets a worker finish the step it
    runs, then SIGKILL to the process group after ``timeout_s``. Returns the names stopped."""
    chosen = [w for w in list_workers() if not names or w.name in names]
    unknown = sorted(set(names or []) - {w.name for w in chosen})
    if unknown:
        raise ConfigError(f"no worker named {', '.join(unknown)} (spotshift workers list)")
    for w in chosen:
        if w.alive:
            _signal_group(w.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for w in chosen:
        while w.alive and _alive(w.pid, w.create_time) and time.monotonic() < deadline:
            time.sleep(0.2)
        if w.alive and _alive(w.pid, w.create_time):
            _signal_group(w.pid, signal.SIGKILL)
        (workers_dir() / f"{w.name}.json").unlink(missing_ok=True)
    return [w.name for w in chosen]


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)  # the worker leads its own session: its pool process goes with it
