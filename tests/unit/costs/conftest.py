"""One dbt build per test run (shared by the xdist workers): a warehouse with the realistic fixture facts plus a tiny
hand-built job whose marts are computed by hand in test_marts.py."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import pytest

from spotshift.costs.dbt import DbtRun, build_marts
from spotshift.simulate.traces import AvailabilityTrace, save_availability
from spotshift.warehouse import connect
from tests.conftest import once_per_run
from tests.fixtures_costs import generate_facts, write_facts

HAND_JOB = "hand-tiny"
#: availability of gcp/tiny-1 from the hand job's start (04:00): 1 h up, 1 h down, then up
HAND_OUTAGE = AvailabilityTrace(600, tuple([1] * 6 + [0] * 6 + [1] * 200), "gcp/tiny-1")


def _t(hhmm: str) -> datetime:
    h, m = hhmm.split(":")[:2]
    s = hhmm.split(":")[2] if hhmm.count(":") == 2 else "0"
    return datetime(2024, 5, 1, int(h), int(m), int(s))


def hand_facts() -> dict[str, list[dict]]:
    """Job hand-tiny: a 2 h spot attempt on gcp/tiny-1 preempted 1 h after its checkpoint, then 2 h on
    aws/tiny-2 after a preemption migration that sent a dataset (5 GB for 1 GB changed) and a
    checkpoint (1 GB for 1 GB). Quotes: gcp/tiny-1 spot $8/h until 06:00, then $16/h (8 GPUs)."""
    quotes = [
        dict(
            snapshot_id="q1",
            polled_at=_t("00:00"),
            provider="gcp",
            region="tiny-1",
            zone="tiny-1-a",
            instance_type="tiny.8gpu",
            gpu_model="A100-40GB",
            gpu_count=8,
            market="spot",
            price_usd_hour=8.0,
        ),
        dict(
            snapshot_id="q1",
            polled_at=_t("00:00"),
            provider="gcp",
            region="tiny-1",
            zone="tiny-1-a",
            instance_type="tiny.8gpu",
            gpu_model="A100-40GB",
            gpu_count=8,
            market="on_demand",
            price_usd_hour=24.0,
        ),
        dict(
            snapshot_id="q2",
            polled_at=_t("06:00"),
            provider="gcp",
            region="tiny-1",
            zone="tiny-1-a",
            instance_type="tiny.8gpu",
            gpu_model="A100-40GB",
            gpu_count=8,
            market="spot",
            price_usd_hour=16.0,
        ),
    ]
    usage = [
        dict(
            usage_id="h1",
            job=HAND_JOB,
            provider="gcp",
            region="tiny-1",
            instance_type="tiny.8gpu",
            gpu_model="A100-40GB",
            market="spot",
            started_at=_t("04:00"),
            ended_at=_t("06:00"),
            gpu_count=8,
            price_usd_hour=8.0,
            list_price_usd_hour=24.0,
            usd=16.0,
            ended_in_preemption=True,
            steps=2000,
            tokens=2_000_000_000,
            run_id="run-h1",
        ),
        dict(
            usage_id="h2",
            job=HAND_JOB,
            provider="aws",
            region="tiny-2",
            instance_type="tiny.aws",
            gpu_model="A100-40GB",
            market="spot",
            started_at=_t("06:30"),
            ended_at=_t("08:30"),
            gpu_count=8,
            price_usd_hour=10.0,
            list_price_usd_hour=32.0,
            usd=20.0,
            ended_in_preemption=False,
            steps=2000,
            tokens=2_000_000_000,
            run_id="run-h2",
        ),
    ]
    checkpoints = [
        dict(
            checkpoint_id="hc1",
            job=HAND_JOB,
            step=1000,
            tokens=1_000_000_000,
            kind="periodic",
            location="gcp/tiny-1",
            bytes=10**9,
            created_at=_t("05:00"),
        ),
        dict(
            checkpoint_id="hc2",
            job=HAND_JOB,
            step=3000,
            tokens=3_000_000_000,
            kind="final",
            location="aws/tiny-2",
            bytes=10**9,
            created_at=_t("08:30"),
        ),
    ]
    transfers = [
        dict(
            transfer_id="ht1",
            kind="dataset",
            entity="tiny-ds",
            method="full",
            src_location="gcp/tiny-1",
            dst_location="aws/tiny-2",
            started_at=_t("06:05"),
            seconds=40.0,
            bytes_scanned=5 * 10**9,
            bytes_changed=10**9,
            bytes_full=5 * 10**9,
            bytes_sent=5 * 10**9,
            egress_usd_per_gb=0.02,
            egress_usd=0.10,
            transfer_amplification=5.0,
            run_id="run-tiny-mig",
        ),
        dict(
            transfer_id="ht2",
            kind="checkpoint",
            entity=HAND_JOB,
            method="tensor_delta",
            src_location="gcp/tiny-1",
            dst_location="aws/tiny-2",
            started_at=_t("06:06"),
            seconds=8.0,
            bytes_scanned=2 * 10**9,
            bytes_changed=10**9,
            bytes_full=2 * 10**9,
            bytes_sent=10**9,
            egress_usd_per_gb=0.02,
            egress_usd=0.02,
            transfer_amplification=1.0,
            run_id="run-tiny-mig",
        ),
    ]
    migrations = [
        dict(
            migration_id="hm1",
            job=HAND_JOB,
            trigger="preemption",
            from_location="gcp/tiny-1",
            to_location="aws/tiny-2",
            started_at=_t("06:00"),
            ended_at=_t("06:30"),
            status="cut_over",
            downtime_s=1800.0,
            bytes_moved=6 * 10**9,
            egress_usd=0.12,
            run_id="run-tiny-mig",
        ),
    ]
    preemptions = [
        dict(
            notice_id="hn1",
            job=HAND_JOB,
            location="gcp/tiny-1",
            notice_kind="gcp_metadata",
            noticed_at=_t("05:59:30"),
            deadline_at=_t("06:00"),
            recovered_at=_t("06:30"),
            recovery_s=1830.0,
            step=1000,
        ),
    ]
    return {
        "price_quotes": quotes,
        "compute_usage": usage,
        "checkpoints": checkpoints,
        "transfers": transfers,
        "migrations": migrations,
        "preemptions": preemptions,
    }


def _build_warehouse(root: Path) -> tuple[Path, DbtRun]:
    path = root / "warehouse.duckdb"
    with connect(path) as con:
        write_facts(con, generate_facts(seed=7))
        write_facts(con, hand_facts())
    with pytest.MonkeyPatch.context() as mp:
        # a home of its own: the availability trace of the hand job's first spot location (capacity
        # from 04:00 for 1 h, gone for 1 h, then back), nothing from a developer's ./.spotshift
        mp.setenv("SPOTSHIFT_HOME", str(root / "home"))
        mp.delenv("SPOTSHIFT_CONFIG", raising=False)
        save_availability({"gcp/tiny-1": HAND_OUTAGE}, datetime(2024, 5, 1, 4, 0))
        return path, build_marts(path)


@pytest.fixture(scope="session")
def built_warehouse(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DbtRun]:
    """A warehouse with fixture + hand-built facts and every dbt_costs mart built: one dbt build per
    test run, shared by the xdist workers (tests open it read-only or copy it)."""
    return once_per_run(tmp_path_factory, "costs-warehouse", _build_warehouse)


@pytest.fixture
def warehouse_copy(built_warehouse: tuple[Path, DbtRun], tmp_path: Path) -> Path:
    """A private copy of the built warehouse (tests that append or lock it do not disturb others)."""
    dst = tmp_path / "warehouse.duckdb"
    shutil.copy(built_warehouse[0], dst)
    return dst
