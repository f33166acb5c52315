"""Run-level locks and preemption events in PostgreSQL (issue 17 item 4).

When the Dagster instance is on PostgreSQL, a trainer's run-level lock is a session advisory lock
(:mod:`spotshift.runlocks`) and a preemption notice is a write-once row
(:mod:`spotshift.training.notice_events`), for every process and host sharing the database:

* two processes contend for one job's lock: one holds it, the other is refused (the worker's exit
  3), the test process sees it held; the holder killed with -9 releases it, the other then takes it;
* 8 processes record one notice id at once: exactly one write wins, one event is read back (the
  winner's), nothing lands in the region store, and the preemption sensor requests one recovery
  and none on its next tick.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from sensors.preemption import preemption_sensor
from spotshift import runlocks
from spotshift.cli import main
from spotshift.home import region_store_url
from spotshift.placement import state
from spotshift.sync.store_url import open_store
from spotshift.training.notice_events import read_notices
from tests.conftest import open_instance

REPO = Path(__file__).resolve().parents[2]
GCP = "gcp/us-central1"

_HOLDER = """
import sys, time
from spotshift.training.backend import acquire_trainer_lock
lock = acquire_trainer_lock(sys.argv[1], wait_s=float(sys.argv[2]))
if lock is None:
    print("refused", flush=True)
    sys.exit(3)
print("held", flush=True)
time.sleep(float(sys.argv[3]))
lock.release()
"""

_RECORDER = """
import sys
from spotshift.training.notice_events import record_notice
event = {"notice_id": "gcp-n1", "job": "llm-ft", "location": "gcp/us-central1", "step": int(sys.argv[1]),
         "noticed_at": "2025-03-01T00:00:00+00:00"}
print("wrote" if record_notice(event) else "exists", flush=True)
"""


def _spawn(code: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE, text=True)


@pytest.mark.services
def test_run_lock_in_postgres_one_holder_and_released_when_killed(
    spotshift_home: Path,
    scratch_database: str,  # noqa: F811
) -> None:
    assert main(["home", "init", "--postgres", scratch_database]) == 0
    holder = _spawn(_HOLDER, "llm-ft", "0", "600")
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert runlocks.held("llm-ft") and not runlocks.held("other-job")
        rival = _spawn(_HOLDER, "llm-ft", "1", "0")
        assert rival.communicate(timeout=120)[0].strip() == "refused" and rival.returncode == 3
        assert not runlocks.lock_path("llm-ft").exists()  # the lock is not a file on this home
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        deadline = time.monotonic() + 20
        while runlocks.held("llm-ft") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not runlocks.held("llm-ft")  # the server ended the dead holder's session
        rival = _spawn(_HOLDER, "llm-ft", "5", "0")
        assert rival.communicate(timeout=120)[0].strip() == "held" and rival.returncode == 0
    finally:
        holder.kill()
    # a holder whose session the server ends (restart, network cut) can tell it lost the lock
    mine = runlocks.acquire("solo")
    assert mine is not None and mine.alive() and runlocks.acquire("solo", wait_s=0) is None
    store = state.shared_store()
    assert store is not None
    store.query_one("SELECT pg_terminate_backend(%s)", (mine._session.get_backend_pid(),))
    assert not mine.alive() and not runlocks.held("solo")
    mine.release()


@pytest.mark.services
def test_preemption_event_in_postgres_recorded_once(
    spotshift_home: Path,
    scratch_database: str,  # noqa: F811
) -> None:
    assert main(["home", "init", "--postgres", scratch_database]) == 0
    procs = [_spawn(_RECORDER, str(i)) for i in range(8)]
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert sorted(outs) == ["exists"] * 7 + ["wrote"], outs
    (event,) = read_notices(GCP)
    assert event["step"] == outs.index("wrote")  # the first writer's content, never overwritten
    assert read_notices(GCP, skip={"gcp-n1"}) == [] and read_notices("aws/us-east-1") == []
    assert list(open_store(region_store_url(GCP)).list_keys("events/preemption/")) == []
    # the sensor requests one recovery for it, and none on the next tick (cursor + run key)
    state.record_placement("llm-ft", location=GCP, market="spot", instance_type="a2", now=datetime.now(UTC))
    with open_instance(spotshift_home / "dagster") as instance:
        first = preemption_sensor(dg.build_sensor_context(instance=instance))
        assert isinstance(first, dg.SensorResult)
        assert [r.run_key for r in first.run_requests or []] == ["llm-ft:gcp-n1"]
        again = preemption_sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor))
        assert isinstance(again, dg.SkipReason)
