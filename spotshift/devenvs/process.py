"""A dev environment's process: started in its own process group with the activity files in its
environment, recognised by pid and kernel start time (a reused pid is never mistaken for it), its
group's CPU time read from ``/proc``, and stopped (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from spotshift.clock import as_utc
from spotshift.devenvs.env import DevEnv
from spotshift.devenvs.place import Place
from spotshift.devenvs.state import devenvs_dir
from spotshift.errors import ConfigError

HEARTBEAT_ENV = "SPOTSHIFT_DEVENV_HEARTBEAT"
REQUESTS_ENV = "SPOTSHIFT_DEVENV_REQUESTS"
STOP_TIMEOUT_S = 10.0
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # processes this process started (reaped here)

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def alive(pid: int | None, start: str | None) -> bool:
    """Whether process ``pid`` runs (not a zombie) and, given its kernel ``start`` time, is still that one."""
    if not pid:
        return False
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        return False
    st = _stat(pid)
    if st is None or st[0] == "Z":
        return False
    return start is None or st[19] == start


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of group ``pgid``."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _stat(int(entry))
        if st is not None and st[2] == str(pgid):
            total += int(st[11]) + int(st[12])
    return total / _TICKS


def _spawn(env: DevEnv, *, gpus: bool, log: Path) -> tuple[int, str]:
    heartbeat = devenvs_dir() / f"{env.name}.heartbeat"
    requests = devenvs_dir() / f"{env.name}.requests"
    child_env = {**os.environ, HEARTBEAT_ENV: str(heartbeat), REQUESTS_ENV: str(requests)}
    if not gpus:
        child_env["CUDA_VISIBLE_DEVICES"] = ""  # the cpu policy: the same command without GPUs
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(  # noqa: S602 - the user's own declared command, run as they would
            env.command,
            shell=True,
            cwd=env.workspace,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _CHILDREN[proc.pid] = proc
    st = _stat(proc.pid)
    return proc.pid, st[19] if st else ""


def stop(pid: int | None, start: str | None) -> None:
    """SIGTERM the process group, SIGKILL it after :data:`STOP_TIMEOUT_S`."""
    if not alive(pid, start):
        return
    assert pid is not None
    for sig, wait_s in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, STOP_TIMEOUT_S)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not alive(pid, start):
                _CHILDREN.pop(pid, None)
                return
            time.sleep(0.05)
    raise ConfigError(f"devenv process {pid} did not stop")


def launch(doc: dict[str, Any], env: DevEnv, place: Place, now: datetime, *, gpus: bool) -> None:
    """Start ``env``'s command at ``place`` (``gpus`` False: without GPUs, at the CPU price) and record
    the process, the price and a first activity sample in ``doc``."""
    pid, pid_start = _spawn(env, gpus=gpus, log=devenvs_dir() / f"{env.name}.log")
    doc.update(
        status="running" if gpus else "downsized",
        pid=pid,
        pid_start=pid_start,
        location=place.location,
        instance_type=place.instance_type if gpus else "cpu",
        usd_hour=place.usd_hour if gpus else env.cpu_usd_per_hour,
        gpu_usd_hour=place.usd_hour,
        started_at=as_utc(now).isoformat(),
        last_active_at=as_utc(now).isoformat(),
        last_sample_wall=time.time(),
        last_cpu_s=group_cpu_s(pid),
        last_heartbeat_mtime=file_mtime(devenvs_dir() / f"{env.name}.heartbeat"),
        last_requests=requests_served(devenvs_dir() / f"{env.name}.requests"),
    )


def file_mtime(path: Path) -> float:
    """``path``'s modification time (0 when it does not exist)."""
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def requests_served(path: Path) -> int:
    """The requests counter in ``path`` (0 when missing or unreadable)."""
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0
