"""The world the move tests share (Dagster ops and ``spotshift move`` alike): a tiny market (AWS and
Azure A100 nodes, written straight into ``main.gpu_quotes``), a tiny dataset and a paced tiny
trainer in the test's SPOTSHIFT_HOME, on a frozen virtual clock."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from spotshift import warehouse
from spotshift.clock import VirtualClock
from spotshift.jobs import TrainingJob, add_job
from spotshift.placement.state import load_state
from spotshift.pools.pool import PrivatePool, add_pool
from spotshift.sync.datasets import Dataset, add_dataset
from tests.unit.placement.builders import make_quote

JOB = "tiny"
START = datetime(2025, 3, 3, 1, tzinfo=UTC)
AWS, AZURE, AWS2 = "aws/us-east-1", "azure/eastus", "aws/us-west-2"


def write_quotes(snapshot: str, polled_at: datetime, prices: dict[str, float]) -> None:
    """One quote snapshot: spot at ``prices``, on-demand at three times that, per location."""
    rows = []
    for location, spot in prices.items():
        for market, price in (("spot", spot), ("on_demand", spot * 3)):
            q = make_quote(location, price, market=market, instance_type="p4d.24xlarge")
            rows.append(
                {**q.to_dict(), "observed_at": polled_at, "snapshot_id": snapshot, "polled_at": polled_at}
            )
    with warehouse.connect() as con:
        warehouse.append_rows(con, "main.gpu_quotes", rows)


def declare_world(home: Path) -> None:
    """Dataset ``corpus`` (home AWS), job ``tiny``, the first snapshot; 0.05 s per step, and virtual
    time only moves when the test advances it."""
    data = home / "data"
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
    write_quotes("snap-1", START, {AWS: 10.0, AWS2: 12.0, AZURE: 11.0})


def declare_pool_world(home: Path, *, dataset_location: str, t0: datetime) -> None:
    """A private pool ``dc1`` (8 A100s) with two 8-GPU jobs submitted at ``t0``: ``base`` (8 h) fits,
    ``urgent`` (20 h, deadline 24 h) must burst to the cloud (quotes: aws/us-east-1 at $20/h).
    The dataset ``genomes`` lives at ``dataset_location``."""
    add_pool(PrivatePool(name="dc1", gpu_model="A100", gpus=8))
    data = home / "data"
    data.mkdir()
    (data / "a.bin").write_bytes(b"x" * 1000)
    add_dataset(Dataset(name="genomes", source=str(data), location=dataset_location))
    common = dict(
        dataset="genomes",
        total_steps=10,
        gpu_model="A100",
        gpu_count=8,
        allowed_locations=["aws/*"],
        submitted_at=t0.isoformat(),
    )
    add_job(TrainingJob(name="base", work_hours=8.0, **common))  # type: ignore[arg-type]
    add_job(TrainingJob(name="urgent", work_hours=20.0, deadline_hours=24.0, **common))  # type: ignore[arg-type]
    write_quotes("snap-1", t0, {"aws/us-east-1": 20.0})


def live_trainers(backend: Any) -> list[Any]:
    """The live (training, not shadow) trainers."""
    return [t for t in backend.list() if t.alive and t.role == "train"]


def stop_all(backend: Any) -> None:
    """Stop every live trainer (the end of a test)."""
    for t in backend.list():
        if t.alive:
            backend.stop(t.name, reason="test over", timeout_s=60)


def wait_for_checkpoint(*, step: int, timeout_s: float = 60.0) -> None:
    """Wait until the job's current location holds a checkpoint at ``step`` or later."""
    from spotshift.training.runs import latest_ref

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = load_state(JOB)
        ref = latest_ref(JOB, state.location) if state.location else None
        if ref is not None and ref["step"] >= step:
            return
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint at step {step} within {timeout_s}s")


def write_checkpoint_in(location: str, *, versions: dict[str, str] | None = None, step: int = 10) -> Any:
    """A committed checkpoint of ``tiny`` in ``location``'s store, written by the runtime ``versions``
    (default: this process's), without a trainer; returns its ref."""
    import torch

    from spotshift.checkpoint.format import CheckpointPayload, write_checkpoint
    from spotshift.checkpoint.keys import open_key_provider
    from spotshift.sync.store_url import open_store
    from spotshift.training.runs import store_url_for

    payload = CheckpointPayload(
        job=JOB,
        step=step,
        tokens=step * 64,
        kind="periodic",
        location=location,
        state={"data_position": step},
        parts={"model": {"w": torch.arange(16, dtype=torch.float32)}},
        versions=dict(versions or {}),
    )
    return write_checkpoint(
        open_store(store_url_for(location)), payload, open_key_provider(None, create=True)
    )
