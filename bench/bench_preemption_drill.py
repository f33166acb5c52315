"""Preemption drill (issue 14, second target): constant load, notices to half of the spot replicas.

Real replicas: a tiny model the trainer commits (``spotshift train``), served by ``spotshift serve``
processes — four on spot in four locations (two GCP, two AWS), one on-demand — behind
``spotshift router`` (its own process), with the endpoint's 1,000 ms SLO and the round trip from
``us-east`` applied on the path. Each spot location has its own instance metadata server
(:class:`spotshift.training.notice_server.MetadataServer`, registered per location as the
preemption injector does), so a replica sees only its own location's notices — the trainers'
notice path. ``spotshift loadgen``'s open-loop generator (:func:`spotshift.serving.loadgen.run_load`)
offers a constant rate; a third of the way in, one GCP and one AWS spot location get a preemption
notice (30 s): their replicas stop taking requests, finish those in flight, deregister, and the
router retries what they refused on the others.

Reported, same run: the load before the notices (baseline) and the load spanning them (drill):
requests, ok, failed, p50/p99; the replicas that drained and deregistered. Targets: 0 failed
requests and p99 within the SLO in the drill. ``--quick``: a shorter run (smoke test).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ENDPOINT = "drill"
SLO_MS = 1000.0
START_TIMEOUT_S = (
    900.0  # torch import + checkpoint verification per replica on a loaded machine (load 45: > 5 min)
)
SPOT = (("gcp/us-east4", 0.9), ("gcp/us-central1", 0.95), ("aws/us-east-1", 1.0), ("aws/us-east-2", 1.05))
ON_DEMAND = (("gcp/us-east1", 3.0),)
NOTICED = ("gcp/us-east4", "aws/us-east-1")  # half of the spot replicas, one per provider
USERS = {"us-east": 1.0}


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "spotshift.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=REPO,
    )


def _url_of(proc: subprocess.Popen, deadline: float) -> str:
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if time.monotonic() > deadline or " at " not in line:
        raise RuntimeError(f"a process did not start: {line!r} (exit {proc.poll()})")
    return line.split(" at ", 1)[1].split(" ", 1)[0].strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rps, baseline_s, drill_s = (4.0, 8.0, 20.0) if args.quick else (8.0, 30.0, 90.0)

    home = Path(tempfile.mkdtemp(prefix="spotshift-bench-drill-"))
    os.environ["SPOTSHIFT_HOME"] = str(home)
    for k in ("DAGSTER_HOME", "SPOTSHIFT_WAREHOUSE", "SPOTSHIFT_CONFIG"):
        os.environ.pop(k, None)
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    from spotshift.cli import main as cli
    from spotshift.serving import replica_api as api
    from spotshift.serving.loadgen import run_load
    from spotshift.training.notice_server import MetadataServer
    from spotshift.training.preemption_endpoints import register_endpoints
    from tests.training_support import declare_tiny_job

    declare_tiny_job(home, total_steps=400, every=40)
    if cli(["train", "tiny", "--location", "gcp/us-central1", "--steps", "40"]) != 0:
        raise RuntimeError("training the drill's model failed")
    if cli(
        ["endpoints", "add", ENDPOINT, "--model", "tiny", "--slo-ms", f"{SLO_MS:g}", "--users", "us-east=1"]
    ):
        raise RuntimeError("declaring the drill's endpoint failed")
    servers = {loc: MetadataServer() for loc, _ in SPOT}
    register_endpoints({loc: s.url for loc, s in servers.items()})
    procs: list[subprocess.Popen] = []
    by_loc: dict[str, subprocess.Popen] = {}
    try:
        for loc, price in SPOT + ON_DEMAND:
            market = "spot" if (loc, price) in SPOT else "on_demand"
            p = _start(
                ["serve", ENDPOINT, "--location", loc, "--market", market, "--usd-per-hour", str(price)]
                + ["--no-record"],  # five processes appending to one DuckDB file would contend for its lock
                env,
            )
            procs.append(p)
            by_loc[loc] = p
        deadline = time.monotonic() + START_TIMEOUT_S
        for p in list(procs):
            _url_of(p, deadline)
        router = _start(["router", ENDPOINT], env)
        procs.append(router)
        url = _url_of(router, time.monotonic() + START_TIMEOUT_S)
        before = {r.replica_id: r.location for r in api.live_replicas(ENDPOINT)}
        print(f"replicas: {sorted(before.values())}; router at {url}", flush=True)

        async def drill() -> tuple[dict, dict, float]:
            base = await run_load(url, rps=rps, duration_s=baseline_s, users=USERS, seed=1)
            print(f"  baseline {base.to_dict()}", flush=True)

            async def notices() -> float:
                await asyncio.sleep(drill_s / 3)
                for loc in NOTICED:
                    servers[loc].preempt(loc.split("/")[0], in_seconds=30)
                return time.time()

            noticed_at, result = await asyncio.gather(
                notices(), run_load(url, rps=rps, duration_s=drill_s, users=USERS, seed=2)
            )
            print(f"  drill {result.to_dict()}", flush=True)
            return base.to_dict(), result.to_dict(), noticed_at

        base, res, noticed_at = asyncio.run(drill())
        exits = {}
        for loc in NOTICED:
            try:
                exits[loc] = by_loc[loc].wait(timeout=60)
            except subprocess.TimeoutExpired:
                exits[loc] = None
        after = {r.replica_id: r.location for r in api.live_replicas(ENDPOINT, include_draining=True)}
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        for s in servers.values():
            s.close()
    drained = sorted(loc for loc in NOTICED if loc not in after.values())
    result = {
        "quick": args.quick,
        "slo_ms": SLO_MS,
        "rps": rps,
        "baseline_s": baseline_s,
        "drill_s": drill_s,
        "replicas": {"spot": [loc for loc, _ in SPOT], "on_demand": [loc for loc, _ in ON_DEMAND]},
        "noticed": list(NOTICED),
        "notice_s": 30,
        "baseline": base,
        "drill": res,
        "noticed_replicas_exited": {loc: code for loc, code in exits.items()},
        "noticed_replicas_deregistered": drained,
        "replicas_left": sorted(after.values()),
        "targets": {"failed_requests": 0, "p99_ms_within": SLO_MS},
        "targets_met": {
            "zero_failed": res["errors"] == 0 and res["ok"] == res["requests"],
            "p99_within_slo": res["p99_ms"] is not None and res["p99_ms"] <= SLO_MS,
        },
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    print(result["targets_met"], flush=True)
    write_result("preemption_drill_quick" if args.quick else "preemption_drill", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
