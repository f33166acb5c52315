"""Replicas following a cutover's plan (:func:`spotshift.serving.cutover_replicas.follow`), stage by stage.

The launcher here records what it is asked and keeps the registry as a real one would: a start is
provisioning until :meth:`Launcher.settle` registers it, a stop deregisters. Every replica counted at
any moment (ready, draining, provisioning) is sampled on every launcher call: never more than
1.25x the steady state. The real launcher and real processes: tests/unit/serving/test_cutover_router.py.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spotshift.serving import cutover as co
from spotshift.serving import cutover_replicas as cr
from spotshift.serving import replica_api as api
from spotshift.serving.launcher import LaunchInfo, ReplicaLauncher, StopReport

T0 = datetime(2026, 1, 5, tzinfo=UTC)
SOURCE, TARGET = "gcp/us-central1", "aws/us-east-1"


class Launcher(ReplicaLauncher):
    """Registers what it starts (at :meth:`settle`), deregisters what it stops; samples the count."""

    kind = "recording"

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.pending: list[LaunchInfo] = []
        self.started: list[str] = []
        self.stopped: list[str] = []
        self.peak = 0
        self.seq = 0

    def _sample(self) -> None:
        n = len(api.live_replicas(self.endpoint, include_draining=True)) + len(self.pending)
        self.peak = max(self.peak, n)

    def start(
        self, endpoint: str, location: str, market: str, *, usd_per_hour: float, model: str = ""
    ) -> LaunchInfo:
        self.seq += 1
        info = LaunchInfo(
            f"l{self.seq}", endpoint, location, market, usd_per_hour, os.getpid(), 0.0, "", time.time()
        )
        self.pending.append(info)
        self.started.append(location)
        self._sample()
        return info

    def stop(self, endpoint: str, replica_id: str, *, timeout_s: float = 60.0) -> StopReport:
        self._sample()
        self.pending = [i for i in self.pending if i.launch_id != replica_id]
        api.deregister(endpoint, replica_id)
        self.stopped.append(replica_id)
        return StopReport(replica_id, os.getpid(), True, 0.0)

    def provisioning(self, endpoint: str) -> list[LaunchInfo]:
        self._sample()
        return list(self.pending)

    def failed(self, endpoint: str) -> list[tuple[LaunchInfo, str]]:
        return []

    def settle(self) -> None:
        """The launches listen now: registered under their launch id."""
        for i in self.pending:
            api.register(
                api.ReplicaRecord(
                    i.launch_id, i.endpoint, "http://127.0.0.1:1", i.location, i.market, i.usd_per_hour,
                    os.getpid(), time.time(), "ck",
                )
            )  # fmt: skip
        self.pending = []
        self._sample()


def register_sources(n: int, *, checkpoint: str = "ck") -> None:
    """Register ``n`` on-demand source replicas ``src-<k>`` of endpoint ``chat`` serving ``checkpoint``."""
    for k in range(n):
        api.register(
            api.ReplicaRecord(
                f"src-{k}",
                "chat",
                "http://127.0.0.1:1",
                SOURCE,
                "on_demand",
                3.0,
                os.getpid(),
                time.time(),
                checkpoint,
            )
        )


def _state(steady: int) -> co.CutoverState:
    st = co.start_state(
        "chat",
        to_location=TARGET,
        market="spot",
        model="",
        source_locations=[SOURCE],
        shadow=co.parse_stages("5,25,50", "shadow", "--shadow"),
        live=co.parse_stages(co.DEFAULT_STAGES, "live", "--stages"),
        thresholds=co.Thresholds(),
        interval_s=60.0,
        plan_usd_per_mtok=1.0,
        source_usd_per_mtok=2.0,
        steady_replicas=steady,
        source_floor=1,
        failback_s=7 * 86400.0,
        now=T0,
        source_mix=[{"location": SOURCE, "market": "on_demand", "usd_per_hour": 3.0, "count": steady}],
        target_usd_per_hour=1.8,
    )
    return co.save_state(st)


def _sides() -> dict[str, int]:
    live = api.live_replicas("chat")
    return {
        "source": sum(r.location == SOURCE for r in live),
        "target": sum(r.location == TARGET for r in live),
    }


def _follow(st: co.CutoverState, launcher: Launcher) -> cr.FollowStep:
    step = cr.follow(st, launcher)
    launcher.settle()
    assert cr.follow(st, launcher).changed is False  # idempotent: a fleet on its plan is left alone
    return step


@pytest.mark.parametrize("steady", [4, 8])
def test_replicas_follow_every_stage_within_the_cap_and_come_back_on_failback(
    spotshift_home: Path, steady: int
) -> None:
    register_sources(steady)
    launcher = Launcher("chat")
    st = _state(steady)
    seen = []
    while True:
        step = _follow(st, launcher)
        assert _sides() == co.replica_plan(st), (st.current, step)
        seen.append((st.phase, _sides()))
        if st.phase == "promoted":
            break
        st = co.enter_stage(st, st.stage + 1, T0 + timedelta(days=st.stage + 1))
    # the source drained as the target took weight, down to its floor; the target carries the steady state
    sources = [s["source"] for phase, s in seen if phase == "live"]
    assert sources == sorted(sources, reverse=True) and seen[-1][1] == {"source": 1, "target": steady}
    assert launcher.peak <= 1.25 * steady, launcher.peak
    # failback within the window: the source back to the steady state where it ran, the target drained
    back = co.failback(st, T0 + timedelta(days=st.stage + 1))
    _follow(back, launcher)
    assert _sides() == {"source": steady, "target": 0}
    assert launcher.peak <= 1.25 * steady, launcher.peak
    relaunched = [loc for loc in launcher.started if loc == SOURCE]
    assert len(relaunched) == steady - 1  # the floor stayed warm: only the rest came back


def test_a_rollback_drains_the_target_and_restores_the_source(spotshift_home: Path) -> None:
    register_sources(4)
    launcher = Launcher("chat")
    st = _state(4)
    for _ in range(len(st.shadow) + 1):  # into live-25: the source already smaller
        st = co.enter_stage(st, st.stage + 1, T0)
    _follow(st, launcher)
    assert _sides() == {"source": 3, "target": 2} == co.replica_plan(st)
    rolled = co.roll_back(st, T0, "p99_latency: slow")
    _follow(rolled, launcher)
    assert _sides() == {"source": 4, "target": 0}
    assert launcher.peak <= 5


def test_without_a_launch_spec_the_step_says_so(spotshift_home: Path) -> None:
    register_sources(4)
    launcher = Launcher("chat")
    st = _state(4)
    st.target_usd_per_hour = None
    step = cr.follow(st, launcher)
    assert not step.launched and "no target launch spec" in step.notes[0]
