"""Control-plane failover (issue 17 item 6): kill ``dagster-daemon`` in the middle of a sensor tick.

A real daemon (subprocess) on a PostgreSQL instance, its workspace a gRPC code server of
``definitions.py`` (the production shape: the Helm chart's user code deployment), runs
``preemption_sensor`` over N notices recorded in PostgreSQL. The run queue is paused
(``max_concurrent_runs: 0``) so the test counts requests, not recoveries. While the tick is
submitting its N runs (some created, not all) the daemon's process group is killed with -9; a
notice arrives while it is down; a new daemon is started. Afterwards:

* every notice has exactly one run (run key ``<job>:<notice id>``): none twice, none lost — the
  interrupted tick is resumed from the run ids and cursor Dagster reserved in PostgreSQL before
  submitting, and the notice that arrived during the outage is requested by the next tick;
* the seconds from the kill to the first new run are printed (the resume time; the sensor's 30 s
  minimum interval counts from the interrupted tick's start).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spotshift.home import init_home
from spotshift.training.notice_events import record_notice
from tests.conftest import open_instance

REPO = Path(__file__).resolve().parents[2]
GCP = "gcp/us-central1"
N = 30
SENSOR = "preemption_sensor"


def _notice(i: int | str) -> dict[str, str]:
    return {
        "notice_id": f"gcp-{i}",
        "job": f"job-{i}",
        "location": GCP,
        "noticed_at": f"2025-03-01T00:00:{i}",
    }


def _code_server(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """``definitions.py`` served over gRPC on its own, as the Helm chart's user code deployment: a
    daemon that restarts does not load the code location again."""
    exe = Path(sys.executable).with_name("dagster")
    argv = ["api", "grpc", "-h", "127.0.0.1", "-p", str(port), "-f", "definitions.py", "-d", str(REPO)]
    with open(log, "ab") as out:
        return subprocess.Popen(
            [str(exe), *argv, "--location-name", "spotshift"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _daemon(env: dict[str, str], workspace: Path, log: Path) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("dagster-daemon")
    with open(log, "ab") as out:
        return subprocess.Popen(
            [str(exe), "run", "-w", str(workspace)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # killpg takes it and whatever it started
        )


def _serving(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait(what: str, check: Callable[[], bool], timeout_s: float, log: Path) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"{what} not within {timeout_s} s; daemon log:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    return time.monotonic()


def _start_sensor(instance: Any) -> None:
    """What ``dagster sensor start`` writes, without loading the code location in one more process
    (minutes on a loaded 2-core box): the sensor's running state, which the daemon finds by its
    selector (location, repository, name). Dagster internals: there is no public call for it."""
    from dagster._core.definitions.sensor_definition import SensorType
    from dagster._core.remote_origin import (
        ManagedGrpcPythonEnvCodeLocationOrigin,
        RemoteInstigatorOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.scheduler.instigation import (
        InstigatorState,
        InstigatorStatus,
        InstigatorType,
        SensorInstigatorData,
    )
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    target = LoadableTargetOrigin(
        executable_path=sys.executable, python_file=str(REPO / "definitions.py"), working_directory=str(REPO)
    )
    repository = RemoteRepositoryOrigin(
        ManagedGrpcPythonEnvCodeLocationOrigin(target, "spotshift"), "__repository__"
    )
    data = SensorInstigatorData(
        min_interval=30, last_sensor_start_timestamp=time.time(), sensor_type=SensorType.STANDARD
    )
    instance.add_instigator_state(
        InstigatorState(
            RemoteInstigatorOrigin(repository, SENSOR), InstigatorType.SENSOR, InstigatorStatus.RUNNING, data
        )
    )


@pytest.mark.services
@pytest.mark.slow
def test_daemon_killed_mid_tick_resumes_without_duplicate_or_lost_run(
    spotshift_home: Path,
    scratch_database: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    import dagster as dg

    init_home(postgres_url=scratch_database, max_concurrent_runs=0)
    dhome = spotshift_home / "dagster"
    env = {**os.environ, "DAGSTER_HOME": str(dhome), "PYTHONPATH": str(REPO)}
    for i in range(N):
        assert record_notice(_notice(f"{i:03d}"))
    log = tmp_path / "daemon.log"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        f"load_from:\n  - grpc_server:\n      host: 127.0.0.1\n      port: {port}\n      location_name: spotshift\n"
    )
    server = _code_server(env, port, tmp_path / "code-server.log")
    daemon = None
    with open_instance(dhome) as instance:
        instance.add_dynamic_partitions("regions", [GCP])
        _start_sensor(instance)

        def runs() -> list[dg.DagsterRun]:
            return list(instance.get_runs(dg.RunsFilter(tags={"dagster/sensor_name": SENSOR})))

        try:
            _wait("the code server", lambda: _serving(port), 600, tmp_path / "code-server.log")
            daemon = _daemon(env, workspace, log)
            _wait("the tick's first run", lambda: len(runs()) > 0, 300, log)
            os.killpg(daemon.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            daemon.wait(timeout=30)
            at_kill = len(runs())
            assert 0 < at_kill < N, f"not killed mid-tick: {at_kill} of {N} runs"
            assert record_notice(_notice("late"))  # arrives while no daemon runs
            daemon = _daemon(env, workspace, log)
            resumed_at = _wait("the resumed tick's next run", lambda: len(runs()) > at_kill, 300, log)
            _wait("all runs", lambda: len(runs()) >= N + 1, 300, log)
            time.sleep(1)  # nothing more may come
            keys = [r.tags.get("dagster/run_key") for r in runs()]
        finally:
            if daemon is not None and daemon.poll() is None:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait(timeout=30)
            server.kill()
            server.wait(timeout=30)
    expected = {f"job-{i:03d}:gcp-{i:03d}" for i in range(N)} | {"job-late:gcp-late"}
    assert len(keys) == len(set(keys)) == N + 1  # no notice requested twice
    assert set(keys) == expected  # none lost, the late one included
    print(
        f"\nkilled with {at_kill}/{N} runs submitted; first new run {resumed_at - killed_at:.1f} s after the kill"
    )
