"""One clock: a stepped clock moves only when advanced, its owner leaves it stopped, facts use it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spotshift.clock import ClockOwner, VirtualClock, load_clock, parse_utc, virtual_now
from spotshift.sync.transfer import TransferStats

REPO = Path(__file__).resolve().parents[2]
START = parse_utc("2024-05-12T01:00:00Z")

# an owner of a clock running at the old demo's x3456 that exits normally, raises, or gets SIGTERM
OWNER = """
import signal, sys, time
from spotshift.clock import ClockOwner, VirtualClock, parse_utc
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
with ClockOwner(VirtualClock.starting(parse_utc("2024-05-12T01:00:00Z"), 3456.0, pace_trainers=True)):
    print("owning", flush=True)
    if sys.argv[1] == "raise":
        time.sleep(0.2)
        raise RuntimeError("owner failed")
    time.sleep(0.2 if sys.argv[1] == "exit" else 60)
"""


def test_stepped_clock_moves_only_when_advanced(spotshift_home: Path) -> None:
    clock = VirtualClock.stepped_at(START, pace_trainers=True)
    clock.save()
    time.sleep(0.05)
    assert load_clock().now() == START and load_clock().paces_on_clock
    assert load_clock().step_pace_seconds(0.5) == 0.0  # trainers wait on the clock, not on wall seconds
    load_clock().advance(1800).save()
    assert virtual_now() == parse_utc("2024-05-12T01:30:00Z")
    # a "resume" after a run is only the changeover on a stepped clock
    assert load_clock().paused().resumed(skip_seconds=900).now() == parse_utc("2024-05-12T01:45:00Z")


@pytest.mark.parametrize("how", ["exit", "raise", "sigterm"])
def test_the_clock_stops_when_its_owner_stops(spotshift_home: Path, how: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER, how], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "owning"
    running = load_clock()
    assert running.speed == 3456.0  # the owner's clock runs while the owner does
    if how == "sigterm":
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    first = load_clock()
    time.sleep(0.3)
    assert first.speed == 0.0 and not first.pace_trainers and not first.stepped
    assert load_clock().now() == first.now() > START  # stopped where it was, not rewound


def test_owner_in_process_leaves_a_stepped_clock_frozen_without_pacing(spotshift_home: Path) -> None:
    with ClockOwner(VirtualClock.stepped_at(START, pace_trainers=True)):
        load_clock().advance(3600).save()
    after = load_clock()
    assert after.now() == parse_utc("2024-05-12T02:00:00Z") and not after.paces_on_clock


def test_transfers_are_stamped_on_the_virtual_clock(spotshift_home: Path) -> None:
    VirtualClock.stepped_at(START).save()
    stats = TransferStats(dataset="corpus")
    assert stats.started_at == START
    assert stats.to_row()["started_at"] == START
