"""A cutover to a new checkpoint in the location the endpoint already serves from (issue 15 item 1).

``cutover start ENDPOINT --to <its own location> --model CHECKPOINT``: the replicas serving the old
checkpoint there are the source, those serving the new one the target, for the follower (which
launches the target with ``--model`` and drains the source) and for the router's split alike.
The launcher is the recording one of ``test_cutover_replicas.py``; its launches register the
checkpoint they were asked to serve.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from bench._cutover_fleet import Fleet, Load, ServerThread, drive, freeze_clock
from spotshift.clock import parse_utc
from spotshift.errors import ConfigError
from spotshift.migration.endpoint_cutover import StartOptions, start
from spotshift.serving import cutover as co
from spotshift.serving import replica_api as api
from spotshift.serving.launcher import LaunchInfo
from spotshift.serving.router import Router
from spotshift.serving.router_app import build_app
from spotshift.serving.router_state import RouterConfig
from tests.unit.serving.test_cutover_replicas import SOURCE, Launcher, register_sources

OLD, NEW = "s0000000100-aaaa", "s0000000200-bbbb"


class CheckpointLauncher(Launcher):
    """A launch serves the checkpoint it was asked for (``--model``), else the endpoint's (OLD)."""

    def start(
        self, endpoint: str, location: str, market: str, *, usd_per_hour: float, model: str = ""
    ) -> LaunchInfo:
        info = super().start(endpoint, location, market, usd_per_hour=usd_per_hour, model=model)
        self.pending[-1] = dataclasses.replace(info, model=model)
        return self.pending[-1]

    def settle(self) -> None:
        for i in self.pending:
            ckpt = i.model.rsplit("/", 1)[-1] if i.model else OLD
            api.register(
                api.ReplicaRecord(
                    i.launch_id, i.endpoint, "http://127.0.0.1:1", i.location, i.market, i.usd_per_hour,
                    os.getpid(), time.time(), ckpt,
                )
            )  # fmt: skip
        self.pending = []
        self._sample()


def _by_checkpoint() -> dict[str, int]:
    live = api.live_replicas("chat")
    return {
        "source": sum(r.checkpoint == OLD for r in live),
        "target": sum(r.checkpoint == NEW for r in live),
    }


def _follow(st: co.CutoverState, launcher: Launcher) -> None:
    co.follow(st, launcher)
    # launches still provisioning count on the side they were launched for (no checkpoint yet)
    assert co.follow(st, launcher).changed is False
    launcher.settle()
    assert co.follow(st, launcher).changed is False


def test_a_new_checkpoint_in_the_same_location_is_cut_over_stage_by_stage(spotshift_home: Path) -> None:
    register_sources(4, checkpoint=OLD)
    ckpts = f"{spotshift_home}/stores/x/checkpoints/tiny"
    opts = StartOptions(to_location=SOURCE, market="on_demand", shadow="5,25,50", usd_per_hour=3.0)
    with pytest.raises(ConfigError, match="nothing to cut over"):  # same location, same model
        start("chat", opts, record=False)
    with pytest.raises(ConfigError, match=f"already serves checkpoint {OLD}"):
        start("chat", dataclasses.replace(opts, model=f"{ckpts}/{OLD}"), record=False)

    st = start("chat", dataclasses.replace(opts, model=f"{ckpts}/{NEW}"), record=False)
    assert st.source_checkpoints == [OLD] and st.steady_replicas == 4 and st.source_locations == [SOURCE]
    t0 = parse_utc(st.started_at)
    launcher = CheckpointLauncher("chat")
    router = Router(RouterConfig("chat", slo_ms=5000))
    day = 0
    while True:
        _follow(st, launcher)
        assert _by_checkpoint() == co.replica_plan(st), st.current
        # the router's split: same location, the new checkpoint's replicas are the target
        co.save_state(st)
        router.refresh()
        router.cutover.reload()
        sides = {r.replica_id: router.cutover.side_of(r) for r in router.replicas}
        assert sides == {
            r.replica_id: ("target" if r.checkpoint == NEW else "source") for r in api.live_replicas("chat")
        }
        if st.phase == "promoted":
            break
        day += 1
        st = co.enter_stage(co.require_state("chat"), st.stage + 1, t0 + timedelta(days=day))
    assert _by_checkpoint() == {"source": 1, "target": 4}
    assert launcher.peak <= 5, launcher.peak
    # failback: the old checkpoint back to the steady state, the new one drained
    back = co.save_state(co.failback(co.require_state("chat"), t0 + timedelta(days=day + 1)))
    _follow(back, launcher)
    assert _by_checkpoint() == {"source": 4, "target": 0}
    assert launcher.peak <= 5, launcher.peak


# -- through the real router over HTTP, under load (peers of tests/unit/serving/test_cutover_router.py) --


def _peer_fleet(perturb: float = 0.0) -> Fleet:
    fleet = Fleet(service_ms=40.0)
    if perturb:  # the new checkpoint's answers differ (a wrong checkpoint: no crash, other tokens)
        fleet.knobs[f"checkpoint:{NEW}"] = {"perturb": perturb}
        fleet._write_knobs()
    fleet.add("source", 4)
    return fleet


def _run(fleet: Fleet, spotshift_home: Path) -> tuple[co.CutoverState, Load, Router]:
    model = f"{spotshift_home}/stores/x/checkpoints/tiny/{NEW}"
    opts = StartOptions(
        to_location=SOURCE, model=model, shadow="50:1h", stages="25:1h,50:1h,100:0", interval_s=1.0,
        thresholds=co.Thresholds(min_samples=3, p99_slack_ms=400.0), usd_per_hour=fleet.source_usd,
    )  # fmt: skip
    start("chat", opts, record=False)
    router = Router(RouterConfig("chat", slo_ms=5000))
    with ServerThread(build_app(router, tick_s=0.1)) as r:
        load = Load(r.url, rps=30.0).start()
        st = drive(fleet, timeout_s=300)
        load.stop()
    return st, load, router


@pytest.mark.slow
def test_a_new_checkpoint_in_place_promotes_under_load_with_no_failed_request(spotshift_home: Path) -> None:
    freeze_clock()
    fleet = _peer_fleet()
    try:
        st, load, router = _run(fleet, spotshift_home)
        assert st.phase == "promoted", st.reason
        assert load.failed == 0, load.statuses
        assert router.cutover.counts["to_target"] > 0
        assert fleet.peak <= 5, fleet.peak
        deadline = time.monotonic() + 120
        while Counter(r.checkpoint for r in api.live_replicas("chat")) != {NEW: 4, "peer": 1}:
            assert time.monotonic() < deadline, api.live_replicas("chat")
            fleet.follow(st)
            time.sleep(0.2)
    finally:
        fleet.close()


@pytest.mark.slow
def test_a_wrong_new_checkpoint_in_place_is_caught_in_the_shadow_phase(spotshift_home: Path) -> None:
    freeze_clock()
    fleet = _peer_fleet(perturb=0.3)
    try:
        st, load, router = _run(fleet, spotshift_home)
        assert st.phase == "rolled_back" and st.rolled_back_at_stage == "shadow-50"
        assert st.failed_criterion == "output_agreement", st.reason
        assert router.cutover.counts["to_target"] == 0
        assert load.failed == 0, load.statuses
    finally:
        fleet.close()
