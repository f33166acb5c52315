"""Starting and stopping replicas: what the autoscaler's decisions are applied through.

:class:`ReplicaLauncher` is the serving side's ``ComputeBackend``: ``start`` a replica of an endpoint in
a location and market, ``stop`` one (a drain, never a kill), list the launches still
``provisioning``. :class:`LocalReplicaLauncher` (the embedded default) runs each replica as a
detached local ``spotshift serve`` process; a launch file per start under
``$SPOTSHIFT_HOME/run/replicas/<endpoint>/<launch id>.json`` (pid, process start time, log) lets any
later process (the next sensor tick, another Dagster run) see a replica that is still loading its
model and has not registered yet, so the autoscaler never launches it twice. A replica counts as
provisioning from its start until it appears in the endpoint's registry
(:mod:`spotshift.serving.replica_api`); a launch whose process died before registering is a
*failed* launch (its log's last line says why).

Stopping sends SIGTERM: ``spotshift serve`` drains (503 to new requests, in-flight ones finish,
deregisters, exits 0), so a scale-down fails no request behind a router.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path

from spotshift.atomic import atomic_write_json
from spotshift.errors import ConfigError, NotFoundError
from spotshift.home import run_dir
from spotshift.serving import replica_api as api
from spotshift.training.backend import _process_alive  # the one pid + start-time liveness check


@dataclass(frozen=True)
class LaunchInfo:
    """One replica start: where, what market and price, which process, where its log goes, what model."""

    launch_id: str
    endpoint: str
    location: str
    market: str
    usd_per_hour: float
    pid: int
    create_time: float
    log: str
    started_at_s: float
    model: str = ""  # the checkpoint or job it was asked to serve (empty: the endpoint's)


@dataclass(frozen=True)
class StopReport:
    """What stopping one replica did: ``drained`` when the process exited within the timeout."""

    replica_id: str
    pid: int
    drained: bool
    seconds: float


def launches_dir(endpoint: str) -> Path:
    """``$SPOTSHIFT_HOME/run/replicas/<endpoint>``: one JSON file per launch not yet cleaned up."""
    return run_dir() / "replicas" / api.check_endpoint_name(endpoint)


def _last_line(path: str) -> str:
    try:
        lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "empty log"


class ReplicaLauncher(ABC):
    """Where replicas run. ``kind`` names the implementation (``local`` here; a cloud launcher later)."""

    kind: str

    @abstractmethod
    def start(
        self, endpoint: str, location: str, market: str, *, usd_per_hour: float, model: str = ""
    ) -> LaunchInfo:
        """Start one replica; it registers itself once it listens. ``model``: a checkpoint or job to
        serve instead of the endpoint's (a cutover's target); empty: the endpoint's."""

    @abstractmethod
    def stop(self, endpoint: str, replica_id: str, *, timeout_s: float = 60.0) -> StopReport:
        """Drain and stop a registered replica; :class:`NotFoundError` when it is not registered."""

    @abstractmethod
    def provisioning(self, endpoint: str) -> list[LaunchInfo]:
        """Launches whose process lives but has not registered yet."""

    @abstractmethod
    def failed(self, endpoint: str) -> list[tuple[LaunchInfo, str]]:
        """Launches whose process died without registering, with the reason; forgotten once listed."""


class LocalReplicaLauncher(ReplicaLauncher):
    """Replicas as detached local ``spotshift serve`` processes (survive the process that started them).

    ``program``: what runs after the interpreter, before ``serve ENDPOINT --location ...`` (default
    ``-m spotshift.cli``). Another program must keep ``spotshift serve``'s contract: take those
    arguments, register in the endpoint's registry once listening (with its own pid), and drain on
    SIGTERM (503 to new requests, in-flight ones finish, deregister, exit) — the benchmarks' model-less
    peer (``bench/_replica_peer.py``) does."""

    kind = "local"

    def __init__(
        self,
        python: str | None = None,
        extra_args: tuple[str, ...] = (),
        program: tuple[str, ...] = ("-m", "spotshift.cli"),
    ):
        self.python = python or sys.executable
        self.extra_args = extra_args
        self.program = program
        self._procs: dict[int, subprocess.Popen[bytes]] = {}  # reaped when they exit, in this process

    def start(
        self, endpoint: str, location: str, market: str, *, usd_per_hour: float, model: str = ""
    ) -> LaunchInfo:
        """Start ``spotshift serve ENDPOINT --location L --market M --usd-per-hour P [--model M]`` on
        a free port."""
        import psutil

        if market not in api.MARKETS:
            raise ConfigError(f"replica launch: market {market!r} is not one of {', '.join(api.MARKETS)}")
        d = launches_dir(endpoint)
        d.mkdir(parents=True, exist_ok=True)
        launch_id = f"{location.replace('/', '-')}-{market}-{time.time_ns()}"
        log = d / f"{launch_id}.log"
        cmd = [self.python, *self.program, "serve", endpoint, "--location", location]
        cmd += ["--market", market, "--usd-per-hour", f"{usd_per_hour:.6f}", *self.extra_args]
        if model:
            cmd += ["--model", model]
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self._procs[proc.pid] = proc
        info = LaunchInfo(
            launch_id,
            endpoint,
            location,
            market,
            float(usd_per_hour),
            proc.pid,
            psutil.Process(proc.pid).create_time(),
            str(log),
            time.time(),
            model,
        )
        atomic_write_json(d / f"{launch_id}.json", asdict(info))
        return info

    def _launches(self, endpoint: str) -> list[tuple[Path, LaunchInfo]]:
        out = []
        d = launches_dir(endpoint)
        for path in sorted(d.glob("*.json")) if d.is_dir() else []:
            try:
                out.append((path, LaunchInfo(**json.loads(path.read_text()))))
            except (OSError, ValueError, TypeError):
                raise ConfigError(f"{path}: not a replica launch file") from None
        return out

    def _reap(self) -> None:
        for pid, proc in list(self._procs.items()):
            if proc.poll() is not None:
                del self._procs[pid]

    def provisioning(self, endpoint: str) -> list[LaunchInfo]:
        """Live launches not in the registry yet (registered ones' launch files are removed)."""
        self._reap()
        registered = {r.pid for r in api.read_registry(endpoint).values()}
        out = []
        for path, info in self._launches(endpoint):
            if info.pid in registered:
                path.unlink(missing_ok=True)  # it listens now: the registry is its record
            elif _process_alive(info.pid, info.create_time):
                out.append(info)
        return out

    def failed(self, endpoint: str) -> list[tuple[LaunchInfo, str]]:
        """Launches that died unregistered, with their log's last line; their launch files are removed."""
        self._reap()
        registered = {r.pid for r in api.read_registry(endpoint).values()}
        out = []
        for path, info in self._launches(endpoint):
            if info.pid not in registered and not _process_alive(info.pid, info.create_time):
                out.append((info, _last_line(info.log)))
                path.unlink(missing_ok=True)
        return out

    def wait_registered(self, info: LaunchInfo, timeout_s: float = 300.0) -> api.ReplicaRecord:
        """Block until the launched replica registers; :class:`ConfigError` if it dies or times out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for rec in api.read_registry(info.endpoint).values():
                if rec.pid == info.pid:
                    return rec
            self._reap()
            if not _process_alive(info.pid, info.create_time):
                raise ConfigError(
                    f"replica launch {info.launch_id} exited before listening: {_last_line(info.log)}"
                )
            time.sleep(0.2)
        raise ConfigError(f"replica launch {info.launch_id} did not register within {timeout_s:g} s")

    def stop(self, endpoint: str, replica_id: str, *, timeout_s: float = 60.0) -> StopReport:
        """SIGTERM the replica (it drains and deregisters) and wait for its process to exit."""
        import psutil

        rec = api.read_registry(endpoint).get(replica_id)
        launch = next((i for _, i in self._launches(endpoint) if i.launch_id == replica_id), None)
        if rec is None and launch is None:
            raise NotFoundError(f"replica {replica_id} is not registered for endpoint {endpoint}")
        pid = rec.pid if rec is not None else launch.pid  # type: ignore[union-attr]
        t0 = time.monotonic()
        try:
            proc = psutil.Process(pid)
            os.kill(pid, signal.SIGTERM)  # a replica still loading its model stops on it too
        except (psutil.Error, ProcessLookupError):
            if rec is not None:
                api.deregister(endpoint, replica_id)  # already gone: drop its record
            return StopReport(replica_id, pid, True, 0.0)
        popen = self._procs.pop(pid, None)
        drained = True
        try:
            if popen is not None:
                popen.wait(timeout=timeout_s)
            else:
                proc.wait(timeout=timeout_s)
        except (subprocess.TimeoutExpired, psutil.TimeoutExpired):
            drained = False
            if popen is not None:
                self._procs[pid] = popen
        with contextlib.suppress(OSError):
            self._reap()
        return StopReport(replica_id, pid, drained, round(time.monotonic() - t0, 3))


def open_launcher(kind: str = "local") -> ReplicaLauncher:
    """The replica launcher named ``kind`` (``local``: processes on this machine)."""
    if kind in ("", "local"):
        return LocalReplicaLauncher()
    raise ConfigError(f"replica launcher {kind!r} is not known (local)")
