"""Multi-process jobs: examples/train_ddp.py and examples/train_fsdp.py under ``torchrun`` (2 ranks,
CPU, gloo), with real processes. Every rank's shard is in place before rank 0 writes ``COMMIT``; the
sharded checkpoint restores on one process (DCP resharding 2 -> 1, DDP and FSDP); a missing or
altered shard is refused with one line; SIGTERM to ``spotshift run JOB`` (a declared ``torchrun``
command, or ``-- torchrun ...``) stops both ranks and the run resumes to the content hash of an
uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from spotshift.checkpoint.format import StoredCheckpoint, list_checkpoints
from spotshift.checkpoint.keys import open_key_provider
from spotshift.checkpointing import Session
from spotshift.errors import IntegrityError
from spotshift.home import region_store_url
from spotshift.sync.store_url import open_store
from spotshift.training.backend import LocalProcessBackend
from tests.training_support import declare_tiny_job

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parents[2] / "examples" / "train_ddp.py"
FSDP_EXAMPLE = EXAMPLE.with_name("train_fsdp.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
GCP, WEST = "gcp/us-central1", "gcp/us-west1"
CLI = [sys.executable, "-c", "import sys; from spotshift.cli import main; sys.exit(main())"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "PYTHONPATH": str(HERE.parents[2]), **extra}


def _example_module() -> object:
    import importlib.util

    if str(EXAMPLE.parent) not in sys.path:
        sys.path.insert(0, str(EXAMPLE.parent))  # it imports train_plain from its directory
    spec = importlib.util.spec_from_file_location("train_ddp", EXAMPLE)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_shards_before_commit_restore_on_one_process_and_refuse_a_bad_shard(
    spotshift_home: Path, tmp_path: Path
) -> None:
    seen = tmp_path / "seen.jsonl"
    run = subprocess.run(
        [*TORCHRUN, str(HERE / "ddp_driver.py"), "--steps", "6"],
        env=_env(SPOTSHIFT_JOB="ddp", SPOTSHIFT_LOCATION=GCP, DDP_TEST_SEEN=str(seen), DDP_TEST_SLOW_S="1.0"),
        capture_output=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    region = open_store(region_store_url(GCP))
    (ckpt_id,) = list_checkpoints(region, "ddp")  # the final checkpoint of step 6
    ck = StoredCheckpoint(region, "ddp", ckpt_id)
    assert ck.part_names() == ["dcp-metadata", "shard-00000", "shard-00001"]
    ck.verify(open_key_provider())
    # rank 1 placed its shard a second late: rank 0 still saw both when it wrote COMMIT
    (at_commit,) = [json.loads(line) for line in seen.read_text().splitlines()]
    shards = {f.split("-")[0] + "-" + f.split("-")[1] for f in at_commit["files"] if f.startswith("shard-")}
    assert shards == {"shard-00000", "shard-00001"}, at_commit

    # 2 -> 1: one process (no process group) restores what two ranks wrote, resharded by DCP
    stored: dict[str, torch.Tensor] = {}
    for part, tensors in ck.load_tensors(open_key_provider()).items():
        if part.startswith("shard-"):
            stored.update({name.split("@")[0]: t for name, t in tensors.items()})
    mod = _example_module()
    model = mod.CharMLP()  # type: ignore[attr-defined]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    with Session("ddp", GCP, watchers={}) as s:
        s.register(model=model, optimizer=opt)
        assert s.restore() == 6
    for name, value in model.state_dict().items():
        assert torch.equal(value, stored[f"model.{name}"]), name
    assert torch.equal(
        opt.state_dict()["state"][0]["exp_avg"], stored["optimizer.state.embed.weight.exp_avg"]
    )

    # a missing shard, then an altered one: refused, one line naming the shard
    shard1 = next(region.root.glob(f"checkpoints/ddp/{ckpt_id}/shard-00001-*.enc"))
    saved = shard1.read_bytes()
    for damage, expected in ((b"", "part shard-00001 is missing"), (b"flip", "shard-00001 does not match")):
        if damage:
            shard1.write_bytes(saved[:100] + bytes([saved[100] ^ 1]) + saved[101:])
        else:
            shard1.unlink()
        with pytest.raises(IntegrityError) as err, Session("ddp", GCP, watchers={}) as s:
            s.register(model=mod.CharMLP(), optimizer=opt)  # type: ignore[attr-defined]
            s.restore()
        assert expected in str(err.value) and "\n" not in str(err.value), err.value


def _wait_for_step(
    backend: LocalProcessBackend, job: str, location: str, step: int, timeout: float = 300.0
) -> None:
    t0 = time.monotonic()
    while (info := backend.status(job)) is None or info.location != location or not info.alive:
        assert time.monotonic() - t0 < timeout, "not started"
        time.sleep(0.05)
    while (backend.progress(job) or 0) < step:
        info = backend.status(job)
        assert info is None or info.alive, f"run exited early: {backend.result(job)}"
        assert time.monotonic() - t0 < timeout, "no progress"
        time.sleep(0.05)


def test_sigterm_under_spotshift_run_stops_both_ranks_and_resumes_bitwise(spotshift_home: Path) -> None:
    steps = 30
    command = " ".join([*TORCHRUN, str(EXAMPLE), "--steps", str(steps), "--step-seconds", "0.25"])
    declare_tiny_job(spotshift_home, name="ddp", total_steps=steps, every=10, command=command)
    env = _env()
    reference = subprocess.run(
        [*CLI, "run", "ddp", "--location", WEST, "--json"], env=env, capture_output=True
    )
    assert reference.returncode == 0, reference.stderr.decode()[-3000:]
    ref = json.loads(reference.stdout)
    assert ref["status"] == "completed" and ref["checkpoint"]["step"] == steps, ref

    proc = subprocess.Popen(
        [*CLI, "run", "ddp", "--location", GCP, "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for_step(LocalProcessBackend(), "ddp", GCP, 12)
        proc.send_signal(signal.SIGTERM)  # what the cloud sends the VM's processes
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()[-3000:]
    stopped = json.loads(out)
    assert stopped["status"] == "preempted" and stopped["notice"]["kind"] == "sigterm", stopped
    step = stopped["step"]
    assert 12 <= step < steps and stopped["checkpoint"]["step"] == step
    for rank in (0, 1):  # the notice reached both ranks: each stopped at that step after the commit
        assert f"rank {rank}: stopping at step {step}: checkpoint committed".encode() in err
    ck = StoredCheckpoint(open_store(region_store_url(GCP)), "ddp", stopped["checkpoint"]["checkpoint_id"])
    assert (
        ck.part_names() == ["dcp-metadata", "shard-00000", "shard-00001"] and ck.meta["kind"] == "emergency"
    )

    resumed = subprocess.run([*CLI, "run", "ddp", "--location", GCP, "--json"], env=env, capture_output=True)
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    done = json.loads(resumed.stdout)
    assert done["status"] == "completed" and done["resumed_from"]["step"] == step, done
    assert done["checkpoint"]["content_hash"] == ref["checkpoint"]["content_hash"], (
        "not bitwise after SIGTERM"
    )


def _full(chunks: dict[str, torch.Tensor], fqn: str) -> torch.Tensor:
    """The tensor ``fqn`` put together from its stored chunks (``fqn@offset``, FSDP shards on dim 0)."""
    found = sorted(
        (
            (int(name.split("@")[1].split(",")[0]), t)
            for name, t in chunks.items()
            if name.split("@")[0] == fqn
        ),
        key=lambda item: item[0],
    )
    return torch.cat([t for _, t in found])


def test_fsdp_sigterm_resumes_bitwise_and_reshards_to_one_and_three_ranks(spotshift_home: Path) -> None:
    """FSDP2 (``fully_shard``) under ``spotshift run JOB -- torchrun ...``: SIGTERM stops both ranks
    after the emergency checkpoint committed, each rank's shard holds its half of every parameter and
    AdamW moment, the resumed run ends bitwise where an uninterrupted one does, and DCP reshards the
    two halves: one plain process (2 -> 1) and three FSDP ranks (2 -> 3) restore the full state."""
    steps = 16
    declare_tiny_job(spotshift_home, name="fsdp", total_steps=steps, every=5)
    command = ["--", *TORCHRUN, str(FSDP_EXAMPLE), "--steps", str(steps)]
    paced = [*command, "--step-seconds", "0.2"]  # time to send SIGTERM mid-run (pacing changes no bits)
    env = _env()
    reference = subprocess.run(
        [*CLI, "run", "fsdp", "--location", WEST, "--json", *command], env=env, capture_output=True
    )
    assert reference.returncode == 0, reference.stderr.decode()[-3000:]
    ref = json.loads(reference.stdout)
    assert ref["status"] == "completed" and ref["checkpoint"]["step"] == steps, ref

    proc = subprocess.Popen(
        [*CLI, "run", "fsdp", "--location", GCP, "--json", *paced],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for_step(LocalProcessBackend(), "fsdp", GCP, 6)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()[-3000:]
    stopped = json.loads(out)
    assert stopped["status"] == "preempted" and stopped["notice"]["kind"] == "sigterm", stopped
    step = stopped["step"]
    assert 6 <= step < steps and stopped["checkpoint"]["step"] == step, stopped
    for rank in (0, 1):
        assert f"rank {rank}: stopping at step {step}: checkpoint committed".encode() in err
    region = open_store(region_store_url(GCP))
    ck = StoredCheckpoint(region, "fsdp", stopped["checkpoint"]["checkpoint_id"])
    assert ck.meta["kind"] == "emergency" and ck.meta["state"]["world_size"] == 2
    shards = {p: t for p, t in ck.load_tensors(open_key_provider()).items() if p.startswith("shard-")}
    # sharded, not replicated: rank 0 holds rows 0-127 of the embedding and its moments, rank 1 128-255
    for name in ("model.embed.weight", "optimizer.state.embed.weight.exp_avg"):
        assert f"{name}@0,0" in shards["shard-00000"] and f"{name}@128,0" in shards["shard-00001"], name
        assert f"{name}@128,0" not in shards["shard-00000"] and f"{name}@0,0" not in shards["shard-00001"]

    resumed = subprocess.run(
        [*CLI, "run", "fsdp", "--location", GCP, "--json", *command], env=env, capture_output=True
    )
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    done = json.loads(resumed.stdout)
    assert done["status"] == "completed" and done["resumed_from"]["step"] == step, done
    assert done["checkpoint"]["content_hash"] == ref["checkpoint"]["content_hash"], (
        "FSDP run not bitwise after SIGTERM"
    )

    # 2 -> 1: a plain model in this process takes the full tensors back from the two ranks' halves
    final = StoredCheckpoint(region, "fsdp", done["checkpoint"]["checkpoint_id"])
    chunks: dict[str, torch.Tensor] = {}
    for part, tensors in final.load_tensors(open_key_provider()).items():
        if part.startswith("shard-"):
            chunks.update(tensors)
    model = _example_module().CharMLP()  # type: ignore[attr-defined]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    with Session("fsdp", GCP, watchers={}) as s:
        s.register(model=model, optimizer=opt)
        assert s.restore() == steps
    for name, value in model.state_dict().items():
        assert torch.equal(value, _full(chunks, f"model.{name}")), name
    assert torch.equal(
        opt.state_dict()["state"][0]["exp_avg_sq"], _full(chunks, "optimizer.state.embed.weight.exp_avg_sq")
    )

    # 2 -> 3: three FSDP ranks (uneven shards: 86, 86, 84 rows) restore the same full state
    out = spotshift_home / "three.pt"
    three = subprocess.run(
        [*TORCHRUN[:-1], "3", str(HERE / "fsdp_reshard_driver.py")],
        env=_env(SPOTSHIFT_JOB="fsdp", SPOTSHIFT_LOCATION=GCP, FSDP_TEST_OUT=str(out)),
        capture_output=True,
        timeout=300,
    )
    assert three.returncode == 0, three.stderr.decode()[-3000:]
    got = torch.load(out, weights_only=True)
    assert got["step"] == steps and got["rows"] == 86, {k: got[k] for k in ("step", "rows")}
    for name, value in got["model"].items():
        assert torch.equal(value, _full(chunks, f"model.{name}")), name
    for fqn, moments in got["optimizer"].items():
        for moment in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(moments[moment], _full(chunks, f"optimizer.state.{fqn}.{moment}")), fqn
