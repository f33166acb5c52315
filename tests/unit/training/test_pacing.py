"""A live trainer on a stepped clock takes one step per advance, whatever the machine's speed."""

from __future__ import annotations

from pathlib import Path

import pytest

from spotshift.clock import VirtualClock, load_clock, parse_utc
from spotshift.training.backend import LocalProcessBackend
from spotshift.training.pacing import wait_for_trainers
from spotshift.training.runs import build_request, collect
from tests.training_support import declare_tiny_job

pytestmark = pytest.mark.slow
GCP = "gcp/us-central1"


def test_trainer_steps_with_the_stepped_clock(spotshift_home: Path) -> None:
    job = declare_tiny_job(spotshift_home, total_steps=40, every=3)
    VirtualClock.stepped_at(parse_utc("2024-05-12T01:00:00Z"), pace_trainers=True).save()
    req = build_request(job.name, GCP, usage={"price_usd_hour": 8.0, "market": "spot"})
    assert req.pace_on_clock and req.min_step_seconds == 0.0
    bounded = build_request(job.name, GCP, until_step=5)
    assert not bounded.pace_on_clock  # a bounded run inside a Dagster run never waits on the clock
    backend = LocalProcessBackend()
    backend.start(req)
    step = job.work_hours / job.total_steps * 3600.0

    def advance_and_settle(seconds: float) -> int:
        load_clock().advance(seconds).save()
        wait_for_trainers(backend, timeout_s=120)
        return backend.progress(job.name) or 0

    try:
        assert advance_and_settle(0) == 1  # the first step is taken at once (a move waits for it)
        assert [advance_and_settle(step) for _ in range(4)] == [2, 3, 4, 5]
        assert advance_and_settle(step / 2) == 5  # half a step of virtual time: no step
        assert advance_and_settle(step / 2) == 6
        assert advance_and_settle(10 * step) == 7  # a jump (a changeover) buys one step, never a burst
    finally:
        backend.stop(job.name, reason="test over", timeout_s=60)
    result = collect(backend, job.name, timeout_s=60)
    assert result["status"] == "stopped" and result["step"] == 7
