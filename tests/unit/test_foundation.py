"""Foundation: atomic writes, warehouse schema and locking, local store, egress, clock, registry, history."""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from spotshift import registry, warehouse
from spotshift.atomic import atomic_write_bytes, atomic_write_json
from spotshift.clock import VirtualClock, load_clock, parse_utc
from spotshift.errors import ConfigError, InputError, IntegrityError, NotFoundError
from spotshift.jobs import DEFAULT_MODEL
from spotshift.pricing.egress import continent_of, egress_usd, egress_usd_per_gb
from spotshift.pricing.history import read_price_history
from spotshift.pricing.quote import effective_gpu_hour_usd
from spotshift.sync.store import LocalChunkStore, chunk_key
from spotshift.sync.store_url import open_store
from spotshift.warehouse import first_row
from spotshift.warehouse_connection import open_connection
from spotshift.warehouse_schema import RAW_TABLES


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.json"
    atomic_write_json(target, {"x": 1})
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["b.json"]


def test_warehouse_schema_and_append(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    with warehouse.connect(db) as con:
        n = warehouse.append_rows(
            con,
            "raw.transfers",
            [
                {
                    "transfer_id": "t1",
                    "kind": "dataset",
                    "bytes_sent": 10,
                    "started_at": datetime(2025, 1, 1, tzinfo=UTC),
                }
            ],
        )
        assert n == 1
        row = first_row(con, "select transfer_id, bytes_sent, started_at, egress_usd from raw.transfers")
    assert row == ("t1", 10, datetime(2025, 1, 1), None)
    with warehouse.connect(db) as con:
        tables = {
            r[0]
            for r in con.execute(
                "select table_name from information_schema.tables where table_schema='raw'"
            ).fetchall()
        }
    assert tables == set(RAW_TABLES)


def test_warehouse_append_rejects_unknown_column(tmp_path: Path) -> None:
    with warehouse.connect(tmp_path / "w.duckdb") as con, pytest.raises(ConfigError, match="unknown column"):
        warehouse.append_rows(con, "raw.transfers", [{"transfer_id": "t", "bytes_sentt": 1}])
    with warehouse.connect(tmp_path / "w.duckdb") as con, pytest.raises(ConfigError, match="not defined"):
        warehouse.append_rows(con, "raw.nope", [{}])


def _hold_lock(path: str, seconds: float, ready: mp.Event) -> None:  # type: ignore[type-arg]
    import duckdb

    con = duckdb.connect(path)
    ready.set()
    time.sleep(seconds)
    con.close()


def test_warehouse_waits_for_other_process_lock(tmp_path: Path) -> None:
    db = str(tmp_path / "w.duckdb")
    ready = mp.get_context("spawn").Event()
    proc = mp.get_context("spawn").Process(target=_hold_lock, args=(db, 1.5, ready))
    proc.start()
    assert ready.wait(30)
    t0 = time.monotonic()
    with warehouse.connect(db, timeout_s=30) as con:
        con.execute("select 1")
    assert time.monotonic() - t0 > 0.5  # it really waited for the other process
    proc.join()


def test_warehouse_lock_timeout_is_a_clear_error(tmp_path: Path) -> None:
    db = str(tmp_path / "w.duckdb")
    ready = mp.get_context("spawn").Event()
    proc = mp.get_context("spawn").Process(target=_hold_lock, args=(db, 3.0, ready))
    proc.start()
    assert ready.wait(30)
    with pytest.raises(ConfigError, match="still locked"):
        open_connection(db, timeout_s=0.3)
    proc.join()


def test_local_store_roundtrip_and_write_once(tmp_path: Path) -> None:
    store = open_store((tmp_path / "s").as_uri())
    assert isinstance(store, LocalChunkStore)
    assert store.put_bytes("refs/x/latest", b"1")
    assert store.put_bytes("refs/x/latest", b"2")  # replace
    assert store.get_bytes("refs/x/latest") == b"2"
    assert not store.put_bytes("refs/x/latest", b"3", if_absent=True)
    assert store.get_bytes("refs/x/latest") == b"2"
    digest = "ab" + "0" * 30
    assert store.put_chunk(digest, b"data")
    assert not store.put_chunk(digest, b"data")
    assert chunk_key(digest) == f"chunks/ab/{digest}"
    assert sorted(store.list_keys()) == [f"chunks/ab/{digest}", "refs/x/latest"]
    assert list(store.list_keys("chunks/")) == [f"chunks/ab/{digest}"]
    with pytest.raises(IntegrityError, match="does not match"):
        store.get_chunk(digest, verify=lambda b: "cd" + "0" * 30)
    with pytest.raises(NotFoundError, match="not found"):
        store.get_bytes("nope")
    with pytest.raises(ConfigError):
        store.get_bytes("../escape")
    f = tmp_path / "f.bin"
    f.write_bytes(b"x" * 100)
    store.put_file("blob", f)
    store.get_file("blob", tmp_path / "out" / "g.bin")
    assert (tmp_path / "out" / "g.bin").read_bytes() == b"x" * 100
    assert store.size("blob") == 100 and store.size("missing") is None


def test_local_store_removes_temp_files_of_dead_writers(tmp_path: Path) -> None:
    store = LocalChunkStore(tmp_path / "s")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    (tmp_path / "s" / ".tmp").mkdir(parents=True)
    (tmp_path / "s" / ".tmp" / f"{pid}.abc").write_bytes(b"partial")
    (tmp_path / "s" / ".tmp" / f"{os.getpid()}.mine").write_bytes(b"in progress")
    assert store.remove_stale_temp_files() == 1
    assert [p.name for p in (tmp_path / "s" / ".tmp").iterdir()] == [f"{os.getpid()}.mine"]
    assert list(store.list_keys()) == []


def test_open_store_rejects_unknown_scheme() -> None:
    with pytest.raises(ConfigError, match="unsupported scheme"):
        open_store("ftp://host/x")
    with pytest.raises(ConfigError, match="absolute"):
        open_store("file://relative/path")


def test_egress_rules() -> None:
    assert egress_usd_per_gb("aws/us-east-1", "aws/us-east-1") == 0.0
    assert (
        egress_usd_per_gb("aws/us-east-1", "aws/us-east-1", src_zone="us-east-1a", dst_zone="us-east-1b")
        == 0.01
    )
    assert egress_usd_per_gb("aws/us-east-1", "aws/us-west-2") == 0.02
    assert egress_usd_per_gb("gcp/us-central1", "gcp/europe-west4") == 0.08
    assert egress_usd_per_gb("gcp/us-central1", "gcp/us-east4") == 0.02
    assert egress_usd_per_gb("gcp/us-central1", "aws/us-east-1") == 0.12
    assert egress_usd_per_gb("azure/eastus", "azure/westeurope") == 0.05
    assert egress_usd("aws/us-east-1", "azure/eastus", 2_000_000_000) == pytest.approx(0.18)
    assert continent_of("westus2") == "na" and continent_of("asia-east1") == "apac"
    with pytest.raises(ConfigError):
        egress_usd_per_gb("us-east-1", "aws/us-east-1")


def test_effective_gpu_hour_formula() -> None:
    # p4d: 8 GPUs, 400 Gbps, fast NVMe: no penalty
    assert effective_gpu_hour_usd(32.77, 8, 400, 16) == pytest.approx(32.77 / 8)
    # 100 Gbps and 5 Gbps storage: 1 + 5 + 0.4
    assert effective_gpu_hour_usd(10.0, 2, 100, 5) == pytest.approx(10.0 * 6.4 / 2)


def test_clock_speed_and_persistence(spotshift_home: Path) -> None:
    start = parse_utc("2023-01-01")
    clock = VirtualClock.starting(start, speed=0)
    clock.save()
    loaded = load_clock()
    assert loaded.now() == start
    assert loaded.advance(3600).now() == parse_utc("2023-01-01T01:00:00Z")
    fast = VirtualClock.starting(start, speed=3600)
    time.sleep(0.05)
    assert (fast.now() - start).total_seconds() > 100
    with pytest.raises(ConfigError):
        parse_utc("yesterday")


def test_registry_upsert_and_errors(spotshift_home: Path) -> None:
    registry.upsert("datasets", {"name": "a", "source": "file:///x"})
    with pytest.raises(ConfigError, match="already declared"):
        registry.upsert("datasets", {"name": "a", "source": "file:///y"})
    registry.upsert("datasets", {"name": "a", "source": "file:///y"}, replace=True)
    assert registry.get("datasets", "a")["source"] == "file:///y"
    with pytest.raises(ConfigError, match="not declared"):
        registry.get("datasets", "b")
    (spotshift_home / "spotshift.yaml").write_text("datasets: [{source: x}]\n")
    with pytest.raises(ConfigError, match="no string 'name'"):
        registry.entries("datasets")


def test_history_reader_accepts_real_shape(tmp_path: Path) -> None:
    p = tmp_path / "h.csv"
    p.write_text(
        "observed_at,instance_type,gpu_model,gpu_count,region,ondemand_hour,spot_hour\n"
        "2025-01-08T00:00:00+00:00,a2-highgpu-1g,a100,1,us-central1,3.67,1.10\n"
        "2025-01-01T00:00:00+00:00,a2-highgpu-1g,a100,1,us-central1,3.67,\n"
    )
    df = read_price_history(p)
    assert df.height == 2 and df["spot_hour"].to_list() == [None, 1.10]  # sorted by time
    assert df["provider"].to_list() == ["gcp", "gcp"]


@pytest.mark.parametrize(
    "body, message",
    [
        ("observed_at,instance_type\n2025-01-01,a2\n", "missing column"),
        (
            "observed_at,instance_type,gpu_model,gpu_count,region,ondemand_hour,spot_hour\n"
            "2025-01-01,a2,a100,one,us,1,0.5\n",
            "line 2: gpu_count",
        ),
        (
            "observed_at,instance_type,gpu_model,gpu_count,region,ondemand_hour,spot_hour\n"
            "2025-01-01,a2,a100,1,us,1,0.5\nnot-a-date,a2,a100,1,us,1,0.5\n",
            "line 3: observed_at",
        ),
        (
            "observed_at,instance_type,gpu_model,gpu_count,region,ondemand_hour,spot_hour\n"
            "2025-01-01,a2,a100,1,us,1,-0.5\n",
            "spot_hour",
        ),
        ("observed_at,instance_type,gpu_model,gpu_count,region,ondemand_hour,spot_hour\n", "no rows"),
    ],
)
def test_history_reader_refuses_malformed(tmp_path: Path, body: str, message: str) -> None:
    p = tmp_path / "bad.csv"
    p.write_text(body)
    with pytest.raises(InputError, match=message):
        read_price_history(p)


def test_history_reader_real_file(gcp_history: Path) -> None:
    df = read_price_history(gcp_history)
    assert df.height > 90_000
    assert df["spot_hour"].null_count() < df.height


def test_cli_home_and_exit_codes(spotshift_home: Path) -> None:
    exe = Path(sys.executable).with_name("spotshift")
    out = subprocess.run([exe, "home", "init", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (spotshift_home / "dagster" / "dagster.yaml").is_file()
    bad = subprocess.run([exe, "nosuchcommand"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_training_job_declaration(spotshift_home: Path) -> None:
    from spotshift.jobs import TrainingJob, add_job, get_job, load_jobs
    from spotshift.sync.datasets import Dataset, add_dataset

    with pytest.raises(ConfigError, match="dataset 'corpus' is not declared"):
        add_job(TrainingJob(name="llm-ft", dataset="corpus", total_steps=1000, work_hours=400.0))
    add_dataset(Dataset.declare("corpus", str(spotshift_home), location="gcp/us-central1"))
    job = TrainingJob(
        name="llm-ft",
        dataset="corpus",
        total_steps=1000,
        work_hours=400.0,
        allowed_locations=["gcp/*", "aws/us-east-1"],
        submitted_at="2024-01-01T00:00:00Z",
        deadline_hours=700,
    )
    add_job(job)
    assert get_job("llm-ft") == job and load_jobs() == [job]
    assert job.hours_per_step == pytest.approx(0.4)
    assert job.allows("gcp/europe-west4") and job.allows("aws/us-east-1") and not job.allows("aws/us-west-2")
    assert job.deadline_at == parse_utc("2024-01-30T04:00:00Z")
    with pytest.raises(ConfigError, match="total_steps"):
        TrainingJob(name="x", dataset="d", total_steps=0, work_hours=1)
    with pytest.raises(ConfigError, match="unknown field"):
        TrainingJob.from_dict({"name": "x", "dataset": "d", "total_steps": 1, "work_hours": 1, "gpus": 8})
    with pytest.raises(ConfigError, match="name must use"):
        TrainingJob(name="Bad Name", dataset="d", total_steps=1, work_hours=1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"work_hours": float("inf")}, "work_hours must be a finite number"),
        ({"work_hours": float("nan")}, "work_hours must be a finite number"),
        ({"total_steps": 2**64}, "total_steps must be a whole number from 1 to 9223372036854775807"),
        ({"total_steps": 1.5}, "total_steps must be an integer"),
        ({"deadline_hours": 5.0}, "deadline_hours 5 is shorter than work_hours 10"),
        ({"start_location": "mars/olympus"}, "unknown provider 'mars'"),
        ({"start_location": "gcp/olympus1"}, "'olympus1' is not a known gcp region"),
        ({"allowed_locations": ["mars/*"]}, "unknown provider 'mars'"),
        ({"allowed_locations": ["gcp/mars-*"]}, "'gcp/mars-*' matches no known location"),
        ({"allowed_locations": ["gcp/*"], "start_location": "aws/us-east-1"}, "not an allowed location"),
        ({"model": {**DEFAULT_MODEL, "d_model": 0}}, "model d_model must be a whole number from 1"),
        ({"model": {**DEFAULT_MODEL, "n_head": 3}}, "d_model 64 is not divisible by n_head 3"),
        ({"model": {**DEFAULT_MODEL, "vocab_size": -1}}, "model vocab_size must be a whole number from 1"),
        ({"learning_rate": float("inf")}, "learning_rate must be a finite number"),
    ],
)
def test_training_job_refuses_nonsense_at_declaration(overrides: dict, message: str) -> None:
    from spotshift.jobs import TrainingJob

    with pytest.raises(ConfigError, match=re.escape(message)):
        TrainingJob(**{"name": "j", "dataset": "d", "total_steps": 10, "work_hours": 10.0, **overrides})


def test_the_trainer_validates_model_configs_with_the_declaration_check() -> None:
    from spotshift import jobs
    from spotshift.training import model, trainer

    assert model.check_model_config is jobs.check_model_config is trainer.check_model_config


def test_region_store_urls_follow_the_stores_base(
    spotshift_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spotshift.home import location_of_store, region_store_url

    local = region_store_url("gcp/us-central1")
    assert local == (spotshift_home / "stores" / "gcp" / "us-central1").as_uri()
    assert location_of_store(local) == "gcp/us-central1"
    monkeypatch.setenv("SPOTSHIFT_STORES_URL", "s3://bucket/spotshift/")
    assert region_store_url("aws/us-east-1") == "s3://bucket/spotshift/aws/us-east-1"
    assert location_of_store("s3://bucket/spotshift/aws/us-east-1") == "aws/us-east-1"
    assert location_of_store("s3://other/aws/us-east-1") is None
    with pytest.raises(ConfigError, match="provider/region"):
        region_store_url("us-east-1")
    with pytest.raises(ConfigError, match="provider/region"):
        region_store_url("aws/us-east-1/us-east-1a")  # a zone has no store of its own


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("s3://bucket/a/b/", ("s3", "bucket", "a/b")),
        ("s3://bucket", ("s3", "bucket", "")),
        ("gs://bucket/p", ("gs", "bucket", "p")),
        ("file:///srv/stores/", ("file", "", "/srv/stores")),
    ],
)
def test_the_stores_url_is_read_in_one_place(url: str, base: tuple[str, str, str], monkeypatch) -> None:  # noqa: ANN001
    from spotshift.home import stores_base, stores_base_url

    monkeypatch.setenv("SPOTSHIFT_STORES_URL", url)
    got = stores_base()
    assert (got.scheme, got.bucket, got.prefix) == base
    assert stores_base_url() == url.rstrip("/")
    assert got.region_prefix("gcp/us-central1") == "/".join(p for p in (base[2], "gcp/us-central1") if p)


@pytest.mark.parametrize("url", ["ftp://host/x", "s3://", "file://host/x", "s3://key:secret@bucket/p"])
def test_a_bad_stores_url_names_the_variable_never_the_secret(url: str, monkeypatch) -> None:  # noqa: ANN001
    from spotshift.home import region_store_url

    monkeypatch.setenv("SPOTSHIFT_STORES_URL", url)
    with pytest.raises(ConfigError, match="SPOTSHIFT_STORES_URL") as err:
        region_store_url("aws/us-east-1")
    assert "secret" not in str(err.value)


def test_locations_are_split_in_one_place() -> None:
    from spotshift.pricing.regions import provider_of, region_of, split_location, zone_of

    assert split_location("GCP/us-central1") == ("gcp", "us-central1")
    assert split_location("aws/us-east-1/us-east-1a", zone=True) == ("aws", "us-east-1")
    assert (
        region_of("aws/us-east-1/us-east-1a") == "aws/us-east-1"
        and zone_of("aws/us-east-1/us-east-1a") == "us-east-1a"
    )
    assert zone_of("aws/us-east-1") == "" and provider_of("Azure/eastus") == "azure"
    for bad in ("us-east-1", "aws/", "/us-east-1", "aws/us-east-1/us-east-1a", "a/b/c/d"):
        with pytest.raises(ConfigError, match="not of the form provider/region"):
            split_location(bad)
    with pytest.raises(ConfigError, match=r"provider/region\[/zone\]"):
        split_location("a/b/c/d", zone=True)
