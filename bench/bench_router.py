"""Router overhead (issue 14, first target): ``spotshift router`` and nginx vs calling a replica directly.

Same run, same replicas: two model-less replica peers (``bench/_replica_peer.py``, each its own
process, answering at once, so what is measured is the proxy) registered for an endpoint; the
router runs as ``spotshift router`` (its own process) and nginx (Debian's package, when installed)
is rendered by :class:`spotshift.serving.nginx.NginxBackend` from the router's TrafficPolicy. The
load is ``spotshift loadgen``'s open-loop generator (:func:`spotshift.serving.loadgen.run_load`) in
this process at 20 / 50 / 200 / 500 / 1000 req/s (20 and 50: rates a loaded machine can still offer).

Interleaved, so that every target sees the same machine state (a VM's speed and its neighbours'
load drift from minute to minute, and a low-rate run pays two process wake-ups through a proxy
against one direct): at each rate, 5 rounds; each round loads direct, router and nginx for one
short slice each (1 s, or 60 requests at low rates; order reversed every other round), on
keep-alive client sessions kept across slices. Per target the figures are medians over rounds;
the added latency of a proxy is the median over rounds of (proxy - direct) *in the same round*.
A target answering less than half the offered rate is saturated and not loaded at higher rates.
``--tls``: the replicas require mutual TLS (router, nginx and the direct caller present
certificates from the local CA), as deployed; results in ``router_tls.json``.

Targets: added p50 <= 1 ms and added p99 <= 5 ms (router minus direct, same rate). Also reported:
the throughput ceiling (closed loop, 64 concurrent requests, completed req/s) direct, through the
router and through nginx (interleaved, 3 rounds, median). ``--quick``: short slices, one rate (a
smoke test of the script).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ENDPOINT = "bench"
SLO_MS = 1000.0
TARGET_P50_MS, TARGET_P99_MS = 1.0, 5.0
PEERS = (("cheap", "aws/us-east-1", "spot", 1.0), ("fast", "gcp/us-east4", "on_demand", 3.0))


def spawn(cmd: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    return proc, proc.stdout.readline().strip()


async def closed_loop(client: Any, url: str, seconds: float, concurrency: int = 64) -> float:
    """Completed requests per second with ``concurrency`` requests always outstanding (on
    ``client``, an aiohttp session as ``spotshift loadgen`` uses)."""
    from spotshift.serving.replica_api import COMPLETIONS_PATH

    done = 0
    body = json.dumps({"prompt": "ceiling", "max_tokens": 4}).encode()
    headers = {"content-type": "application/json"}
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            async with client.post(url + COMPLETIONS_PATH, data=body, headers=headers) as r:
                await r.read()
                done += r.status == 200

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return round(done / (time.perf_counter() - t0), 1)


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and their children (nginx workers)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            pass
    return total


def slice_seconds(rps: float, base_s: float) -> float:
    """Length of one slice at ``rps``: ``base_s``, longer at low rates so a slice holds >= 60 requests."""
    return max(base_s, 60.0 / rps)


def _median(xs: list[float]) -> float:
    return round(statistics.median(xs), 3)


def summarise(slices: dict[str, list[dict]], rps: float) -> dict:
    """One rate's row from its slices (``slices[target][round]``): per target the median over rounds
    of each figure; per proxy the median over rounds of (proxy - direct) in the same round.

    A round whose *direct* slice fell below 90 % of the offered rate is disturbed (the generator or
    the machine stalled: its direct latency is not a baseline) and left out of the differences while
    an undisturbed round remains; a proxy that falls behind is never left out."""
    row: dict = {"slices": slices, "targets": {}}
    for name, runs in slices.items():
        ok = sum(r["ok"] for r in runs)
        row["targets"][name] = {
            "p50_ms": _median([r["p50_ms"] for r in runs if r["p50_ms"] is not None] or [float("nan")]),
            "p99_ms": _median([r["p99_ms"] for r in runs if r["p99_ms"] is not None] or [float("nan")]),
            "achieved_rps": _median([r["achieved_rps"] for r in runs]),
            "ok": ok,
            "errors": sum(r["errors"] for r in runs),
            "cpu_ms_per_request": round(sum(r["cpu_s"] for r in runs) * 1000 / max(1, ok), 3),
        }
    direct = slices.get("direct")
    disturbed = [i for i, d in enumerate(direct or []) if d["achieved_rps"] < 0.9 * rps]
    row["rounds_disturbed"] = disturbed
    for proxy in ("router", "nginx"):
        if proxy not in slices or direct is None:
            continue
        pairs = [
            (p, d)
            for i, (p, d) in enumerate(zip(slices[proxy], direct, strict=True))
            if p["p50_ms"] is not None
            and d["p50_ms"] is not None
            and (i not in disturbed or len(disturbed) == len(direct))
        ]
        if not pairs:
            continue
        for q in ("p50", "p99"):
            diffs = [p[f"{q}_ms"] - d[f"{q}_ms"] for p, d in pairs]
            row[f"{proxy}_added_{q}_ms"] = _median(diffs)
            row[f"{proxy}_added_{q}_ms_by_round"] = [round(x, 3) for x in diffs]
    t = row["targets"]
    row["router_meets_targets"] = (
        "router_added_p50_ms" in row
        and row["router_added_p50_ms"] <= TARGET_P50_MS
        and row["router_added_p99_ms"] <= TARGET_P99_MS
        and t["router"]["errors"] == 0
        and t["router"]["achieved_rps"] >= 0.95 * rps
    )
    return row


async def measure(
    urls: dict[str, str],
    pids: dict[str, list[int]],
    rates: list[float],
    base_s: float,
    rounds: int,
    direct_ssl: Any = None,
) -> dict:
    """Interleaved open-loop slices: at each rate, ``rounds`` rounds, each loading every target for one
    short slice (order reversed every other round), so direct, router and nginx see the same machine
    state; the proxy's own CPU per request is kept besides latency (CPU time does not depend on how
    loaded the shared machine is, latency does)."""
    import aiohttp

    from spotshift.serving.loadgen import MAX_IN_FLIGHT, run_load

    sessions = {
        k: aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=MAX_IN_FLIGHT,
                keepalive_timeout=4.0,
                ssl=direct_ssl if k == "direct" and direct_ssl else True,
            ),
            trust_env=False,
        )
        for k in urls
    }
    out: dict = {}
    saturated: dict[str, float] = {}  # target -> the rate it could not keep up with
    try:
        for rps in rates:
            active = [k for k in urls if k not in saturated]
            seconds = slice_seconds(rps, base_s)
            slices: dict[str, list[dict]] = {k: [] for k in active}
            for rnd in range(rounds):
                for name in active if rnd % 2 == 0 else active[::-1]:
                    url, client = urls[name], sessions[name]
                    # keep-alive connections open (and not idle-closed) before the slice
                    await run_load(url, rps=min(rps, 200), duration_s=0.1, client=client)
                    t0, c0 = time.perf_counter(), cpu_s(pids[name])
                    res = (await run_load(url, rps=rps, duration_s=seconds, client=client)).to_dict()
                    res["achieved_rps"] = round(res["ok"] / (time.perf_counter() - t0), 1)
                    res["cpu_s"] = round(cpu_s(pids[name]) - c0, 4)
                    slices[name].append(res)
                print(
                    f"  {rps:>6.0f} req/s round {rnd}: "
                    + ", ".join(
                        f"{k} p50 {v[-1]['p50_ms']} p99 {v[-1]['p99_ms']}" for k, v in slices.items()
                    ),
                    flush=True,
                )
            row = summarise(slices, rps)
            for k, r in row["targets"].items():  # below half the offered rate: saturated
                if r["achieved_rps"] < 0.5 * rps:
                    saturated[k] = rps
            row["saturated_before"] = dict(saturated)
            if saturated.get("direct") == rps:
                row["note"] = (
                    "the load generator could not offer this rate directly: proxy overhead not measurable"
                )
            out[str(int(rps))] = row
        ceiling: dict[str, list[float]] = {k: [] for k in urls}
        for rnd in range(3):  # interleaved too
            for name in list(urls) if rnd % 2 == 0 else list(urls)[::-1]:
                ceiling[name].append(await closed_loop(sessions[name], urls[name], base_s))
        print(f"  ceiling req/s: {ceiling}", flush=True)
    finally:
        for client in sessions.values():
            await client.close()
    return {"rates": out, "ceiling": {k: _median(v) for k, v in ceiling.items()}, "ceiling_by_round": ceiling}


def start_targets(home: Path, env: dict[str, str], tls: bool, procs: list[subprocess.Popen]) -> tuple:
    """Two replica peers registered for the endpoint, ``spotshift router`` in front of them, nginx when
    installed; with ``tls`` replicas require mutual TLS from the router, nginx and direct callers alike.
    Returns (urls, pids, nginx backend or None, direct client's ssl context or None)."""
    from bench._replica_peer import bound_socket
    from spotshift.serving import replica_api as api
    from spotshift.serving.mtls import LocalCA, client_context
    from spotshift.serving.nginx import NginxBackend, nginx_binary
    from spotshift.serving.policy import InferenceTimeModel, ReplicaView, traffic_policy

    ca = LocalCA.open() if tls else None
    scheme = "https" if tls else "http"
    views = []
    for rid, loc, market, price in PEERS:
        cmd = [sys.executable, str(REPO / "bench" / "_replica_peer.py"), "--id", rid]
        if ca is not None:
            cmd += ["--tls-dir", str(ca.write_server_files(home / f"tls-{rid}", rid))]
        p, port = spawn(cmd, env)
        procs.append(p)
        url = f"{scheme}://127.0.0.1:{port}"
        api.register(api.ReplicaRecord(rid, ENDPOINT, url, loc, market, price, p.pid, time.time(), "bench"))
        views.append(ReplicaView(rid, url, loc, market, price))
    cmd = [sys.executable, "-m", "spotshift.cli", "router", ENDPOINT, "--slo-ms", str(SLO_MS)]
    client_tls = home / "tls-router"
    if tls:
        cmd += ["--tls-dir", str(client_tls)]
    p, line = spawn(cmd, env)
    procs.append(p)
    urls = {"direct": views[0].url, "router": line.split(" at ")[1]}
    # CPU of the first hop: the peer for direct calls, the proxy alone otherwise
    pids = {"direct": [procs[0].pid], "router": [p.pid]}
    direct_ssl = None
    if ca is not None:  # the direct caller presents a client certificate from the same CA
        direct_ssl = client_context(ca.write_client_file(home / "tls-direct", "bench-direct"))
    backend = None
    if nginx_binary():
        s = bound_socket()
        nginx_port = s.getsockname()[1]
        s.close()
        nginx_tls = ca.write_client_file(home / "tls-nginx", "nginx") if ca is not None else None
        backend = NginxBackend(home / "nginx", nginx_port, nginx_tls)
        policy = traffic_policy(ENDPOINT, views, {"us-east": 1.0}, InferenceTimeModel(), SLO_MS)
        backend.apply(policy)
        urls["nginx"] = f"http://127.0.0.1:{nginx_port}"
        pids["nginx"] = [backend.master_pid() or 0]
    return urls, pids, backend, direct_ssl


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one rate, short slices (a smoke test)")
    parser.add_argument(
        "--tls",
        action="store_true",
        help="replicas require mutual TLS (router, nginx and the direct caller present certificates "
        "from the local CA); results in router_tls.json",
    )
    args = parser.parse_args()
    # 20 and 50 req/s: rates a loaded shared machine can still offer without the generator itself
    # saturating; 200 / 500 / 1000 are the issue's
    rates = [200.0] if args.quick else [20.0, 50.0, 200.0, 500.0, 1000.0]
    base_s, rounds = (0.5, 2) if args.quick else (1.0, 5)

    load_start = round(os.getloadavg()[0], 2)
    home = Path(tempfile.mkdtemp(prefix="spotshift-bench-router-"))
    env = {**os.environ, "SPOTSHIFT_HOME": str(home), "PYTHONPATH": str(REPO)}
    os.environ["SPOTSHIFT_HOME"] = str(home)
    procs: list[subprocess.Popen] = []
    backend = None
    try:
        urls, pids, backend, direct_ssl = start_targets(home, env, args.tls, procs)
        measured = asyncio.run(measure(urls, pids, rates, base_s, rounds, direct_ssl))
    finally:
        if backend is not None:
            backend.stop()
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=15)
    rows = measured["rates"]
    result = {
        "quick": args.quick,
        "mutual_tls": args.tls,
        "replicas": len(PEERS),
        "method": "interleaved slices: per rate, each round loads direct, router and nginx one short "
        "slice each (order reversed every other round); figures are medians over rounds, added "
        "latency the median of the per-round differences",
        "base_slice_s": base_s,
        "rounds": rounds,
        "targets": {"added_p50_ms": TARGET_P50_MS, "added_p99_ms": TARGET_P99_MS},
        "rates": rows,
        "throughput_ceiling_rps": measured["ceiling"],
        "throughput_ceiling_by_round": measured["ceiling_by_round"],
        "targets_met": {rate: row["router_meets_targets"] for rate, row in rows.items()},
        "note": None
        if "nginx" in pids
        else "nginx not installed (apt-get install nginx): nginx figures skipped",
        "load_average_start_1m": load_start,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    name = "router_tls" if args.tls else "router"
    write_result(name + "_quick" if args.quick else name, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
