"""Router overhead (issue 14, first target): ``spotshift router`` and nginx vs calling a replica directly.

Same run, same replicas: two model-less replica peers (``bench/_replica_peer.py``, each its own
process, answering at once, so what is measured is the proxy) registered for an endpoint; the
router runs as ``spotshift router`` (its own process) and nginx (Debian's package, when installed)
is rendered by :class:`spotshift.serving.nginx.NginxBackend` from the router's TrafficPolicy. The
load is ``spotshift loadgen``'s open-loop generator (:func:`spotshift.serving.loadgen.run_load`) in
this process at 200 / 500 / 1000 req/s; for each rate the three targets are loaded one after
another, twice, and the better of the two runs is kept (the machine is shared: a neighbour's burst
should not be billed to the proxy); a target answering less than half the offered rate is
saturated and not loaded at higher rates.

Targets: added p50 <= 1 ms and added p99 <= 5 ms (router minus direct, same rate). Also reported:
the throughput ceiling (closed loop, 64 concurrent requests, completed req/s) direct, through the
router and through nginx. ``--quick``: short runs, one rate (a smoke test of the script).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


async def closed_loop(url: str, seconds: float, concurrency: int = 64) -> float:
    """Completed requests per second with ``concurrency`` requests always outstanding (the same
    aiohttp client as ``spotshift loadgen``)."""
    import aiohttp

    from spotshift.serving.replica_api import COMPLETIONS_PATH

    done = 0
    body = json.dumps({"prompt": "ceiling", "max_tokens": 4}).encode()
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as client:
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


def measure(
    urls: dict[str, str], pids: dict[str, list[int]], rates: list[float], seconds: float, reps: int
) -> dict:
    """Open-loop runs per rate and target; the proxy's own CPU per request besides latency (CPU time
    does not depend on how loaded the shared machine is, latency does)."""
    from spotshift.serving.loadgen import run_load

    out: dict = {}
    saturated: dict[str, float] = {}  # target -> the rate it could not keep up with
    for rps in rates:
        active = {k: u for k, u in urls.items() if k not in saturated}
        runs: dict[str, list[dict]] = {k: [] for k in active}
        for _ in range(reps):
            for name, url in active.items():
                asyncio.run(run_load(url, rps=min(rps, 200), duration_s=0.5))  # warm the pools
                t0, c0 = time.perf_counter(), cpu_s(pids[name])
                res = asyncio.run(run_load(url, rps=rps, duration_s=seconds)).to_dict()
                res["achieved_rps"] = round(res["ok"] / (time.perf_counter() - t0), 1)
                res["cpu_ms_per_request"] = round((cpu_s(pids[name]) - c0) * 1000 / max(1, res["ok"]), 3)
                runs[name].append(res)
                print(f"  {rps:>6.0f} req/s {name:7s} {res}", flush=True)
        best = {k: min(v, key=lambda r: (r["errors"], r["p99_ms"] or 1e9)) for k, v in runs.items()}
        for k, r in best.items():  # below half the offered rate: the target (or the generator) is saturated
            if r["achieved_rps"] < 0.5 * rps:
                saturated[k] = rps
        row: dict = {"runs": runs, "best": best, "saturated_before": dict(saturated)}
        if "direct" in saturated and saturated["direct"] == rps:
            row["note"] = (
                "the load generator could not offer this rate directly: proxy overhead not measurable"
            )

        for proxy in ("router", "nginx"):
            if proxy in best and "direct" in best:
                row[f"{proxy}_added_p50_ms"] = round(best[proxy]["p50_ms"] - best["direct"]["p50_ms"], 3)
                row[f"{proxy}_added_p99_ms"] = round(best[proxy]["p99_ms"] - best["direct"]["p99_ms"], 3)
        row["router_meets_targets"] = (
            "router_added_p50_ms" in row
            and row["router_added_p50_ms"] <= TARGET_P50_MS
            and row["router_added_p99_ms"] <= TARGET_P99_MS
            and best["router"]["errors"] == 0
        )
        out[str(int(rps))] = row
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    # 20 and 50 req/s: rates a loaded shared machine can still offer without the generator itself
    # saturating; 200 / 500 / 1000 are the issue's
    rates = [200.0] if args.quick else [20.0, 50.0, 200.0, 500.0, 1000.0]
    seconds, reps, ceiling_s = (1.0, 1, 1.0) if args.quick else (3.0, 2, 3.0)

    from spotshift.serving import replica_api as api
    from spotshift.serving.nginx import NginxBackend, nginx_binary
    from spotshift.serving.policy import InferenceTimeModel, ReplicaView, traffic_policy

    load_start = round(os.getloadavg()[0], 2)
    home = Path(tempfile.mkdtemp(prefix="spotshift-bench-router-"))
    env = {**os.environ, "SPOTSHIFT_HOME": str(home), "PYTHONPATH": str(REPO)}
    os.environ["SPOTSHIFT_HOME"] = str(home)
    procs: list[subprocess.Popen] = []
    backend = None
    try:
        views = []
        for rid, loc, market, price in PEERS:
            p, port = spawn([sys.executable, str(REPO / "bench" / "_replica_peer.py"), "--id", rid], env)
            procs.append(p)
            url = f"http://127.0.0.1:{port}"
            api.register(
                api.ReplicaRecord(rid, ENDPOINT, url, loc, market, price, p.pid, time.time(), "bench")
            )
            views.append(ReplicaView(rid, url, loc, market, price))
        p, line = spawn(
            [sys.executable, "-m", "spotshift.cli", "router", ENDPOINT, "--slo-ms", str(SLO_MS)], env
        )
        procs.append(p)
        urls = {"direct": views[0].url, "router": line.split(" at ")[1]}
        # CPU of the first hop: the peer for direct calls, the proxy alone otherwise
        pids = {"direct": [procs[0].pid], "router": [p.pid]}
        nginx_note = None
        if nginx_binary():
            from bench._replica_peer import bound_socket

            s = bound_socket()
            nginx_port = s.getsockname()[1]
            s.close()
            backend = NginxBackend(home / "nginx", nginx_port)
            policy = traffic_policy(ENDPOINT, views, {"us-east": 1.0}, InferenceTimeModel(), SLO_MS)
            backend.apply(policy)
            urls["nginx"] = f"http://127.0.0.1:{nginx_port}"
            pids["nginx"] = [backend.master_pid() or 0]
        else:
            nginx_note = "nginx not installed (apt-get install nginx): nginx figures skipped"
        rows = measure(urls, pids, rates, seconds, reps)
        ceiling = {k: asyncio.run(closed_loop(u, ceiling_s)) for k, u in urls.items()}
        print(f"  ceiling req/s: {ceiling}", flush=True)
    finally:
        if backend is not None:
            backend.stop()
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=15)
    result = {
        "quick": args.quick,
        "replicas": len(PEERS),
        "seconds_per_run": seconds,
        "repetitions": reps,
        "targets": {"added_p50_ms": TARGET_P50_MS, "added_p99_ms": TARGET_P99_MS},
        "rates": rows,
        "throughput_ceiling_rps": ceiling,
        "targets_met": {rate: row["router_meets_targets"] for rate, row in rows.items()},
        "note": nginx_note,
        "load_average_start_1m": load_start,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    write_result("router_quick" if args.quick else "router", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
