"""A cutover under load, for the cutover tests and ``bench/bench_cutover.py``.

:class:`Fleet` runs model-less peers (:mod:`bench._replica_peer`) registered in the endpoint's real
replica registry, a real :class:`~spotshift.serving.router.Router` over HTTP that reads it, and
scales each side to :func:`spotshift.serving.cutover.replica_plan` as the cutover moves: a
replica taken away drains (503 to new requests, in-flight ones finish) before it is deregistered,
as ``spotshift serve`` does. :class:`Load` sends completions at a fixed rate and keeps every status.
:func:`drive` plays the operator's clock: the virtual clock is frozen, and once a stage has a
passing window the clock jumps to the end of the stage's hold, so the whole seed schedule (weeks of
holds) runs in seconds while every decision is the router's.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
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
class Peer:
    side: str
    record: api.ReplicaRecord
    proc: subprocess.Popen
    draining_since: float | None = None

    def control(self, **knobs: Any) -> dict[str, Any]:
        """Set a knob of the peer process (``service_ms``, ``draining``); its answer has ``in_flight``."""
        import httpx

        return httpx.post(self.record.url + "/_peer", json=knobs, timeout=10, trust_env=False).json()


@dataclass
class Fleet:
    """Peers of both sides of one endpoint, each its own process, registered in the endpoint's
    registry; :meth:`scale_to` follows the replica plan."""

    endpoint: str = "chat"
    service_ms: float = 40.0
    source_usd: float = 3.0
    target_usd: float = 1.8
    target_perturb: float = 0.0
    peers: list[Peer] = field(default_factory=list)
    peak: int = 0
    seq: int = 0
    side_ms: dict[str, float] = field(default_factory=dict)
    spares: list[tuple[str, str, subprocess.Popen, int]] = field(default_factory=list)

    def _spawn(self, side: str) -> tuple[str, subprocess.Popen, int]:
        self.seq += 1
        rid = f"{self.endpoint}-{side}-{self.seq}"
        perturb = self.target_perturb if side == "target" else 0.0
        ms = self.side_ms.get(side, self.service_ms)
        cmd = [sys.executable, str(REPO / "bench" / "_replica_peer.py"), "--id", rid]
        cmd += ["--service-ms", str(ms), "--perturb", str(perturb)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
        return rid, proc, int(proc.stdout.readline())  # type: ignore[union-attr]

    def warm(self, side: str, n: int) -> None:
        """Start ``n`` peer processes of ``side`` now, unregistered (no traffic, not counted as
        replicas): :meth:`add` takes one instead of starting a process while the load runs, so the
        ~1 s of CPU a Python start-up costs on this 2-core box stays out of the analysis windows."""
        for _ in range(n):
            self.spares.append((side, *self._spawn(side)))

    def add(self, side: str) -> Peer:
        spare = next((x for x in self.spares if x[0] == side), None)
        if spare is not None:
            self.spares.remove(spare)
            _, rid, proc, port = spare
        else:
            rid, proc, port = self._spawn(side)
        loc, usd = (SOURCE, self.source_usd) if side == "source" else (TARGET, self.target_usd)
        url = f"http://127.0.0.1:{port}"
        rec = api.ReplicaRecord(
            rid, self.endpoint, url, loc, "spot", usd, proc.pid, time.time(), f"ckpt-{side}"
        )
        peer = Peer(side, rec, proc)
        if spare is not None and side in self.side_ms:
            peer.control(service_ms=self.side_ms[side])
        api.register(rec)
        self.peers.append(peer)
        self.peak = max(self.peak, self.count())
        return peer

    def live(self, side: str | None = None) -> list[Peer]:
        return [p for p in self.peers if p.draining_since is None and (side is None or p.side == side)]

    def count(self) -> int:
        """Replicas running (draining ones included: they still cost)."""
        return len(self.peers)

    def set_service_ms(self, side: str, ms: float) -> None:
        """Every peer of ``side``, and those started later, answer after ``ms``."""
        self.side_ms[side] = ms
        for p in self.peers:
            if p.side == side:
                p.control(service_ms=ms)

    def drain(self, peer: Peer) -> None:
        peer.draining_since = time.monotonic()
        peer.control(draining=True)
        api.set_state(self.endpoint, peer.record.replica_id, "draining")

    def kill(self, peer: Peer) -> None:
        """SIGKILL a peer (it cannot deregister; its dead pid takes it out of the registry)."""
        os.kill(peer.proc.pid, signal.SIGKILL)
        peer.proc.wait()
        self.peers.remove(peer)

    def scale_to(self, plan: dict[str, int], cap: int | None = None) -> None:
        """Drain the surplus first, stop drained peers once idle, then add what the plan lacks
        while the running total (draining peers included) stays within ``cap``."""
        for side in ("source", "target"):
            surplus = len(self.live(side)) - plan[side]
            for p in self.live(side)[: max(0, surplus)]:
                self.drain(p)
        for p in list(self.peers):
            settled = p.draining_since is not None and time.monotonic() - p.draining_since > 0.3
            if settled and p.control()["in_flight"] == 0:
                self._stop(p)
        for side in ("target", "source"):
            while len(self.live(side)) < plan[side] and (cap is None or self.count() < cap):
                self.add(side)

    def _stop(self, p: Peer) -> None:
        api.deregister(self.endpoint, p.record.replica_id)
        p.proc.terminate()
        p.proc.wait()
        self.peers.remove(p)

    def close(self) -> None:
        for proc in [p.proc for p in self.peers] + [x[2] for x in self.spares]:
            proc.kill()
            proc.wait()
        self.peers.clear()
        self.spares.clear()


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
        fleet.scale_to(co.replica_plan(st), co.fleet_cap(st.steady_replicas))
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
