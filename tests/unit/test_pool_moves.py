"""Issue 19, hybrid bursting for real: the pool's decisions run the move lifecycle. A job bursts from
a full private pool to the cloud (its dataset delta-synced out of the site, its checkpoint encrypted
and carried, both in the cloud region store afterwards) and comes back when the pool frees (probation
+ shadow validation against the cloud trainer); both costs in the warehouse."""

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
from spotshift.errors import ConfigError
from spotshift.home import region_store_url
from spotshift.jobs import TrainingJob, add_job
from spotshift.placement.state import load_state
from spotshift.pools.pool import PrivatePool, add_pool
from spotshift.pools.site import DEFAULT_SITE_EGRESS_USD_PER_GB
from spotshift.pricing.egress import egress_usd_per_gb
from spotshift.pricing.regions import check_location
from spotshift.sync.datasets import Dataset, add_dataset
from spotshift.training import relocate, runs
from spotshift.training.backend import open_backend
from tests.migration_support import stop_all, write_quotes

T0 = datetime(2025, 3, 3, 0, tzinfo=UTC)
SITE, AWS = "onprem/dc1", "aws/us-east-1"


def _cli(*argv: str) -> tuple[int, dict[str, Any], str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, (json.loads(out.getvalue()) if out.getvalue().strip() else {}), err.getvalue()


def test_the_site_is_a_location(spotshift_home: Path) -> None:
    with pytest.raises(ConfigError, match="no private pool is declared there"):
        check_location(SITE)
    add_pool(PrivatePool(name="dc1", gpu_model="A100", gpus=8))
    assert check_location(SITE) == SITE
    assert region_store_url(SITE).endswith("/stores/onprem/dc1")
    # out of the site: the pool's rate (the stated default); into it: the cloud's internet egress
    assert egress_usd_per_gb(SITE, AWS) == DEFAULT_SITE_EGRESS_USD_PER_GB
    assert egress_usd_per_gb(AWS, SITE) == pytest.approx(0.09)
    assert egress_usd_per_gb(SITE, SITE) == 0.0
    add_pool(PrivatePool(name="dc1", gpu_model="A100", gpus=8, egress_usd_per_gb=0.05), replace=True)
    assert egress_usd_per_gb(SITE, "gcp/us-central1") == pytest.approx(0.05)
    # the site is priced from the pool's $/GPU-hour
    from spotshift.placement.inputs import usage_for

    job = TrainingJob(name="j", dataset="d", total_steps=10, work_hours=1.0, gpu_model="A100", gpu_count=8)
    assert usage_for(None, job, SITE)["price_usd_hour"] == pytest.approx(8 * 14.20 / 8)


@pytest.fixture
def site_world(spotshift_home: Path) -> Iterator[Any]:
    add_pool(PrivatePool(name="dc1", gpu_model="A100", gpus=8, egress_usd_per_gb=0.05))
    data = spotshift_home / "data"
    data.mkdir()
    for i in range(3):
        (data / f"part-{i}.txt").write_text(("private site genome shard " * 400 + str(i)) * 10)
    add_dataset(
        Dataset(
            name="corpus", source=str(data), location=SITE, min_chunk=4096, avg_chunk=16384, max_chunk=65536
        )
    )
    # trainers take one step per (hours per step) x 5 s of wall time; virtual time moves when told
    VirtualClock(T0.isoformat(), time.time(), 0.0, True, 720.0).save()
    common = dict(
        dataset="corpus",
        gpu_model="A100",
        gpu_count=8,
        min_topology_score=0.0,
        allowed_locations=["aws/*"],
        submitted_at=T0.isoformat(),
    )
    add_job(TrainingJob(name="base", total_steps=400, work_hours=8.0, checkpoint_every_steps=100, **common))  # type: ignore[arg-type]
    add_job(
        TrainingJob(
            name="urgent",
            total_steps=2000,
            work_hours=20.0,
            checkpoint_every_steps=10,
            deadline_hours=24.0,
            **common,  # type: ignore[arg-type]
        )
    )
    write_quotes("snap-1", T0, {AWS: 20.0, "aws/us-west-2": 22.0})
    backend = open_backend("local")
    try:
        yield backend
    finally:
        stop_all(backend)


def _wait_checkpoint(job: str, location: str, step: int, timeout_s: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ref = runs.latest_ref(job, location)
        if ref is not None and ref["step"] >= step:
            return ref
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint of {job} at step {step} in {location} within {timeout_s}s")


def _rows(sql: str) -> list[tuple[Any, ...]]:
    with warehouse.connect() as con:
        return con.execute(sql).fetchall()


@pytest.mark.slow
def test_job_bursts_with_its_data_and_checkpoint_and_comes_back(site_world: Any) -> None:
    backend = site_world
    # urgent trained at the site before (its checkpoint is in the site's store), then left the pool
    relocate.start_live(backend, "urgent", SITE)
    _wait_checkpoint("urgent", SITE, 10)
    runs.stop_with_checkpoint(backend, "urgent", reason="test: leaves the pool")
    site_step = runs.latest_ref("urgent", SITE)["step"]  # type: ignore[index]

    # base takes the whole pool: a real placement on the site
    code, doc, err = _cli("pools", "submit", "dc1", "base", "--at", T0.isoformat(), "--move", "--json")
    assert code == 0, (err, doc)
    (placed,) = doc["moves"]
    assert (placed["trigger"], placed["to_location"], placed["status"]) == ("place", SITE, "cut_over")
    assert backend.status("base").location == SITE and load_state("base").location == SITE

    # urgent would miss its deadline waiting 8 h: it bursts, data and checkpoint go to the cloud
    code, doc, err = _cli("pools", "submit", "dc1", "urgent", "--at", T0.isoformat(), "--move", "--json")
    assert code == 0, (err, doc)
    (burst,) = doc["moves"]
    assert (burst["trigger"], burst["to_location"], burst["status"]) == ("burst", AWS, "cut_over"), burst
    assert burst["run_key"] == f"urgent:-->{AWS}:pool-dc1@{T0.isoformat()}"
    assert backend.status("urgent").location == AWS
    # the dataset left the site, delta-synced and priced at the site's egress rate
    ((src, egress_rate, sent),) = _rows(
        f"SELECT src_location, egress_usd_per_gb, bytes_sent FROM raw.transfers "
        f"WHERE kind = 'dataset' AND dst_location = '{AWS}'"
    )
    assert (src, egress_rate) == (SITE, 0.05) and sent > 0
    from spotshift.migration.state import local_env
    from spotshift.migration.steps import check_replica

    assert check_replica(local_env(run_id="t"), "corpus", AWS).passed
    # the site's checkpoint is in the cloud store, and the cloud trainer resumed from it
    carried = runs.latest_ref("urgent", AWS)
    assert carried is not None and carried["step"] >= site_step
    assert Path(region_store_url(AWS).removeprefix("file://"), "checkpoints").exists() or carried
    cloud_ref = _wait_checkpoint("urgent", AWS, site_step + 20)

    # a second tick does not move anything twice (run keys already in raw.migrations)
    code, doc, _ = _cli(
        "pools", "tick", "dc1", "--at", (T0 + timedelta(hours=1)).isoformat(), "--move", "--json"
    )
    assert code == 0 and doc["moves"] == []

    # 9 h later base is done, the cooldown is over: urgent comes back, validated against the cloud
    load_clock().advance(9 * 3600).save()
    code, doc, err = _cli(
        "pools",
        "tick",
        "dc1",
        "--at",
        (T0 + timedelta(hours=9)).isoformat(),
        "--move",
        "--shadow-steps",
        "4",
        "--json",
    )
    assert code == 0, (err, doc)
    moved = [m for m in doc["moves"] if m["job"] == "urgent"]
    assert len(moved) == 1, doc
    (back,) = moved
    assert (back["trigger"], back["from_location"], back["to_location"]) == ("return", AWS, SITE)
    assert back["status"] == "cut_over", back
    assert "validate_shadow" in back["steps"] and back["shadow"]
    assert backend.status("urgent").location == SITE and load_state("urgent").location == SITE
    home_ref = runs.latest_ref("urgent", SITE)
    assert home_ref is not None and home_ref["step"] >= cloud_ref["step"]

    # both moves and both choices, costed, are warehouse facts
    moves = dict(
        _rows("SELECT trigger, status FROM raw.migrations WHERE job = 'urgent' AND status = 'cut_over'")
    )
    assert moves == {"burst": "cut_over", "return": "cut_over"}
    events = {
        r[0]: r[1:]
        for r in _rows(
            "SELECT event, cost_pool_usd, cost_cloud_usd, egress_usd, run_key FROM raw.pool_events "
            "WHERE job = 'urgent' AND event IN ('burst', 'repatriated')"
        )
    }
    assert set(events) == {"burst", "repatriated"}
    for pool_usd, cloud_usd, egress, _ in events.values():
        assert pool_usd > 0 and cloud_usd > 0 and egress is not None
    ((cloud_cost,),) = _rows(
        "SELECT cost_usd FROM raw.pool_events WHERE job = 'urgent' AND event = 'repatriated'"
    )
    assert cloud_cost == pytest.approx(9 * 20.0)  # 9 h of the $20/h node in the cloud
    keys = {r[0] for r in _rows("SELECT run_key FROM raw.pool_events WHERE event = 'move_cut_over'")}
    assert {burst["run_key"], back["run_key"]} <= keys


def test_the_price_sensor_leaves_pool_jobs_to_the_pool(site_world: Any) -> None:
    from spotshift.migration.plan import jobs_to_decide
    from spotshift.pools.scheduler import submit

    with warehouse.connect() as con:
        assert jobs_to_decide(con, site_world, busy=set(), now=T0) == ["base", "urgent"]
    submit("dc1", "base", now=T0)
    submit("dc1", "urgent", now=T0)  # burst: still the pool's to bring back
    with warehouse.connect() as con:
        assert jobs_to_decide(con, site_world, busy=set(), now=T0) == []
