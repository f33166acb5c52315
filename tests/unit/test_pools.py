"""Private pools: a job bursts to the cheapest cloud when the pool is full and comes back when it
frees, with the cost of both choices recorded; the economics and the command line."""

from __future__ import annotations

import contextlib
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spotshift.cli import main
from spotshift.errors import ConfigError
from spotshift.jobs import TrainingJob, add_job
from spotshift.pools import economics
from spotshift.pools.pool import DEFAULT_USD_PER_GPU_HOUR, PrivatePool, add_pool
from spotshift.pools.scheduler import pool_report, submit, tick
from spotshift.pools.state import load_pool_state
from spotshift.sync.datasets import Dataset, add_dataset
from tests.migration_support import write_quotes

T0 = datetime(2025, 3, 3, 0, tzinfo=UTC)


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_default_price_is_the_seed_node() -> None:
    assert pytest.approx(14.20 / 8) == DEFAULT_USD_PER_GPU_HOUR
    pool = PrivatePool(name="dc1", gpu_model="a100", gpus=64)
    assert pool.location == "onprem/dc1" and pool.gpu_model == "A100-40GB"
    assert pool.usd_per_node_hour == pytest.approx(14.20)
    with pytest.raises(ConfigError, match="not onprem/<site>"):
        PrivatePool(name="dc1", gpu_model="A100", gpus=8, location="aws/us-east-1")
    with pytest.raises(ConfigError, match="gpus must be"):
        PrivatePool(name="dc1", gpu_model="A100", gpus=0)
    with pytest.raises(ConfigError, match="not a known GPU model"):
        PrivatePool(name="dc1", gpu_model="Z9000", gpus=8)


def test_economics_both_sides() -> None:
    # the deadline forces a burst even when the cloud costs more
    late = economics.burst_or_wait(
        work_hours=10,
        gpus=8,
        pool_usd_per_gpu_hour=1.775,
        wait_hours=20,
        deadline_hours_left=24,
        cloud_usd_hour=30.0,
        egress_out_usd=5.0,
        egress_back_usd=1.0,
    )
    assert late.action == "burst" and late.cost_pool_usd == pytest.approx(142.0)
    assert late.cost_cloud_usd == pytest.approx(10.25 * 30 + 6) and late.saving_usd < 0
    # no deadline pressure and a dearer cloud: wait
    wait = economics.burst_or_wait(
        work_hours=10,
        gpus=8,
        pool_usd_per_gpu_hour=1.775,
        wait_hours=2,
        deadline_hours_left=None,
        cloud_usd_hour=30.0,
        egress_out_usd=0,
        egress_back_usd=0,
    )
    assert wait.action == "wait"
    # data gravity: a cheap cloud is not cheap once the data's egress is paid
    cheap = dict(
        work_hours=10,
        gpus=8,
        pool_usd_per_gpu_hour=1.775,
        wait_hours=2,
        deadline_hours_left=None,
        cloud_usd_hour=8.0,
    )
    assert economics.burst_or_wait(**cheap, egress_out_usd=0, egress_back_usd=0).action == "burst"
    assert economics.burst_or_wait(**cheap, egress_out_usd=100, egress_back_usd=0).action == "wait"
    # repatriation: cooldown first, then only when it pays
    kw = dict(
        work_hours_left=10,
        gpus=8,
        pool_usd_per_gpu_hour=1.775,
        cloud_usd_hour=20.0,
        egress_back_usd=2.0,
        deadline_hours_left=None,
    )
    assert economics.stay_or_repatriate(**kw, hours_since_burst=1).action == "stay"
    back = economics.stay_or_repatriate(**kw, hours_since_burst=7)
    assert back.action == "repatriate" and back.cost_cloud_usd == pytest.approx(200.0)
    assert back.cost_pool_usd == pytest.approx(142.0 + 2.0 + 0.25 * 20)


@pytest.fixture
def hybrid(spotshift_home: Path) -> Path:
    data = spotshift_home / "data"
    data.mkdir()
    (data / "shard-0.bin").write_bytes(b"genome" * 50_000)
    add_dataset(Dataset(name="genomes", source=str(data), location="aws/us-east-1"))
    common = dict(
        dataset="genomes",
        total_steps=1000,
        gpu_model="A100",
        gpu_count=8,
        min_topology_score=7.0,
        allowed_locations=["aws/*"],
        submitted_at=T0.isoformat(),
    )
    add_job(TrainingJob(name="base", work_hours=8.0, **common))  # type: ignore[arg-type]
    add_job(TrainingJob(name="urgent", work_hours=20.0, deadline_hours=24.0, **common))  # type: ignore[arg-type]
    # a dear cloud ($2.50/GPU-h spot, 3x on demand) next to the pool's $1.775
    write_quotes("snap-1", T0, {"aws/us-east-1": 20.0, "aws/us-west-2": 22.0})
    add_pool(PrivatePool(name="dc1", gpu_model="A100", gpus=8, egress_usd_per_gb=0.05))
    return spotshift_home


def test_job_bursts_when_the_pool_is_full_and_comes_back_when_it_frees(hybrid: Path) -> None:
    submit("dc1", "base", now=T0)
    doc = submit("dc1", "urgent", now=T0)
    # the pool is full for 8 h; 8 h + 20 h of work misses the 24 h deadline: burst, both costs kept
    assert [r["job"] for r in doc["running"]] == ["base"] and doc["queue"] == []
    (b,) = doc["burst"]
    assert b["job"] == "urgent" and b["location"] == "aws/us-east-1" and b["usd_hour"] == 20.0
    burst = next(e for e in doc["events"] if e["event"] == "burst")
    assert "misses the deadline" in burst["choice"]["reason"]
    assert burst["choice"]["cost_pool_usd"] == pytest.approx(20 * 8 * DEFAULT_USD_PER_GPU_HOUR)
    dataset_gb = 300_000 / 1e9
    assert burst["choice"]["egress_usd"] == pytest.approx(dataset_gb * 0.05)
    assert burst["choice"]["cost_cloud_usd"] == pytest.approx(20.25 * 20.0 + dataset_gb * 0.05)

    # still full at 7 h: nothing changes
    doc = tick("dc1", now=T0 + timedelta(hours=7))
    assert doc["burst"] and [r["job"] for r in doc["running"]] == ["base"]
    # 8 h: base is done, the pool frees, the cooldown has passed, and the pool is cheaper: back home
    doc = tick("dc1", now=T0 + timedelta(hours=8))
    assert doc["burst"] == [] and [r["job"] for r in doc["running"]] == ["urgent"]
    back = next(e for e in doc["events"] if e["event"] == "repatriated")
    assert back["hours"] == pytest.approx(8.0) and back["cost_usd"] == pytest.approx(160.0)
    assert back["choice"]["cost_cloud_usd"] == pytest.approx(12.25 * 20.0)  # staying for the work left
    assert back["choice"]["cost_pool_usd"] < back["choice"]["cost_cloud_usd"]

    rep = pool_report("dc1", now=T0 + timedelta(hours=10))
    assert rep["bursts"] == 1 and rep["repatriations"] == 1 and rep["burst_hours"] == pytest.approx(8.0)
    assert rep["burst_cost_usd"] == pytest.approx(burst["choice"]["cost_cloud_usd"])
    assert rep["waiting_cost_usd"] == pytest.approx(burst["choice"]["cost_pool_usd"])
    # base 8 h x 8 GPUs, urgent 2 h x 8 GPUs over 10 h x 8 GPUs
    assert rep["utilisation"] == pytest.approx((8 * 8 + 2 * 8) / (10 * 8))
    assert rep["queue_wait_hours_max"] == 0.0
    # the job finishes on the pool: 12.25 h left + 0.25 h changeover after hour 8
    doc = tick("dc1", now=T0 + timedelta(hours=21))
    assert doc["running"] == [] and [e["event"] for e in doc["events"]][-1] == "finished"


def test_waits_when_the_deadline_holds_and_the_cloud_is_dearer(hybrid: Path) -> None:
    add_job(
        TrainingJob(
            name="patient",
            dataset="genomes",
            total_steps=10,
            work_hours=4.0,
            gpu_model="A100",
            gpu_count=8,
            allowed_locations=["aws/*"],
        )
    )
    submit("dc1", "base", now=T0)
    doc = submit("dc1", "patient", now=T0)
    assert [q["job"] for q in doc["queue"]] == ["patient"] and doc["burst"] == []
    waiting = [e for e in doc["events"] if e["event"] == "waiting"]
    assert waiting and waiting[0]["choice"]["wait_hours"] == pytest.approx(8.0)
    doc = tick("dc1", now=T0 + timedelta(hours=8))
    assert [r["job"] for r in doc["running"]] == ["patient"]
    assert pool_report("dc1", now=T0 + timedelta(hours=12))["queue_wait_hours_max"] == pytest.approx(8.0)


def test_cli(hybrid: Path) -> None:
    code, out, _ = _cli("pools", "add", "dc2", "--gpu-model", "A100", "--gpus", "64")
    assert code == 0 and "$14.20 per 8-GPU node-hour" in out and "70%" in out
    code, _, err = _cli("pools", "add", "dc3", "--gpu-model", "A100", "--gpus", "-1")
    assert code == 2 and "gpus" in err and len(err.strip().splitlines()) == 1
    code, _, err = _cli("pools", "submit", "nope", "base")
    assert code == 2 and "nope" in err
    code, out, _ = _cli("pools", "submit", "dc1", "base", "--at", T0.isoformat(), "--json")
    assert code == 0 and json.loads(out)["running"][0]["job"] == "base"
    code, out, _ = _cli("pools", "submit", "dc1", "urgent", "--at", T0.isoformat())
    assert code == 0 and "burst aws/us-east-1" in out
    code, _, err = _cli("pools", "submit", "dc1", "urgent", "--at", T0.isoformat())
    assert code == 2 and "already in pool" in err
    code, out, _ = _cli("pools", "tick", "dc1", "--at", (T0 + timedelta(hours=8)).isoformat())
    assert code == 0 and "repatriated" in out
    code, out, _ = _cli("pools", "report", "dc1", "--at", (T0 + timedelta(hours=9)).isoformat())
    assert code == 0 and "bursts 1, repatriations 1" in out and "where waiting would have cost" in out
    code, out, _ = _cli("pools", "list", "--json")
    assert {p["name"] for p in json.loads(out)["pools"]} == {"dc1", "dc2"}
    assert load_pool_state("dc2")["events"] == []


def test_cost_report_carries_the_pool_and_devenv_sections(hybrid: Path) -> None:
    from spotshift.clock import VirtualClock
    from spotshift.costs.report import hybrid_sections

    submit("dc1", "base", now=T0)
    submit("dc1", "urgent", now=T0)
    VirtualClock.starting(T0 + timedelta(hours=8), speed=0).save()
    tick("dc1", now=T0 + timedelta(hours=8))
    pools, devenvs = hybrid_sections()
    (rep,) = pools
    assert rep["pool"] == "dc1" and rep["bursts"] == 1 and rep["repatriations"] == 1
    assert rep["burst_cost_usd"] > rep["waiting_cost_usd"] > 0  # the deadline was worth the premium
    assert devenvs == {}  # none declared
