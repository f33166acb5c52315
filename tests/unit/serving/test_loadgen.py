"""``run_load`` on a caller's session: the session stays open and its keep-alive connections carry
over between runs (what the router benchmark's interleaved slices rely on)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from bench._replica_peer import PeerState, ServerThread, peer_app  # noqa: E402
from spotshift.serving.loadgen import run_load  # noqa: E402


def test_run_load_on_a_given_session_reuses_its_connections_and_leaves_it_open() -> None:
    import aiohttp

    async def go(url: str) -> tuple[list[int], bool, list[int]]:
        created = [0]

        async def on_create(*_: object) -> None:
            created[0] += 1

        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(on_create)
        per_run, oks = [], []
        async with aiohttp.ClientSession(trace_configs=[trace], trust_env=False) as client:
            for _ in range(2):
                before = created[0]
                res = await run_load(url, rps=20, duration_s=0.5, client=client)
                per_run.append(created[0] - before)
                oks.append(res.ok)
            still_open = not client.closed
        return per_run, still_open, oks

    with ServerThread(peer_app(PeerState("p", 0.0))) as server:
        per_run, still_open, oks = asyncio.run(go(server.url))
    assert oks == [10, 10]
    assert per_run[0] >= 1 and per_run[1] == 0, per_run  # the second run opened no connection
    assert still_open
