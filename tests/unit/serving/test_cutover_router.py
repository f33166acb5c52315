"""A cutover through the real router over HTTP, under constant load (issue 15 "Done when").

Peers (``bench/_replica_peer.py``) are registered in the endpoint's registry and scaled to the
cutover's replica plan; the router reads the registry and the cutover state, mirrors, splits and
analyses; the frozen virtual clock jumps to the end of each stage's hold once the stage has a
passing window (:func:`bench._cutover_fleet.drive`). Every test counts the statuses of every
request the load sent: none may be other than 200.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench._cutover_fleet import TARGET, Fleet, Load, ServerThread, drive, freeze_clock
from spotshift.migration.endpoint_cutover import StartOptions, failback, start
from spotshift.serving import cutover as co
from spotshift.serving.router import Router, RouterConfig
from spotshift.serving.router_app import build_app

pytestmark = pytest.mark.slow

STEADY = 4
# a loaded 2-core box: latency noise of tens of ms is the machine's, not the target's
TH = co.Thresholds(min_samples=4, p99_slack_ms=60.0)


def _start(fleet: Fleet, **kw: object) -> co.CutoverState:
    opts = StartOptions(
        to_location=TARGET, interval_s=0.5, thresholds=TH, usd_per_hour=fleet.target_usd, **kw
    )
    return start(fleet.endpoint, opts, record=False)


def _router(endpoint: str = "chat") -> Router:
    return Router(RouterConfig(endpoint, slo_ms=5000))


@pytest.fixture
def fleet(spotshift_home: Path):
    freeze_clock()
    f = Fleet(service_ms=40.0)
    for _ in range(STEADY):
        f.add("source")
    yield f
    f.close()


def test_a_good_target_promotes_through_every_stage_with_no_failed_request(fleet: Fleet) -> None:
    _start(fleet)
    router = _router()
    seen: list[str] = []
    with ServerThread(build_app(router, tick_s=0.1)) as r:
        load = Load(r.url, rps=120).start()
        st = drive(
            fleet,
            on_state=lambda s: (
                seen.append(s.current.label)
                if s.current and (not seen or seen[-1] != s.current.label)
                else None
            ),
            timeout_s=240,
        )
        load.stop()
    assert st.phase == "promoted", st.reason
    assert seen == [s.label for s in st.stages], seen  # every stage, in order
    assert load.failed == 0, load.statuses
    assert [r["status"] for r in st.stage_rows] == ["passed"] * (len(st.stages) - 1) + ["promoted"]
    assert st.target_weight == 1.0 and router.cutover.split.target_weight == 1.0
    assert fleet.peak <= 1.25 * STEADY, fleet.peak
    shadow_rows = [r for r in st.stage_rows if r["phase"] == "shadow"]
    assert all(r["agreement"] == 1.0 for r in shadow_rows), shadow_rows
    # promoted: the source is kept warm at its floor, the target carries the steady state
    assert co.replica_plan(st) == {"source": 1, "target": STEADY}
    # failback after promotion: 100 % on the source in one step
    back = failback("chat", record=False)
    assert back.phase == "failed_back" and back.target_weight == 0.0
    assert co.replica_plan(back) == {"source": STEADY, "target": 0}


def test_a_slow_target_is_rolled_back_at_its_first_live_stage(fleet: Fleet) -> None:
    _start(fleet)
    router = _router()
    slowed: list[str] = []

    def slow_once_live(st: co.CutoverState) -> None:
        # it answers fast while only mirrored; under real traffic it is 5x slower
        if st.phase == "live" and not slowed:
            fleet.set_service_ms("target", 200.0)
            slowed.append(st.current.label)

    with ServerThread(build_app(router, tick_s=0.1)) as r:
        load = Load(r.url, rps=120).start()
        st = drive(fleet, on_state=slow_once_live, timeout_s=240)
        fleet.set_service_ms("target", 200.0)  # new target peers of the same kind
        load.stop()
    assert st.phase == "rolled_back", st.phase
    assert st.rolled_back_at_stage == "live-5" == slowed[0]
    assert st.failed_criterion == "p99_latency" and "p99_latency" in st.reason
    assert st.target_weight == 0.0 and router.cutover.split.target_weight == 0.0
    assert load.failed == 0, load.statuses
    assert co.replica_plan(st) == {"source": STEADY, "target": 0}


def test_perturbed_weights_are_caught_in_the_shadow_phase_before_any_live_traffic(
    spotshift_home: Path,
) -> None:
    freeze_clock()
    fleet = Fleet(service_ms=40.0, target_perturb=0.05)
    try:
        for _ in range(STEADY):
            fleet.add("source")
        _start(fleet)
        router = _router()
        with ServerThread(build_app(router, tick_s=0.1)) as r:
            load = Load(r.url, rps=120).start()
            st = drive(fleet, timeout_s=120)
            load.stop()
        assert st.phase == "rolled_back"
        assert st.rolled_back_at_stage == "shadow-5"
        assert st.failed_criterion == "output_agreement", st.reason
        assert "mismatch" in st.reason
        assert router.cutover.counts["to_target"] == 0  # no live request ever went to the target
        assert load.failed == 0, load.statuses
    finally:
        fleet.close()


def test_a_replica_killed_mid_stage_and_the_router_restarted_mid_cutover_fail_no_request(
    fleet: Fleet,
) -> None:
    _start(fleet)
    first = _router()
    with ServerThread(build_app(first, tick_s=0.1)) as r:
        load = Load(r.url, rps=120).start()
        st = drive(fleet, until=("live",), timeout_s=240)  # the first live stage
        victim = fleet.add("source", process=True)  # a source replica in its own process...
        import time

        time.sleep(1.0)
        fleet.kill(victim)  # ...killed with requests in flight
        time.sleep(1.0)
        load.stop()
    assert load.failed == 0, load.statuses
    persisted = co.require_state("chat")
    assert persisted.phase == "live"
    # a new router resumes at the persisted weights from its first request
    second = _router()
    assert second.cutover.split is not None
    assert second.cutover.split.target_weight == persisted.target_weight > 0
    assert second.cutover.split.version == persisted.version
    with ServerThread(build_app(second, tick_s=0.1)) as r:
        load2 = Load(r.url, rps=120).start()
        st = drive(fleet, timeout_s=240)
        load2.stop()
    assert st.phase == "promoted", st.reason
    assert load2.failed == 0, load2.statuses
    assert second.cutover.counts["to_target"] > 0
