"""Workers per region (issue 17): the steps of a move as dagster-celery tasks on RabbitMQ, one queue
per region, the runs kept in a PostgreSQL Dagster instance.

Real worker processes (``spotshift workers start``) on a scratch queue prefix, real trainers, the
world of tests/migration_support.py. One test follows a placement and a price move step by step to
the region each step touches, then kills a target worker (``kill -9`` of its process group) in the
middle of the move back's ``cut_over``, after it started the live trainer: the step runs again on the
other worker of that region's queue and the chain completes, with one live trainer and one
``raw.migrations`` row. Both on one set of workers, started once (their start-up is most of the cost).
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spotshift import warehouse
from spotshift.migration import contract
from spotshift.migration.plan import MovePlan
from spotshift.migration.state import load as load_move
from spotshift.placement.state import load_state
from spotshift.training.backend import open_backend
from spotshift.workers import processes
from tests.conftest import REPO, open_instance, require_service
from tests.migration_support import AWS, AZURE, JOB, declare_world, live_trainers, stop_all

pytestmark = [pytest.mark.slow, pytest.mark.services]

PLACE = MovePlan(
    job=JOB, trigger="place", to_location=AWS, market="spot", instance_type="p4d.24xlarge",
    price_usd_hour=10.0, gpu_model="A100-40GB", gpu_count=8, snapshot_id="snap-1",
    run_key=f"{JOB}:-->{AWS}:snap-1",
)  # fmt: skip
MOVE = MovePlan(
    job=JOB, trigger="price", from_location=AWS, to_location=AZURE, market="spot",
    instance_type="p4d.24xlarge", price_usd_hour=4.0, gpu_model="A100-40GB", gpu_count=8,
    snapshot_id="snap-2", run_key=f"{JOB}:{AWS}->{AZURE}:snap-2",
)  # fmt: skip
#: the move back, whose cut_over worker is killed
MOVE_BACK = MovePlan(
    job=JOB, trigger="price", from_location=AZURE, to_location=AWS, market="spot",
    instance_type="p4d.24xlarge", price_usd_hour=3.0, gpu_model="A100-40GB", gpu_count=8,
    snapshot_id="snap-3", run_key=f"{JOB}:{AZURE}->{AWS}:snap-3",
)  # fmt: skip
#: where each step of the price move must run (plan_move touches no region: the control queue)
MOVE_SIDES = {
    "plan_move": "dagster",
    "fingerprint_dataset": AWS,
    "sync_dataset": AZURE,
    "drain_source": AWS,
    "sync_checkpoint": AZURE,
    "resume_in_target": AZURE,
    "validate_shadow": AZURE,
    "cut_over": AZURE,
}


@pytest.fixture
def celery_home(
    spotshift_home: Path, scratch_database: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """A home on PostgreSQL whose move jobs run on Celery, on queues no other test run shares."""
    from spotshift.home import dagster_home, init_home

    require_service("RabbitMQ", "127.0.0.1", 5672)
    monkeypatch.setenv("SPOTSHIFT_EXECUTOR", "celery")
    monkeypatch.setenv("SPOTSHIFT_CELERY_QUEUE_PREFIX", f"t{secrets.token_hex(4)}.")
    monkeypatch.setenv("SPOTSHIFT_DAGSTER_POSTGRES_URL", scratch_database)
    monkeypatch.setenv("SPOTSHIFT_WAREHOUSE", str(spotshift_home / "warehouse.duckdb"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    init_home()
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home()))
    declare_world(spotshift_home)
    backend = open_backend("local")
    try:
        with open_instance() as instance:
            yield instance
    finally:
        processes.stop_workers(timeout_s=5)
        stop_all(backend)
        _delete_queues([AWS, AZURE, "dagster"])


def _delete_queues(names: list[str]) -> None:
    """Remove this test's queues from the shared broker (Celery declares them durable)."""
    from kombu import Connection

    from spotshift.workers.settings import load_settings

    settings = load_settings()
    with Connection(settings.broker_url()) as conn:
        channel = conn.default_channel
        for name in names:
            channel.queue_delete(settings.queue_name(name))


def _execute(instance: Any, plan: MovePlan, **options: Any) -> Any:
    """Run ``migration_job`` of the code location for ``plan``: this process orchestrates, the
    workers run the steps."""
    import dagster as dg
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    repo = ReconstructableRepository.for_module("definitions", "defs", working_directory=str(REPO))
    return dg.execute_job(
        repo.get_reconstructable_job(contract.MIGRATION_JOB),
        instance=instance,
        run_config=contract.move_run_config(plan.to_dict(), **options),
        tags={**plan.tags(), "dagster/run_key": plan.run_key},
        raise_on_error=False,
    )


def _step_workers(instance: Any, run_id: str) -> list[tuple[str, str]]:
    """(step, worker hostname) for every time a worker took a step of the run, in order."""
    out = []
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is not None and event.event_type_value == "ENGINE_EVENT" and event.step_key:
            host = event.engine_event_data.metadata.get("Celery worker")
            if host is not None:
                out.append((event.step_key, host.value))
    return out


def _queue_of(host: str, workers: list[processes.WorkerInfo]) -> str:
    (queue,) = [w.queue for w in workers if host.startswith(f"{w.name}@")]
    return queue.split(".", 1)[1]  # without the test's prefix


def _migrations(run_key: str) -> list[tuple[str, str]]:
    with warehouse.connect() as con:
        return con.execute(
            "SELECT status, run_id FROM raw.migrations WHERE migration_id = ?", [run_key]
        ).fetchall()


def _kill_the_cut_over_worker(
    instance: Any, workers: list[processes.WorkerInfo], plan: MovePlan, done: threading.Event
) -> dict[str, Any]:
    """Watch ``plan``'s run from a thread: once a worker runs cut_over and the target's live trainer
    exists (the step waits for its first step), kill that worker's whole process group. Returns what
    it saw, filled in while it runs: the most live trainers at once and the killed worker."""
    import dagster as dg

    backend = open_backend("local")
    seen: dict[str, Any] = {"most_live": 0, "killed": None}

    def watch() -> None:
        while not done.is_set():
            live = live_trainers(backend)
            seen["most_live"] = max(seen["most_live"], len(live))
            runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/run_key": plan.run_key}))
            if not runs:  # the move's run is not created yet
                time.sleep(0.05)
                continue
            run = runs[0]
            hosts = [h for step, h in _step_workers(instance, run.run_id) if step == "cut_over"]
            finished = instance.get_run_step_stats(run.run_id, step_keys=["cut_over"])
            if finished and finished[0].end_time is not None:
                break  # too late: the caller's assertion says so
            if seen["killed"] is None and hosts and any(t.location == plan.to_location for t in live):
                (victim,) = [w for w in workers if hosts[0].startswith(f"{w.name}@")]
                os.killpg(victim.pid, signal.SIGKILL)
                seen["killed"] = victim.name
            time.sleep(0.05)

    seen["thread"] = threading.Thread(target=watch, daemon=True)
    seen["thread"].start()
    return seen


def test_each_step_runs_on_its_regions_workers_and_a_killed_worker_hands_its_step_on(
    celery_home: Any,
) -> None:
    """One set of workers (two per region) for both stories, started once (worker start-up is most of
    the cost): a placement and a price move step by step on the queue of the region each step
    touches; then the move back, its cut_over worker killed after it started the live trainer."""
    workers = processes.start_workers([AWS, AZURE], per_region=2, code_dir=REPO)
    placed = _execute(celery_home, PLACE)
    assert placed.success
    assert {_queue_of(h, workers) for _, h in _step_workers(celery_home, placed.run_id)} <= {AWS, "dagster"}

    moved = _execute(celery_home, MOVE, shadow_steps=4)
    assert moved.success
    taken = _step_workers(celery_home, moved.run_id)
    assert {step: _queue_of(h, workers) for step, h in taken} == MOVE_SIDES
    assert len(taken) == len(MOVE_SIDES)  # each step once
    backend = open_backend("local")
    (live,) = live_trainers(backend)
    assert live.location == AZURE and load_state(JOB).location == AZURE
    assert _migrations(MOVE.run_key) == [("cut_over", moved.run_id)]

    done = threading.Event()
    seen = _kill_the_cut_over_worker(celery_home, workers, MOVE_BACK, done)
    try:
        back = _execute(celery_home, MOVE_BACK, shadow_steps=4)
    finally:
        done.set()
        seen["thread"].join(timeout=10)
    assert seen["killed"] is not None, "cut_over finished before its worker could be killed"
    assert back.success
    ran = [h for step, h in _step_workers(celery_home, back.run_id) if step == "cut_over"]
    assert len(ran) == 2 and ran[0] != ran[1], ran  # retried on the other worker of the queue
    assert {_queue_of(h, workers) for h in ran} == {AWS}
    assert seen["most_live"] == 1  # never two live trainers
    (live,) = live_trainers(backend)
    assert live.location == AWS and load_state(JOB).location == AWS
    assert _migrations(MOVE_BACK.run_key) == [("cut_over", back.run_id)]  # committed once
    assert load_move(JOB).status == "cut_over"


def test_a_move_to_a_region_without_workers_fails_in_one_line_before_any_step(
    celery_home: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPOTSHIFT_WORKER_WAIT_SECONDS", "1")  # no worker started at all
    result = _execute(celery_home, PLACE)
    assert not result.success
    said = " ".join(
        f"{e.message} {getattr(e.dagster_event, 'event_specific_data', '')}"
        for e in celery_home.all_logs(result.run_id)
    )
    prefix = os.environ["SPOTSHIFT_CELERY_QUEUE_PREFIX"]
    assert f'no worker serves the Celery queues "{prefix}dagster", "{prefix}{AWS}"' in said, said[-2000:]
    assert f"spotshift workers start --region {AWS}" in said
    assert _step_workers(celery_home, result.run_id) == []  # not even the planning step was sent
    assert load_move(JOB) is None and live_trainers(open_backend("local")) == []
