"""Trainer processes: SIGTERM at a random step and a bitwise resume elsewhere; provider notices and deadlines;
never two trainers of a job; the command line."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch

from spotshift.checkpoint.format import open_checkpoint
from spotshift.checkpoint.keys import LocalKeyProvider
from spotshift.checkpoint.migrate import migrate_checkpoint
from spotshift.errors import ConfigError
from spotshift.home import region_store_url
from spotshift.sync.store_url import open_store
from spotshift.training.backend import LocalProcessBackend, trainer_is_live
from spotshift.training.data import prepare_tokens
from spotshift.training.notice_server import MetadataServer
from spotshift.training.runs import build_request, collect, dataset_source
from spotshift.training.trainer import TrainConfig, Trainer
from tests.training_support import declare_tiny_job, weights_of

GCP, AWS = "gcp/us-central1", "aws/us-east-1"

pytestmark = pytest.mark.slow


def wait_for_step(backend: LocalProcessBackend, name: str, step: int, timeout: float = 60.0) -> int:
    t0 = time.monotonic()
    while (backend.progress(name) or 0) < step:
        info = backend.status(name)
        assert info is not None and info.alive, f"trainer exited early: {backend.result(name)}"
        assert time.monotonic() - t0 < timeout, "trainer made no progress"
        time.sleep(0.01)
    return backend.progress(name) or 0


def reference_weights(job: str, steps: int) -> dict[str, torch.Tensor]:
    req = build_request(job, GCP)
    cfg = TrainConfig.from_dict(req.config)
    t = Trainer(cfg, prepare_tokens(cfg.dataset, dataset_source(cfg.dataset)))
    while t.step < steps:
        t.train_step()
    return {k: v.clone() for k, v in t.model.state_dict().items()}


def test_sigterm_at_a_random_step_then_bitwise_resume_in_another_region(spotshift_home: Path) -> None:
    declare_tiny_job(spotshift_home, total_steps=120, every=40)
    seed = int(time.time())
    stop_at = random.Random(seed).randint(5, 100)
    backend = LocalProcessBackend()
    backend.start(build_request("tiny", GCP, min_step_seconds=0.004))
    wait_for_step(backend, "tiny", stop_at)
    info = backend.status("tiny")
    os.kill(info.pid, signal.SIGTERM)  # what a cloud sends before reclaiming the VM
    result = collect(backend, "tiny")
    assert result["status"] == "preempted" and result["exit_code"] == 0, (seed, result)
    step = result["step"]
    assert stop_at <= step < 120
    ck = result["checkpoint"]
    assert ck["step"] == step and ck["store_url"] == region_store_url(GCP)  # committed in the region store
    assert result["notice"]["kind"] == "sigterm"
    event = json.loads(
        open_store(region_store_url(GCP)).get_bytes(f"events/preemption/{result['notice']['notice_id']}.json")
    )
    assert event["job"] == "tiny" and event["location"] == GCP and event["step"] == step
    assert (
        event["checkpoint"]["checkpoint_id"] == ck["checkpoint_id"]
        and event["deadline_at"] > event["noticed_at"]
    )

    # move the checkpoint to another region and finish the job there
    keys = LocalKeyProvider()
    migrate_checkpoint(open_store(region_store_url(GCP)), "tiny", open_store(region_store_url(AWS)), keys)
    backend.start(build_request("tiny", AWS))
    done = collect(backend, "tiny")
    assert done["status"] == "completed" and done["step"] == 120
    assert done["resumed_from"]["step"] == step and done["resumed_from"]["store_url"] == region_store_url(AWS)
    resumed = weights_of(region_store_url(AWS), "tiny")
    expected = reference_weights("tiny", 120)
    assert resumed.keys() == expected.keys()
    assert all(torch.equal(resumed[k], expected[k]) for k in expected), (
        f"not bitwise equal (seed {seed}, step {step})"
    )

    from spotshift import warehouse

    with warehouse.connect() as con:
        kinds = dict(con.execute("select kind, count(*) from raw.checkpoints group by kind").fetchall())
        usage = con.execute(
            "select region, steps, ended_in_preemption from raw.compute_usage order by started_at"
        ).fetchall()
        pre = con.execute("select notice_kind, location, step from raw.preemptions").fetchall()
    assert kinds.get("emergency", 0) + kinds.get("periodic", 0) >= 1 and kinds["final"] == 1
    assert usage == [("us-central1", step, True), ("us-east-1", 120 - step, False)]
    assert pre == [("sigterm", GCP, step)]


@pytest.mark.parametrize("provider", ["aws", "gcp", "azure"])
def test_provider_notice_checkpoints_before_the_deadline(spotshift_home: Path, provider: str) -> None:
    location = {"aws": AWS, "gcp": GCP, "azure": "azure/eastus"}[provider]
    declare_tiny_job(spotshift_home, total_steps=100000, every=100000, allowed_locations=["*"])
    kind = {"aws": "aws_imds", "gcp": "gcp_metadata", "azure": "azure_scheduled_events"}[provider]
    backend = LocalProcessBackend()
    with MetadataServer() as md:
        req = build_request("tiny", location, watchers={kind: md.url}, min_step_seconds=0.005)
        req.poll_interval_s = 0.05
        backend.start(req)
        wait_for_step(backend, "tiny", 10)
        md.preempt(provider, in_seconds=20)
        result = backend.wait("tiny", timeout_s=60)
        exited = datetime.now(UTC)
        assert result["status"] == "preempted" and result["exit_code"] == 0, result
        notice = result["notice"]
        assert notice["kind"] == kind
        deadline = datetime.fromisoformat(notice["deadline_at"])
        assert exited < deadline  # the process was gone before the provider's deadline
        assert result["emergency"]["deadline_margin_s"] > 0
        assert result["checkpoint"]["step"] == result["step"] > 10
        if provider == "azure":
            assert md.acknowledged == [notice["detail"]["event_id"]]  # approved once the checkpoint was safe
    store = open_store(region_store_url(location))
    event = json.loads(store.get_bytes(f"events/preemption/{notice['notice_id']}.json"))
    assert event["kind"] == kind and event["deadline_at"] == notice["deadline_at"]
    assert open_checkpoint(store, "tiny").step == result["step"]
    log = (Path(req.workdir) / "trainer.log").read_text()
    assert "emergency checkpoint of step" in log and "before the deadline" in log


def test_never_two_trainers_of_one_job(spotshift_home: Path) -> None:
    declare_tiny_job(spotshift_home, total_steps=100000, every=100000)
    backend = LocalProcessBackend()
    req = build_request("tiny", GCP, min_step_seconds=0.01)
    backend.start(req)
    wait_for_step(backend, "tiny", 2)
    assert (
        trainer_is_live("tiny")
        and [t.name for t in backend.list(GCP)] == ["tiny"]
        and backend.list(AWS) == []
    )
    with pytest.raises(ConfigError, match="already running in gcp/us-central1"):
        backend.start(build_request("tiny", AWS))
    # even a trainer started behind the backend's back refuses: the lock is the kernel's
    other = build_request("tiny", AWS, workdir=str(spotshift_home / "rogue"))
    other.save(spotshift_home / "rogue.json")
    rogue = subprocess.run(
        [sys.executable, "-m", "spotshift.training.worker", "--request", str(spotshift_home / "rogue.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rogue.returncode == 3 and "refusing to start a second one" in rogue.stderr
    # a planned stop checkpoints but is not a preemption: no notice event for the sensor
    result = backend.stop("tiny", reason="test")
    assert result["status"] == "stopped" and result["checkpoint"]["step"] == result["step"]
    assert not list(open_store(region_store_url(GCP)).list_keys("events/"))
    assert not trainer_is_live("tiny")


def test_cli_train_runs_and_resumes(spotshift_home: Path) -> None:
    declare_tiny_job(spotshift_home, total_steps=50, every=20)
    exe = Path(sys.executable).with_name("spotshift")
    forced = {**os.environ, "SPOTSHIFT_PROGRESS": "always"}  # as at a terminal: step, loss, rate on stderr
    first = subprocess.run(
        [exe, "train", "tiny", "--steps", "30", "--json"], capture_output=True, text=True, env=forced
    )
    assert first.returncode == 0, first.stderr
    assert "train tiny" in first.stderr and "steps" in first.stderr and "loss " in first.stderr
    r1 = json.loads(first.stdout)  # stdout stays one JSON object
    assert r1["status"] == "stopped_at_step" and r1["step"] == 30 and r1["location"] == GCP
    second = subprocess.run(
        [exe, "train", "tiny", "--quiet"], capture_output=True, text=True, env=forced
    )  # resumes where it checkpointed
    assert second.returncode == 0, second.stderr
    assert "train tiny" not in second.stderr  # --quiet: no progress display
    assert second.stdout.startswith("completed: tiny in gcp/us-central1 at step 50 (20 steps run)")
    bad = subprocess.run([exe, "train", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "nope" in bad.stderr
    stop = subprocess.run([exe, "trainers", "stop", "tiny", "--json"], capture_output=True, text=True)
    assert stop.returncode == 0 and json.loads(stop.stdout)["checkpoint"]["step"] == 50
