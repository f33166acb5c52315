"""``spotshift move``: the whole lifecycle without Dagster, with real trainers.

Same world as the Dagster migration tests (tests/dagster/test_migration.py): a tiny market, a tiny
dataset and a paced tiny trainer in a temp SPOTSHIFT_HOME; no Dagster instance anywhere.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from spotshift import warehouse
from spotshift.cli import main
from spotshift.clock import VirtualClock, load_clock
from spotshift.jobs import TrainingJob, add_job
from spotshift.migration.state import load as load_move
from spotshift.placement.state import load_state
from spotshift.sync.datasets import Dataset, add_dataset
from spotshift.training.backend import open_backend
from spotshift.training.runs import latest_ref
from tests.unit.placement.builders import make_quote

JOB = "tiny"
START = datetime(2025, 3, 3, 1, tzinfo=UTC)
AWS, AZURE, AWS2 = "aws/us-east-1", "azure/eastus", "aws/us-west-2"


def _quotes(snapshot: str, polled_at: datetime, prices: dict[str, float]) -> None:
    rows = []
    for location, spot in prices.items():
        for market, price in (("spot", spot), ("on_demand", spot * 3)):
            q = make_quote(location, price, market=market, instance_type="p4d.24xlarge")
            rows.append(
                {**q.to_dict(), "observed_at": polled_at, "snapshot_id": snapshot, "polled_at": polled_at}
            )
    with warehouse.connect() as con:
        warehouse.append_rows(con, "main.gpu_quotes", rows)


@pytest.fixture
def world(spotshift_home: Path) -> Iterator[Any]:
    data = spotshift_home / "data"
    data.mkdir()
    for i in range(3):
        (data / f"part-{i}.txt").write_text(("spot market checkpoint shard " * 400 + str(i)) * 10)
    add_dataset(
        Dataset(
            name="corpus", source=str(data), location=AWS, min_chunk=4096, avg_chunk=16384, max_chunk=65536
        )
    )
    VirtualClock(START.isoformat(), time.time(), 0.0, True, 3600.0 / 0.05).save()
    add_job(
        TrainingJob(
            name=JOB,
            dataset="corpus",
            total_steps=2000,
            work_hours=2000.0,
            checkpoint_every_steps=10,
            gpu_model="A100",
            gpu_count=8,
            min_topology_score=7.0,
            allowed_locations=["aws/*", "azure/*"],
            submitted_at=START.isoformat(),
            deadline_hours=4000.0,
        )
    )
    _quotes("snap-1", START, {AWS: 10.0, AWS2: 12.0, AZURE: 11.0})
    backend = open_backend("local")
    try:
        yield backend
    finally:
        for t in backend.list():
            if t.alive:
                backend.stop(t.name, reason="test over", timeout_s=60)


def _move(*argv: str) -> tuple[int, dict[str, Any], str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["move", JOB, *argv, "--json"])
    return code, (json.loads(out.getvalue()) if out.getvalue().strip() else {}), err.getvalue()


def _live(backend: Any) -> list[Any]:
    return [t for t in backend.list() if t.alive and t.role == "train"]


def _wait_for_checkpoint(step: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = load_state(JOB)
        ref = latest_ref(JOB, state.location) if state.location else None
        if ref is not None and ref["step"] >= step:
            return
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint at step {step} within {timeout_s}s")


def _migrations() -> dict[str, tuple[str, int | None]]:
    with warehouse.connect() as con:
        rows = con.execute("SELECT migration_id, status, bytes_moved FROM raw.migrations").fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


@pytest.mark.slow
def test_move_places_moves_and_rolls_back_without_dagster(world: Any) -> None:
    # a job that is not running is placed: no drain, no shadow
    code, placed, _ = _move("--to", AWS)
    assert code == 0, placed
    assert placed["status"] == "cut_over" and placed["trigger"] == "place"
    assert "validate_shadow" not in placed["steps"] and "drain_source" in placed["steps"]
    (live,) = _live(world)
    assert live.location == AWS and load_state(JOB).location == AWS
    _wait_for_checkpoint(20)

    # a price move: the same steps as migration_job, the same facts
    load_clock().advance(7 * 24 * 3600).save()
    _quotes("snap-2", START + timedelta(days=7), {AWS: 10.0, AWS2: 12.0, AZURE: 4.0})
    code, moved, _ = _move("--to", AZURE, "--shadow-steps", "6")
    assert code == 0, moved
    assert moved["status"] == "cut_over" and moved["trigger"] == "price"
    assert moved["steps"] == [
        "fingerprint_dataset",
        "replicate_dataset",
        "drain_source",
        "carry_checkpoint",
        "resume_in_target",
        "validate_shadow",
        "go_live",
    ]
    assert all(v["passed"] for name, v in moved["shadow"].items() if name != "checkpoint_bytes")
    (live,) = _live(world)
    state = load_state(JOB)
    assert live.location == AZURE and (state.location, state.status, state.last_move["from"]) == (
        AZURE,
        "running",
        AWS,
    )
    assert state.cooldown_until is not None  # a cut-over price move starts the cooldown
    status, moved_bytes = _migrations()[moved["run_key"]]
    assert status == "cut_over" and moved_bytes and moved_bytes > 0
    recorded = load_move(JOB)
    assert recorded is not None and recorded.status == "cut_over" and recorded.bytes_moved == moved_bytes

    # a perturbed target fails the blocking shadow rules: rolled back, the source resumed, target unfit
    _wait_for_checkpoint(latest_ref(JOB, AZURE)["step"] + 10)  # type: ignore[index]
    code, failed, _ = _move("--to", AWS2, "--shadow-steps", "6", "--perturb-learning-rate", "0.05")
    assert code == 1, failed
    assert failed["status"] == "rolled_back" and failed["shadow"]["loss_divergence"]["passed"] is False
    assert "loss_divergence" in failed["error"] and failed["unfit_until"]
    (live,) = _live(world)
    state = load_state(JOB)
    assert live.location == AZURE and state.location == AZURE and AWS2 in state.unfit
    assert _migrations()[failed["run_key"]][0] == "rolled_back"
    assert load_move(JOB).status == "rolled_back"  # type: ignore[union-attr]


def test_move_refuses_a_target_without_an_offer(world: Any) -> None:
    code, _, err = _move("--to", "gcp/us-central1")
    assert code == 2 and "no quote for gcp/us-central1" in err and len(err.strip().splitlines()) == 1
    code, _, err = _move("--to", "nowhere")
    assert code == 2 and "provider/region" in err
    assert _live(world) == [] and load_move(JOB) is None
