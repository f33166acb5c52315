"""``spotshift run``: your own script (examples/train_plain.py) under the wrapper, interrupted by SIGTERM
and by each provider's notice format, resumes (here or in another region) to the same content hash
as a run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spotshift.checkpoint.keys import LocalKeyProvider
from spotshift.checkpoint.migrate import migrate_checkpoint
from spotshift.home import region_store_url
from spotshift.sync.store_url import open_store
from spotshift.training.backend import LocalProcessBackend
from spotshift.training.notice_server import MetadataServer
from spotshift.training.runs import build_request, collect
from tests.training_support import declare_tiny_job

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "train_plain.py"
STEPS = 40
GCP, AWS, AZURE = "gcp/us-central1", "aws/us-east-1", "azure/eastus"
_REFERENCE: dict[str, str] = {}


def declare(home: Path) -> None:
    declare_tiny_job(
        home,
        name="own",
        total_steps=STEPS,
        every=10,
        command=f"{sys.executable} {EXAMPLE} --steps {STEPS} --step-seconds 0.03",
    )


def wait_for_step(backend: LocalProcessBackend, step: int, location: str, timeout: float = 120.0) -> int:
    t0 = time.monotonic()
    while (info := backend.status("own")) is None or info.location != location:
        assert time.monotonic() - t0 < timeout, "not started"
        time.sleep(0.02)
    while (backend.progress("own") or 0) < step:
        info = backend.status("own")
        assert info is None or info.alive, f"run exited early: {backend.result('own')}"
        assert time.monotonic() - t0 < timeout, "no progress"
        time.sleep(0.02)
    return backend.progress("own") or 0


def reference_hash(backend: LocalProcessBackend) -> str:
    """Content hash of the final checkpoint of an uninterrupted run (the same in every home: it covers
    plaintext only)."""
    if "hash" not in _REFERENCE:
        backend.start(build_request("own", "gcp/us-west1", watchers={}))
        done = collect(backend, "own")
        assert done["status"] == "completed" and done["exit_code"] == 0, done
        assert done["step"] == STEPS and done["checkpoint"]["step"] == STEPS
        _REFERENCE["hash"] = done["checkpoint"]["content_hash"]
    return _REFERENCE["hash"]


@pytest.mark.parametrize("provider", ["aws", "gcp", "azure"])
def test_provider_notice_then_resume_to_the_same_hash(spotshift_home: Path, provider: str) -> None:
    declare(spotshift_home)
    backend = LocalProcessBackend()
    ref = reference_hash(backend)
    location = {"aws": AWS, "gcp": GCP, "azure": AZURE}[provider]
    kind = {"aws": "aws_imds", "gcp": "gcp_metadata", "azure": "azure_scheduled_events"}[provider]
    with MetadataServer() as md:
        req = build_request("own", location, watchers={kind: md.url})
        req.poll_interval_s = 0.05
        backend.start(req)
        wait_for_step(backend, 12, location)
        md.preempt(provider, in_seconds=20)
        result = backend.wait("own", timeout_s=60)
        acknowledged = list(md.state.acknowledged)
    assert result["status"] == "preempted" and result["exit_code"] == 0, result
    assert result["notice"]["kind"] == kind and result["emergency"]["deadline_margin_s"] > 0
    step = result["step"]
    assert 12 <= step < STEPS and result["checkpoint"]["step"] == step
    assert result["checkpoint"]["store_url"] == region_store_url(location)
    event = json.loads(
        open_store(region_store_url(location)).get_bytes(
            f"events/preemption/{result['notice']['notice_id']}.json"
        )
    )
    assert (
        event["step"] == step
        and event["checkpoint"]["checkpoint_id"] == result["checkpoint"]["checkpoint_id"]
    )
    if provider == "azure":
        assert acknowledged == [result["notice"]["detail"]["event_id"]]

    backend.start(build_request("own", location, watchers={}))
    done = collect(backend, "own")
    assert done["status"] == "completed" and done["resumed_from"]["step"] == step
    assert done["checkpoint"]["content_hash"] == ref, f"not bitwise equal after a {provider} notice at {step}"


def test_spotshift_run_sigterm_then_move_and_finish_elsewhere(spotshift_home: Path) -> None:
    declare(spotshift_home)
    backend = LocalProcessBackend()
    ref = reference_hash(backend)
    cli = [sys.executable, "-c", "import sys; from spotshift.cli import main; sys.exit(main())", "run", "own"]
    proc = subprocess.Popen(
        [*cli, "--location", GCP, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=os.environ.copy(),
    )
    try:
        wait_for_step(backend, 15, GCP)
        proc.send_signal(signal.SIGTERM)  # what the cloud sends the VM's processes
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()[-2000:]
    result = json.loads(out)
    assert result["status"] == "preempted" and result["notice"]["kind"] == "sigterm"
    step = result["step"]
    assert 15 <= step < STEPS and result["checkpoint"]["step"] == step
    assert b"stopping at step" in err  # the script's own output reaches the terminal

    migrate_checkpoint(
        open_store(region_store_url(GCP)), "own", open_store(region_store_url(AWS)), LocalKeyProvider()
    )
    done = subprocess.run([*cli, "--location", AWS, "--json"], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    finished = json.loads(done.stdout)
    assert finished["status"] == "completed" and finished["resumed_from"]["step"] == step
    assert finished["checkpoint"]["content_hash"] == ref

    from spotshift import warehouse

    with warehouse.connect() as con:
        usage = con.execute(
            "select region, steps, ended_in_preemption from raw.compute_usage order by started_at"
        ).fetchall()
        pre = con.execute("select notice_kind, location, step from raw.preemptions").fetchall()
        kinds = {
            k
            for (k,) in con.execute("select distinct kind from raw.checkpoints where job = 'own'").fetchall()
        }
    assert ("us-central1", step, True) in usage and ("us-east-1", STEPS - step, False) in usage
    assert pre == [("sigterm", GCP, step)]
    assert {"periodic", "final"} <= kinds


def test_run_without_a_command_is_refused(spotshift_home: Path) -> None:
    declare_tiny_job(spotshift_home, name="builtin")
    from spotshift.cli import main

    assert main(["run", "builtin", "--location", GCP]) == 2


def test_until_step_and_the_shadow_comparison_of_a_move(spotshift_home: Path) -> None:
    """A bounded run stops with a checkpoint; both sides of a move's shadow comparison resume it under
    the wrapper and report the script's step_done metrics, which match (the script is deterministic)."""
    from spotshift.training.shadow_run import run_shadow_validation

    declare(spotshift_home)
    backend = LocalProcessBackend()
    backend.start(build_request("own", GCP, until_step=8, watchers={}))
    first = collect(backend, "own")
    assert first["status"] == "stopped_at_step" and first["step"] == 8 and first["checkpoint"]["step"] == 8
    migrate_checkpoint(
        open_store(region_store_url(GCP)), "own", open_store(region_store_url(AWS)), LocalKeyProvider()
    )
    cmp = run_shadow_validation(backend, "own", source_location=GCP, target_location=AWS, steps=3)
    assert cmp.steps == 3 and len(cmp.source_losses) == 3 and all(x > 0 for x in cmp.source_losses)
    assert cmp.source_losses == cmp.target_losses and cmp.checkpoint_bytes_equal and cmp.passed, cmp.reasons
