"""A cutover under load, for the cutover tests and ``bench/bench_cutover.py``.

:class:`Fleet` starts model-less peers (:mod:`bench._replica_peer`, each its own process keeping
``spotshift serve``'s contract: registers once listening, drains on SIGTERM) through the replica
launcher, and makes them follow the cutover's plan with the cutover's own
:func:`spotshift.serving.cutover_replicas.follow` (a replica taken away drains: 503 to new
requests, in-flight ones finish, then it deregisters and exits); a real
:class:`~spotshift.serving.router.Router` over HTTP reads the registry. :class:`Load` sends completions at a fixed rate and keeps every status.
:func:`drive` plays the operator's clock: the virtual clock is frozen, and once a stage has a
passing window the clock jumps to the end of the stage's hold, so the whole seed schedule (weeks of
holds) runs in seconds while every decision is the router's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._replica_peer import ServerThread  # noqa: E402, F401 (re-exported for the tests and the bench)
from spotshift.clock import VirtualClock, load_clock, parse_utc  # noqa: E402
from spotshift.serving import cutover as co  # noqa: E402
from spotshift.serving import replica_api as api  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SOURCE = "gcp/us-central1"
TARGET = "aws/us-east-1"
PROMPTS = ("the cheap spot gpu", "moves when the price", "drops below the", "reserved rate")


def freeze_clock(start: datetime | None = None) -> None:
    """The shared virtual clock, frozen (only :func:`drive` moves it)."""
    VirtualClock.starting(start or datetime(2026, 1, 5, tzinfo=UTC), 0.0).save()


@dataclass
class Fleet:
    """Replicas of both sides of one endpoint, started and stopped through the replica launcher
    (:class:`~spotshift.serving.launcher.LocalReplicaLauncher` running the model-less peer under
    ``spotshift serve``'s contract); :meth:`follow` is the cutover's own
    :func:`~spotshift.serving.cutover_replicas.follow`. A sampler thread counts the replicas
    running (registered, draining included, and launches still provisioning) every 100 ms:
    :attr:`peak` is the most seen at once."""

    endpoint: str = "chat"
    service_ms: float = 40.0
    source_usd: float = 3.0
    target_usd: float = 1.8
    target_perturb: float = 0.0
    peak: int = 0
    steps: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        from spotshift.home import run_dir
        from spotshift.serving.launcher import LocalReplicaLauncher

        self.knobs_path = run_dir() / "peer-knobs.json"
        self.knobs: dict[str, dict[str, float]] = {
            SOURCE: {"service_ms": self.service_ms},
            TARGET: {"service_ms": self.service_ms, "perturb": self.target_perturb},
        }
        self._write_knobs()
        program = (str(REPO / "bench" / "_replica_peer.py"),)
        self.launcher = LocalReplicaLauncher(program=program, extra_args=("--knobs", str(self.knobs_path)))
        self._counter = LocalReplicaLauncher(program=program)  # the sampler's own (no shared state)
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _write_knobs(self) -> None:
        from spotshift.atomic import atomic_write_json

        atomic_write_json(self.knobs_path, self.knobs)

    def _sample(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a registry mid-rename: the next sample reads it
                self.peak = max(self.peak, self.count())
            time.sleep(0.1)

    def add(self, side: str, n: int = 1) -> list[api.ReplicaRecord]:
        """Start ``n`` replicas of ``side`` through the launcher and wait until they are registered."""
        loc, usd = (SOURCE, self.source_usd) if side == "source" else (TARGET, self.target_usd)
        infos = [self.launcher.start(self.endpoint, loc, "spot", usd_per_hour=usd) for _ in range(n)]
        return [self.launcher.wait_registered(i, timeout_s=120) for i in infos]

    def follow(self, state: co.CutoverState) -> Any:
        """One pass of the cutover's replicas following its plan (launches and drains)."""
        step = co.follow(state, self.launcher, stop_timeout_s=30.0)
        self.peak = max(self.peak, step.peak)
        if step.changed:
            self.steps.append(step)
        return step

    def live(self, side: str | None = None) -> list[api.ReplicaRecord]:
        """Ready replicas (of ``side``: target = at :data:`TARGET`)."""
        return [
            r
            for r in api.live_replicas(self.endpoint)
            if side is None or (r.location == TARGET) == (side == "target")
        ]

    def count(self) -> int:
        """Replicas running: registered (draining included) and launches still provisioning."""
        registered = api.live_replicas(self.endpoint, include_draining=True)
        return len(registered) + len(self._counter.provisioning(self.endpoint))

    def set_service_ms(self, side: str, ms: float) -> None:
        """Every replica of ``side``, and those launched later, answer after ``ms``."""
        self.knobs[SOURCE if side == "source" else TARGET]["service_ms"] = ms
        self._write_knobs()
        for r in self.live(side):
            _control(r, service_ms=ms)

    def hold(self, record: api.ReplicaRecord, hold: bool = True) -> int:
        """Hold every new request to one replica unanswered (``hold=False`` releases them): they stay in
        flight until then, or until the replica is killed. Returns how many it holds now."""
        return int(_control(record, hold=hold)["held"])

    def kill(self, record: api.ReplicaRecord) -> None:
        """SIGKILL a replica (it cannot deregister; its dead pid takes it out of the registry)."""
        os.kill(record.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(record.pid, 0)  # our child (the launcher started it): reaped, no zombie left
        deadline = time.monotonic() + 10
        while any(r.replica_id == record.replica_id for r in api.live_replicas(self.endpoint)):
            assert time.monotonic() < deadline, "a killed replica is still listed live"
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        pids = {r.pid for r in api.live_replicas(self.endpoint, include_draining=True)}
        pids |= {i.pid for i in self._counter.provisioning(self.endpoint)}
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _control(record: api.ReplicaRecord, **knobs: Any) -> dict[str, Any]:
    """Set a knob of a running peer (``service_ms``, ``draining``, ``hold``); its answer has ``in_flight``
    and ``held``."""
    import httpx

    return httpx.post(record.url + "/_peer", json=knobs, timeout=10, trust_env=False).json()


class Load:
    """Completions at ``rps`` to ``url`` from a background thread until :meth:`stop`; every status kept."""

    def __init__(self, url: str, rps: float = 100.0, max_tokens: int = 8, max_in_flight: int = 32) -> None:
        self.url, self.rps, self.max_tokens = url, rps, max_tokens
        self.max_in_flight = (
            max_in_flight  # beyond this, a request waits for a free slot (delayed, not dropped)
        )
        self.sent = 0
        self.statuses: Counter[Any] = Counter()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> Load:
        self.thread.start()
        return self

    async def _run(self) -> None:
        import httpx

        # idle connections are dropped before uvicorn's 5 s keep-alive timeout closes them under a request
        limits = httpx.Limits(
            max_connections=self.max_in_flight,
            max_keepalive_connections=self.max_in_flight,
            keepalive_expiry=2.0,
        )
        async with httpx.AsyncClient(timeout=30, trust_env=False, limits=limits) as client:
            tasks: set[asyncio.Task[Any]] = set()
            slots = asyncio.Semaphore(self.max_in_flight)
            i = 0
            t0 = time.perf_counter()

            async def one(n: int) -> None:
                body = {"prompt": f"{PROMPTS[n % len(PROMPTS)]} {n % 97}", "max_tokens": self.max_tokens}
                try:
                    r = await client.post(self.url + api.COMPLETIONS_PATH, json=body)
                    self.statuses[r.status_code] += 1
                except httpx.HTTPError as exc:
                    self.statuses[type(exc).__name__] += 1
                finally:
                    slots.release()

            while not self._stop.is_set():
                delay = t0 + i / self.rps - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await slots.acquire()
                self.sent += 1
                task = asyncio.ensure_future(one(i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            if tasks:
                await asyncio.gather(*tasks)

    def stop(self) -> Counter[Any]:
        self._stop.set()
        self.thread.join(timeout=60)
        return self.statuses

    @property
    def failed(self) -> int:
        return sum(n for k, n in self.statuses.items() if k != 200)


def drive(
    fleet: Fleet,
    *,
    until: tuple[str, ...] = ("promoted", "rolled_back"),
    timeout_s: float = 120.0,
    on_state: Any = None,
) -> co.CutoverState:
    """Follow the cutover: scale the fleet to the plan, jump the frozen clock to the end of a stage's
    hold once it has a passing window; return the state once its phase is in ``until``."""
    deadline = time.monotonic() + timeout_s
    while True:
        st = co.require_state(fleet.endpoint)
        if on_state is not None:
            on_state(st)
        fleet.follow(st)
        if st.phase in until:
            return st
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"cutover still {st.phase} {st.current.label if st.current else ''} "
                f"after {timeout_s:.0f} s ({len(st.windows)} windows)"
            )
        stage = st.current
        if st.active and stage is not None and st.stage_passed_windows >= 1:
            end = parse_utc(st.stage_started_at) + timedelta(seconds=stage.hold_s)
            clock = load_clock()
            ahead = (end - clock.now()).total_seconds()
            if ahead > 0:
                clock.advance(ahead + 1).save()
        time.sleep(0.2)
