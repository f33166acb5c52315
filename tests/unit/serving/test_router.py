"""``spotshift router`` end to end over real HTTP: split, refusal and death retries, SLO signal, mTLS."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bench._replica_peer import PeerState, ServerThread, peer_app
from spotshift.serving import replica_api as api
from spotshift.serving.policy import ReplicaView
from spotshift.serving.router import Router
from spotshift.serving.router_app import build_app
from spotshift.serving.router_state import RouterConfig, estimate_tokens, read_router_signal, signal_path

REPO = Path(__file__).resolve().parents[3]
BODY = {"prompt": "the quick brown fox", "max_tokens": 8}
# for us-east users: gcp/us-west1 (~65 ms) is cheaper, aws/us-east-1 (~2 ms) faster
CHEAP = ("cheap", "gcp/us-west1", "spot", 1.5)
FAST = ("fast", "aws/us-east-1", "on_demand", 4.0)


def view(spec: tuple, url: str) -> ReplicaView:
    rid, loc, market, price = spec
    return ReplicaView(rid, url, loc, market, price)


def post_all(url: str, n: int, concurrency: int = 1) -> list[httpx.Response | Exception]:
    async def go() -> list:
        async with httpx.AsyncClient(timeout=30) as client:
            sem = asyncio.Semaphore(concurrency)

            async def one() -> httpx.Response:
                async with sem:
                    return await client.post(url + api.COMPLETIONS_PATH, json=BODY)

            return await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)

    return asyncio.run(go())


def test_router_splits_eighty_twenty_over_http_and_reports_why(spotshift_home: Path) -> None:
    with (
        ServerThread(peer_app(PeerState("cheap", 0))) as a,
        ServerThread(peer_app(PeerState("fast", 0))) as b,
    ):
        cfg = RouterConfig("chat", slo_ms=500, replicas=[view(CHEAP, a.url), view(FAST, b.url)])
        router = Router(cfg)
        with ServerThread(build_app(router)) as r:
            rs = post_all(r.url, 400)
            policy = httpx.get(r.url + "/v1/policy").json()
            metrics = httpx.get(r.url + api.METRICS_PATH).text
    assert all(isinstance(x, httpx.Response) and x.status_code == 200 for x in rs)
    by = collections.Counter(x.headers[api.HEADER_REPLICA] for x in rs)
    assert abs(by["cheap"] / 400 - 0.8) < 4 * (0.8 * 0.2 / 400) ** 0.5, by
    assert {x.headers["x-spotshift-route"] for x in rs if x.headers[api.HEADER_REPLICA] == "cheap"} == {
        "cheapest"
    }
    assert {w["replica_id"]: w["weight"] for w in policy["weights"]} == {"cheap": 0.8, "fast": 0.2}
    assert 'spotshift_router_requests_total{endpoint="chat",outcome="ok"} 400' in metrics
    # the inference-time model learned from the replicas' X-Spotshift-Inference-Ms (peers: ~0 ms),
    # moving far from its 20 ms + 1 ms/token prior
    tokens = estimate_tokens(BODY)
    assert router.model.predict("cheap", tokens) < 5.0 and router.model.predict("fast", tokens) < 5.0


def test_a_draining_replica_is_skipped_and_no_request_fails(spotshift_home: Path) -> None:
    cheap = PeerState("cheap", 0)
    cheap.draining = True
    with ServerThread(peer_app(cheap)) as a, ServerThread(peer_app(PeerState("fast", 0))) as b:
        router = Router(RouterConfig("chat", slo_ms=500, replicas=[view(CHEAP, a.url), view(FAST, b.url)]))
        with ServerThread(build_app(router)) as r:
            rs = post_all(r.url, 50, concurrency=5)
    assert all(isinstance(x, httpx.Response) and x.status_code == 200 for x in rs)
    assert {x.headers[api.HEADER_REPLICA] for x in rs} == {"fast"}
    assert router.counters.retries >= 1 and router.counters.failed == 0


def _spawn_peer(rid: str, service_ms: float) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "bench" / "_replica_peer.py"),
            "--id",
            rid,
            "--service-ms",
            str(service_ms),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    return proc, int(proc.stdout.readline())


def test_a_replica_killed_mid_request_fails_no_request(spotshift_home: Path) -> None:
    procs = [_spawn_peer("cheap", 400), _spawn_peer("fast", 400)]
    try:
        (pa, port_a), (pb, port_b) = procs
        urls = {"cheap": f"http://127.0.0.1:{port_a}", "fast": f"http://127.0.0.1:{port_b}"}
        cfg = RouterConfig(
            "chat", slo_ms=5000, replicas=[view(CHEAP, urls["cheap"]), view(FAST, urls["fast"])]
        )
        router = Router(cfg)
        with ServerThread(build_app(router)) as r:
            in_flight_at_kill = []

            def killer() -> None:
                deadline = time.monotonic() + 5
                while router.outstanding.get("cheap", 0) < 3 and time.monotonic() < deadline:
                    time.sleep(0.005)
                in_flight_at_kill.append(router.outstanding.get("cheap", 0))
                os.kill(pa.pid, signal.SIGKILL)

            import threading

            t = threading.Thread(target=killer)
            t.start()
            rs = post_all(r.url, 30, concurrency=10)
            t.join()
        assert in_flight_at_kill[0] >= 3  # requests really were in flight on the killed replica
        bad = [x for x in rs if not (isinstance(x, httpx.Response) and x.status_code == 200)]
        assert bad == [], bad[:3]
        assert router.counters.retries >= 3 and router.counters.failed == 0
        assert router.counters.ok == 30
    finally:
        for p, _ in procs:
            p.kill()
            p.wait()


def test_no_replica_within_the_slo_counts_a_violation_and_signals_the_autoscaler(
    spotshift_home: Path,
) -> None:
    with ServerThread(peer_app(PeerState("cheap", 0))) as a:
        # registry mode: the replica registers itself the way `spotshift serve` does
        api.register(
            api.ReplicaRecord("cheap", "chat", a.url, "gcp/us-west1", "spot", 1.5, os.getpid(), 0.0, "sha:x")
        )
        router = Router(RouterConfig("chat", slo_ms=30))  # 65 ms round trip alone breaks 30 ms
        assert [r.replica_id for r in router.replicas] == ["cheap"]
        with ServerThread(build_app(router, tick_s=0.05)) as r:
            rs = post_all(r.url, 5)
            time.sleep(0.2)
            sig = read_router_signal("chat")
    assert all(x.status_code == 200 and x.headers["x-spotshift-route"] == "fallback" for x in rs)
    assert sig["slo_violations"] == 5 and sig["violations_by_user_region"] == {"us-east": 5}
    assert signal_path("chat").parent == api.registry_path("chat").parent


def test_every_replica_down_answers_503_naming_the_endpoint(spotshift_home: Path) -> None:
    router = Router(RouterConfig("chat", slo_ms=500, replicas=[view(CHEAP, "http://127.0.0.1:9")]))
    with ServerThread(build_app(router)) as r:
        resp = httpx.post(r.url + api.COMPLETIONS_PATH, json=BODY)
        bad = httpx.post(
            r.url + api.COMPLETIONS_PATH, content=b"{", headers={"content-type": "application/json"}
        )
        region = httpx.post(r.url + api.COMPLETIONS_PATH, json=BODY, headers={api.HEADER_USER_REGION: "mars"})
    assert resp.status_code == 503 and "endpoint chat" in json.loads(resp.content)["error"]["message"]
    assert bad.status_code == 400 and region.status_code == 400
    assert router.counters.failed == 1


def test_router_speaks_mtls_to_replicas_and_rotates_its_certificate(
    spotshift_home: Path, tmp_path: Path
) -> None:
    import datetime as dt

    from spotshift.serving.mtls import LocalCA, uvicorn_ssl_options

    ca = LocalCA.open()
    ca.write_server_files(tmp_path / "replica", "replica-1")
    now = [dt.datetime(2026, 1, 1, tzinfo=dt.UTC)]
    with ServerThread(peer_app(PeerState("fast", 0)), ssl=uvicorn_ssl_options(tmp_path / "replica")) as a:
        cfg = RouterConfig(
            "chat",
            slo_ms=500,
            replicas=[view(FAST, a.url)],
            tls_dir=tmp_path / "router",
            clock=lambda: now[0],
        )
        router = Router(cfg)
        with ServerThread(build_app(router, tick_s=0.05)) as r:
            first = post_all(r.url, 20, concurrency=4)
            before = (tmp_path / "router" / "client.pem").read_bytes()
            now[0] += dt.timedelta(hours=24)
            time.sleep(0.3)  # a tick rotates the router's certificate
            second = post_all(r.url, 20, concurrency=4)
    assert (tmp_path / "router" / "client.pem").read_bytes() != before
    assert router._rotator.rotations == 1
    assert all(x.status_code == 200 for x in first + second)


def test_cli_router_serves_registered_replicas_and_rejects_bad_input(spotshift_home: Path) -> None:
    env = {**os.environ, "SPOTSHIFT_HOME": str(spotshift_home)}
    cmd = [sys.executable, "-m", "spotshift.cli", "router"]
    bad = subprocess.run([*cmd, "nosuch"], capture_output=True, text=True, env=env, cwd=REPO)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "nosuch" in bad.stderr
    bad = subprocess.run([*cmd, "chat", "--slo-ms", "-5"], capture_output=True, text=True, env=env, cwd=REPO)
    assert bad.returncode == 2 and "--slo-ms" in bad.stderr
    with ServerThread(peer_app(PeerState("fast", 0))) as a:
        api.register(
            api.ReplicaRecord("fast", "chat", a.url, "aws/us-east-1", "spot", 1.0, os.getpid(), 0.0, "x")
        )
        proc = subprocess.Popen(
            [*cmd, "chat", "--slo-ms", "500"], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO
        )
        try:
            line = proc.stdout.readline()
            assert line.startswith("routing chat at http://127.0.0.1:"), line
            url = line.split(" at ")[1].strip()
            resp = httpx.post(url + api.COMPLETIONS_PATH, json=BODY, timeout=10)
            assert resp.status_code == 200 and resp.headers[api.HEADER_REPLICA] == "fast"
        finally:
            proc.send_signal(signal.SIGTERM)
            # uvicorn shuts down gracefully, then re-raises SIGTERM (the conventional exit status)
            assert proc.wait(timeout=15) in (0, -signal.SIGTERM)
    assert read_router_signal("chat")["ok"] == 1  # the shutdown path wrote the last counters


def test_a_request_waits_for_a_replica_set_aside_for_a_moment_instead_of_failing(
    spotshift_home: Path,
) -> None:
    with ServerThread(peer_app(PeerState("fast", 0))) as a:
        router = Router(RouterConfig("chat", slo_ms=500, replicas=[view(FAST, a.url)]))
        # no tick in this test: it would replace the set-aside map this thread writes into
        with ServerThread(build_app(router, tick_s=60)) as r:
            # as after a dropped keep-alive connection or a timeout on a loaded box
            back = router.set_aside["fast"] = time.monotonic() + 1.8  # two waits of <= 1 s cover it
            resp = httpx.post(r.url + api.COMPLETIONS_PATH, json=BODY, timeout=10)
            answered = time.monotonic()
    assert resp.status_code == 200 and router.counters.failed == 0
    assert answered >= back and resp.headers["x-spotshift-attempts"] == "1"  # it waited, then went


def test_a_wait_for_a_set_aside_replica_outlasts_a_timer_that_fires_early(
    spotshift_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_sleep = asyncio.sleep

    async def early(delay: float, result: object = None) -> object:
        # uvloop's timers (ms resolution) fire up to 1 ms before the delay ran out
        return await real_sleep(max(0.0, delay - 0.002), result)

    with ServerThread(peer_app(PeerState("fast", 0))) as a:
        router = Router(RouterConfig("chat", slo_ms=500, replicas=[view(FAST, a.url)]))

        async def one() -> int:
            monkeypatch.setattr(asyncio, "sleep", early)
            router.set_aside["fast"] = time.monotonic() + 0.3
            try:
                status, _, _ = await router.forward(
                    json.dumps(BODY).encode(), "us-east", estimate_tokens(BODY)
                )
            finally:
                monkeypatch.undo()
                await router.stop()
            return status

        assert asyncio.run(one()) == 200
    assert router.counters.failed == 0
