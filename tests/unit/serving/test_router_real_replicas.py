"""The router in front of real `spotshift serve` replicas (a checkpoint the trainer committed), over
mutual TLS: greedy completions identical whichever replica answers, and a replica stopped under
load (it drains: 503 to new requests, finishes the rest, deregisters) fails no request."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spotshift.cli import main
from spotshift.serving import replica_api as api
from tests.training_support import declare_tiny_job

httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
START_TIMEOUT_S = 180.0  # torch import + checkpoint verification on a loaded 2-core machine
BODY = {"prompt": "the cheap spot gpu moves", "max_tokens": 12}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("SPOTSHIFT_HOME", str(home))
    for k in ("DAGSTER_HOME", "SPOTSHIFT_WAREHOUSE", "SPOTSHIFT_CONFIG"):
        monkeypatch.delenv(k, raising=False)
    declare_tiny_job(home, total_steps=400, every=40)
    assert main(["train", "tiny", "--location", "gcp/us-central1", "--steps", "40"]) == 0
    assert (
        main(["endpoints", "add", "chat", "--model", "tiny", "--slo-ms", "5000", "--users", "us-east=1"]) == 0
    )
    yield home


def _start(args: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "spotshift.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    line = proc.stdout.readline()  # type: ignore[union-attr]
    assert time.monotonic() < deadline and " at " in line, (args, line, proc.poll())
    return proc, line.split(" at ", 1)[1].split(" ", 1)[0].strip()


def test_router_over_mtls_to_real_replicas_drops_nothing_when_one_drains(home: Path, tmp_path: Path) -> None:
    procs: list[subprocess.Popen] = []
    try:
        for i, (loc, market, price) in enumerate(
            [("gcp/us-east4", "spot", "0.9"), ("aws/us-east-1", "on_demand", "3.0")]
        ):
            tls = tmp_path / f"replica-{i}"
            assert main(["tls", str(tls), "--role", "server", "--name", f"replica-{i}"]) == 0
            p, url = _start(
                ["serve", "chat", "--location", loc, "--market", market, "--usd-per-hour", price]
                + ["--tls-dir", str(tls), "--no-record", "--no-network-delay"]
            )
            procs.append(p)
            assert url.startswith("https://")
        router, url = _start(["router", "chat", "--tls-dir", str(tmp_path / "router")])
        procs.append(router)
        # without a client certificate, a replica refuses even the router's own CA users
        rec = api.live_replicas("chat")[0]
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            httpx.post(rec.url + api.COMPLETIONS_PATH, json=BODY, verify=str(tmp_path / "router" / "ca.pem"))

        spot_id = next(r.replica_id for r in api.live_replicas("chat") if r.market == "spot")
        by_spot = [0]

        async def load() -> list[httpx.Response | BaseException]:
            async with httpx.AsyncClient(timeout=120) as client:
                sem = asyncio.Semaphore(4)

                async def one() -> httpx.Response:
                    async with sem:
                        r = await client.post(url + api.COMPLETIONS_PATH, json=BODY)
                        by_spot[0] += r.headers.get(api.HEADER_REPLICA) == spot_id
                        return r

                tasks = [asyncio.ensure_future(one()) for _ in range(40)]
                deadline = time.monotonic() + 120
                while by_spot[0] < 3 and time.monotonic() < deadline:  # the spot replica is serving
                    await asyncio.sleep(0.01)
                procs[0].send_signal(signal.SIGTERM)  # ... and drains mid-load
                return await asyncio.gather(*tasks, return_exceptions=True)

        rs = asyncio.run(load())
        ok = [r for r in rs if isinstance(r, httpx.Response) and r.status_code == 200]
        assert len(ok) == 40, [r for r in rs if r not in ok][:3]
        texts = {r.json()["choices"][0]["text"] for r in ok}
        assert len(texts) == 1  # greedy decoding: the same answer from either replica
        assert len({r.headers[api.HEADER_REPLICA] for r in ok}) == 2 and by_spot[0] >= 3
        assert procs[0].wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
