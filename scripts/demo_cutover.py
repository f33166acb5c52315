"""The demo's cutover act (issue 15, item 9): endpoint ``chat`` moved to a cheaper region, twice, under load.

After the inference act, on the same endpoint and the job's committed model:

* **source**: two real replicas (``spotshift serve``, on-demand) in the most expensive of the
  endpoint's locations, started through the replica launcher, behind ``spotshift router``; constant
  load from the three user regions (:func:`spotshift.serving.loadgen.run_load`) runs through both
  cutovers and every status is counted.
* **cutover 1, a target that answers differently**: ``--model`` an early checkpoint of the job (a
  wrong checkpoint: nothing crashes, the greedy tokens differ), spot in the cheapest location. In
  the shadow phase the router mirrors half the requests to it and compares the answers: they
  differ, the router sets the target's weight to 0 at that window — rolled back automatically,
  before the target answered a single user — and the follower drains its replica.
* **cutover 2, a good target**: the job's model in the same cheap location: shadow 50 %, live 50 %,
  then 100 %: promoted; the source drained to its floor (one replica kept warm for the failback
  window).

Replicas are launched and drained only by the cutover's follower
(:func:`spotshift.serving.cutover_replicas.follow` through
:class:`~spotshift.serving.launcher.LocalReplicaLauncher`), as ``cutover_job`` does; the total never
exceeds the cap (steady + 1 for a fleet of two; 1.25x from four replicas on). Stage holds are on the
virtual clock: once a stage has had a passing analysis window the act moves the clock to the end of
its hold (hours in a second), so every decision is still the router's, from real windows. The
latency limit carries a generous slack (the box is shared; a replica's first requests are cold): the
act shows the answers check; the latency breach is measured by ``bench/bench_cutover.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

ENDPOINT = "chat"
STEADY = 2
LOAD_RPS = 4.0
MAX_LOAD_S = 1200.0  # an upper bound only: the load stops when the second cutover has ended
INTERVAL_S = 4.0
STAGES = {"shadow": "50:1h", "stages": "50:2h,100:0"}
START_TIMEOUT_S = 300.0
CUTOVER_TIMEOUT_S = 600.0


@dataclass
class CutoverAct:
    """What the act did: where from and to, each cutover's outcome, the load, the replica peak."""

    source: str = ""
    target: str = ""
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    load: dict[str, Any] = field(default_factory=dict)
    peak: int = 0
    cap: int = 0
    steady: int = STEADY


def early_checkpoint(job: str, locations: list[str]) -> str:
    """The path of the job's oldest committed checkpoint (a wrong model for the endpoint to serve)."""
    from spotshift.checkpoint.format import list_checkpoints
    from spotshift.jobs import get_job
    from spotshift.placement.state import load_state
    from spotshift.sync.store_url import open_store
    from spotshift.training.runs import store_url_for

    places = [*locations, load_state(job).location, get_job(job).start_location]
    for loc in [p for p in places if p]:
        url = store_url_for(loc)
        ids = list_checkpoints(open_store(url), job)
        if ids:
            return f"{url.rstrip('/')}/checkpoints/{job}/{ids[0]}"
    raise RuntimeError(f"job {job} has no committed checkpoint in the stores of {', '.join(places)}")


def drive(launcher: Any, act: CutoverAct, timeout_s: float = CUTOVER_TIMEOUT_S) -> Any:
    """Follow the cutover until it has ended: replicas to the plan, the clock to the end of a held
    stage once it had a passing window; one line per stage entered."""
    from spotshift.clock import load_clock, parse_utc
    from spotshift.serving import cutover as co

    deadline = time.monotonic() + timeout_s
    seen = ""
    while True:
        st = co.require_state(ENDPOINT)
        step = co.follow(st, launcher)
        act.peak = max(act.peak, step.peak)
        label = f"{st.phase} {st.current.label if st.current and st.active else ''}".strip()
        if label != seen:
            seen = label
            print(
                f"    {label:22s} weight {st.target_weight:4.0%}, mirrored {st.mirror_share:3.0%}; replicas "
                f"source {step.after['source']} + target {step.after['target']} (cap {step.cap})",
                flush=True,
            )
        if not st.active:
            return st
        if time.monotonic() > deadline:
            raise RuntimeError(f"cutover still {label} after {timeout_s:.0f} s ({len(st.windows)} windows)")
        stage = st.current
        if stage is not None and st.stage_passed_windows >= 1:
            clock = load_clock()
            ahead = (
                parse_utc(st.stage_started_at) + timedelta(seconds=stage.hold_s) - clock.now()
            ).total_seconds()
            if ahead > 0:
                clock.advance(ahead + 1).save()
        time.sleep(0.5)


def one_cutover(act: CutoverAct, launcher: Any, price: float, model: str = "") -> None:
    """Start a cutover to ``act.target`` and drive it to its end; its outcome appended to ``act``."""
    from spotshift.migration.endpoint_cutover import StartOptions, record_rows, start
    from spotshift.serving import cutover as co

    th = co.Thresholds(min_samples=4, p99_slack_ms=1500.0)
    opts = StartOptions(
        to_location=act.target, market="spot", model=model, interval_s=INTERVAL_S, thresholds=th,
        usd_per_hour=price, steady_replicas=STEADY, source_floor=1, **STAGES,
    )  # fmt: skip
    st = start(ENDPOINT, opts)
    act.cap = co.fleet_cap(st.steady_replicas)
    st = drive(launcher, act)
    record_rows(st)  # raw.cutovers: one row per stage (the cost report lists the cutover)
    rows = {r["stage"]: r for r in st.stage_rows}
    act.outcomes.append(
        {
            "model": "early checkpoint" if model else "the job's model",
            "phase": st.phase,
            "stage": st.rolled_back_at_stage or (st.current.label if st.current else ""),
            "criterion": st.failed_criterion,
            "reason": st.reason,
            "stages": [r["stage"] for r in st.stage_rows],
            "agreement": [rows[s]["agreement"] for s in rows],
        }
    )


def run_act(job: str, locations: list[str], quotes: dict[str, Any]) -> CutoverAct:
    """The whole act (module docstring); the clock runs at wall speed while replicas serve."""
    from scripts.demo_inference import USERS, _start, _url
    from spotshift.clock import VirtualClock, load_clock
    from spotshift.serving.launcher import LocalReplicaLauncher
    from spotshift.serving.loadgen import run_load

    act = CutoverAct()
    by_price = sorted(locations, key=lambda loc: (quotes[loc].price("spot") or 1e9, loc))
    act.target, act.source = by_price[0], by_price[-1]
    wrong = early_checkpoint(job, locations)
    paced = load_clock()
    VirtualClock(paced.now().isoformat(), time.time(), 1.0).save()
    launcher = LocalReplicaLauncher()
    router = None
    stop = threading.Event()
    try:
        src_price = quotes[act.source].price("on_demand") or 0.0
        infos = [
            launcher.start(ENDPOINT, act.source, "on_demand", usd_per_hour=src_price) for _ in range(STEADY)
        ]
        for info in infos:
            launcher.wait_registered(info, START_TIMEOUT_S)
        router = _start(["router", ENDPOINT])
        url = _url(router, time.monotonic() + START_TIMEOUT_S)
        result: dict[str, Any] = {}
        loader = threading.Thread(
            target=lambda: result.update(
                asyncio.run(
                    run_load(url, rps=LOAD_RPS, duration_s=MAX_LOAD_S, users=USERS, seed=0, stop=stop)
                ).to_dict()
            ),
            daemon=True,
        )
        loader.start()
        price = quotes[act.target].price("spot") or 0.0
        print(f"  cutover 1: {act.source} -> {act.target} (spot), target serving an early checkpoint")
        one_cutover(act, launcher, price, model=wrong)
        print(f"  cutover 2: {act.source} -> {act.target} (spot), target serving the job's model")
        one_cutover(act, launcher, price)
        stop.set()
        loader.join(timeout=120)
        act.load = result
    finally:
        stop.set()
        _stop_all(launcher, router)
        now = load_clock().now().isoformat()
        VirtualClock(
            now, time.time(), paced.speed, paced.pace_trainers, paced.pace_speed, paced.stepped
        ).save()
    return act


def _stop_all(launcher: Any, router: subprocess.Popen | None) -> None:
    """Drain every replica of the endpoint (the launcher's stop) and stop the router.

    Listed again until none is left: a launch still starting when the registry was read registers
    while the others drain, and then it is neither in that listing nor provisioning any more."""
    from spotshift.errors import NotFoundError
    from spotshift.serving import replica_api as api

    for _ in range(5):
        ids = [r.replica_id for r in api.live_replicas(ENDPOINT, include_draining=True)]
        ids += [info.launch_id for info in launcher.provisioning(ENDPOINT)]
        if not ids:
            break
        for replica_id in ids:
            with contextlib.suppress(NotFoundError):  # it stopped (or registered) meanwhile
                launcher.stop(ENDPOINT, replica_id, timeout_s=60)
    if router is not None and router.poll() is None:
        router.send_signal(signal.SIGTERM)
        try:
            router.wait(timeout=60)
        except subprocess.TimeoutExpired:
            router.kill()


def print_act(act: CutoverAct) -> None:
    """The act's closing lines (the per-stage lines were printed as the cutovers moved)."""
    for i, o in enumerate(act.outcomes, 1):
        why = f" ({o['criterion']}: {o['reason'][:160]})" if o["phase"] == "rolled_back" else ""
        print(f"  cutover {i} ({o['model']}): {o['phase']} at {o['stage']}{why}")
    load = act.load
    print(
        f"  load through both: {load.get('requests')} requests from 3 user regions, {load.get('ok')} ok, "
        f"{load.get('errors')} failed; replicas at most {act.peak} (cap {act.cap}, steady {STEADY})"
    )


def main() -> int:
    """Run the act alone on a demo home after the inference act (``SPOTSHIFT_HOME``):
    ``python scripts/demo_cutover.py [JOB]``."""
    from spotshift.serving.control import location_quotes_now
    from spotshift.serving.endpoints import get_endpoint
    from spotshift.warehouse import connect

    ep = get_endpoint(ENDPOINT)
    with connect(read_only=True) as con:
        quotes, _ = location_quotes_now(con, ep)
    act = run_act(sys.argv[1] if len(sys.argv) > 1 else "llm-finetune", list(ep.allowed_locations),
                  {q.location: q for q in quotes})  # fmt: skip
    print_act(act)
    return 0 if act.load.get("errors") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
