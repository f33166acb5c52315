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

from bench._replica_peer import PeerState, ServerThread, peer_app  # noqa: E402
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
    state: PeerState | None = None
    server: ServerThread | None = None
    proc: subprocess.Popen | None = None
    draining_since: float | None = None


@dataclass
class Fleet:
    """Peers of both sides of one endpoint, registered; :meth:`scale_to` follows the replica plan."""

    endpoint: str = "chat"
    service_ms: float = 40.0
    source_usd: float = 3.0
    target_usd: float = 1.8
    target_perturb: float = 0.0
    peers: list[Peer] = field(default_factory=list)
    peak: int = 0
    seq: int = 0

    def add(self, side: str, *, process: bool = False) -> Peer:
        self.seq += 1
        rid = f"{self.endpoint}-{side}-{self.seq}"
        perturb = self.target_perturb if side == "target" else 0.0
        loc, usd = (SOURCE, self.source_usd) if side == "source" else (TARGET, self.target_usd)
        if process:
            cmd = [
                sys.executable,
                str(REPO / "bench" / "_replica_peer.py"),
                "--id",
                rid,
                "--service-ms",
                str(self.service_ms),
                "--perturb",
                str(perturb),
            ]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
            port = int(proc.stdout.readline())  # type: ignore[union-attr]
            pid, server, state = proc.pid, None, None
        else:
            state = PeerState(rid, self.service_ms, perturb)
            server = ServerThread(peer_app(state)).__enter__()
            port, pid, proc = server.port, os.getpid(), None
        rec = api.ReplicaRecord(
            rid, self.endpoint, f"http://127.0.0.1:{port}", loc, "spot", usd, pid, time.time(), f"ckpt-{side}"
        )
        api.register(rec)
        peer = Peer(side, rec, state, server, proc)
        self.peers.append(peer)
        self.peak = max(self.peak, self.count())
        return peer

    def live(self, side: str | None = None) -> list[Peer]:
        return [p for p in self.peers if p.draining_since is None and (side is None or p.side == side)]

    def count(self) -> int:
        """Replicas running (draining ones included: they still cost)."""
        return len(self.peers)

    def set_service_ms(self, side: str, ms: float) -> None:
        for p in self.peers:
            if p.side == side and p.state is not None:
                p.state.service_ms = ms

    def drain(self, peer: Peer) -> None:
        peer.draining_since = time.monotonic()
        if peer.state is not None:
            peer.state.draining = True
        api.set_state(self.endpoint, peer.record.replica_id, "draining")

    def kill(self, peer: Peer) -> None:
        """SIGKILL a process peer (it cannot deregister)."""
        assert peer.proc is not None
        os.kill(peer.proc.pid, signal.SIGKILL)
        peer.proc.wait()
        self.peers.remove(peer)

    def scale_to(self, plan: dict[str, int]) -> None:
        """Add first (make before break), then drain the surplus; finish drained peers."""
        for side in ("target", "source"):
            while len(self.live(side)) < plan[side]:
                self.add(side)
        for side in ("source", "target"):
            surplus = len(self.live(side)) - plan[side]
            for p in self.live(side)[: max(0, surplus)]:
                self.drain(p)
        for p in list(self.peers):
            done = p.state is None or p.state.in_flight == 0
            if p.draining_since is not None and time.monotonic() - p.draining_since > 0.3 and done:
                self._stop(p)

    def _stop(self, p: Peer) -> None:
        api.deregister(self.endpoint, p.record.replica_id)
        if p.server is not None:
            p.server.__exit__(None, None, None)
        if p.proc is not None:
            p.proc.terminate()
            p.proc.wait()
        self.peers.remove(p)

    def close(self) -> None:
        for p in list(self.peers):
            if p.proc is not None:
                p.proc.kill()
                p.proc.wait()
                self.peers.remove(p)
            else:
                self._stop(p)


class Load:
    """Completions at ``rps`` to ``url`` from a background thread until :meth:`stop`; every status kept."""

    def __init__(self, url: str, rps: float = 100.0, max_tokens: int = 8) -> None:
        self.url, self.rps, self.max_tokens = url, rps, max_tokens
        self.statuses: Counter[Any] = Counter()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> Load:
        self.thread.start()
        return self

    async def _run(self) -> None:
        import httpx

        async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
            tasks: set[asyncio.Task[Any]] = set()
            i = 0
            t0 = time.perf_counter()

            async def one(n: int) -> None:
                body = {"prompt": PROMPTS[n % len(PROMPTS)], "max_tokens": self.max_tokens}
                try:
                    r = await client.post(self.url + api.COMPLETIONS_PATH, json=body)
                    self.statuses[r.status_code] += 1
                except httpx.HTTPError as exc:
                    self.statuses[type(exc).__name__] += 1

            while not self._stop.is_set():
                delay = t0 + i / self.rps - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
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
        fleet.scale_to(co.replica_plan(st))
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
        time.sleep(0.05)
