"""Emergency checkpoints streamed into S3 (moto server over HTTP) and GCS (the emulator over HTTP):
one encryption, the region copy committed and verifiable, nothing committed by a failed or killed writer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from spotshift.checkpoint.format import CheckpointPayload, StoredCheckpoint, open_checkpoint
from spotshift.checkpoint.keys import LocalKeyProvider
from spotshift.checkpoint.streaming import write_streaming
from spotshift.checkpoint.tiered import TieredCheckpointer
from spotshift.errors import NotFoundError
from spotshift.sync.store import LocalChunkStore
from spotshift.sync.store_gcs import GCSChunkStore
from spotshift.sync.store_s3 import S3ChunkStore

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[3]


def _payload(mib: int, step: int = 7) -> CheckpointPayload:
    rng = np.random.default_rng(step)
    n = mib * MiB // 4
    return CheckpointPayload(
        job="emerg",
        step=step,
        tokens=step * 10,
        kind="emergency",
        location="gcp/us-central1",
        state={"rng": [1, 2, 3]},
        parts={
            "model": {"w": rng.standard_normal(n // 3, dtype=np.float32)},
            "optim": {"m": rng.standard_normal(n - n // 3, dtype=np.float32)},
        },
    )


def _commits(store: Any) -> list[str]:
    return [k for k in store.list_keys("checkpoints/") if k.endswith("/COMMIT")]


def _save(region: Any, tmp_path: Path) -> tuple[Any, Any, LocalKeyProvider]:
    keys = LocalKeyProvider(tmp_path / "kek.key", create=True)
    tiers = TieredCheckpointer(job="emerg", local_dir=tmp_path / "local", region_store=region, keys=keys)
    timings: dict[str, float] = {}
    try:
        local_ref, event = tiers.save(_payload(12), sync=True, timings=timings)
    finally:
        tiers.close()
    assert event is not None and event.error is None and event.tier == "region"
    assert "hash_s" in timings and timings["upload_wait_s"] >= 0.0  # the streaming path, not upload-after
    return local_ref, event, keys


def test_s3_emergency_checkpoint_streams_multipart_and_verifies(s3_env: str, tmp_path: Path) -> None:
    region = S3ChunkStore(s3_env, "region", part_size=5 * MiB)
    local_ref, event, keys = _save(region, tmp_path)
    ck = StoredCheckpoint(region, "emerg", local_ref.checkpoint_id)
    ck.verify(keys)  # sizes, hashes, key, seal, COMMIT MAC, content hash, every segment
    local = StoredCheckpoint(LocalChunkStore(tmp_path / "local"), "emerg", local_ref.checkpoint_id)
    assert local.content_hash == ck.content_hash == event.ref.content_hash
    assert ck.stored_bytes == local.stored_bytes > 12 * MiB
    # the optim part (8 MiB + GCM tags) went up as a multipart upload: its ETag says how many parts
    key = region.object_name(f"checkpoints/emerg/{ck.checkpoint_id}/{ck.meta['parts']['optim']['key']}")
    assert region.client.head_object(Bucket=s3_env, Key=key)["ETag"].strip('"').endswith("-2")


def test_gcs_emergency_checkpoint_streams_resumable_and_verifies(gcs_env: str, tmp_path: Path) -> None:
    region = GCSChunkStore(gcs_env, f"region-{os.getpid()}-{time.monotonic_ns()}", chunk_size=1 * MiB)
    local_ref, _, keys = _save(region, tmp_path)
    StoredCheckpoint(region, "emerg", local_ref.checkpoint_id).verify(keys)
    assert open_checkpoint(region, "emerg").checkpoint_id == local_ref.checkpoint_id  # latest points at it


def test_a_failed_part_upload_commits_nothing_and_leaves_nothing(
    s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    region = S3ChunkStore(s3_env, "failing", part_size=5 * MiB)
    real, calls = region.client.upload_part, []

    def flaky(**kw: Any) -> Any:
        calls.append(kw["PartNumber"])
        if len(calls) == 3:
            raise ConnectionResetError("the network dropped")
        return real(**kw)

    monkeypatch.setattr(region.client, "upload_part", flaky)
    keys = LocalKeyProvider(tmp_path / "kek.key", create=True)
    with pytest.raises(ConnectionResetError):
        write_streaming(LocalChunkStore(tmp_path / "local"), region, _payload(12), keys)
    assert _commits(region) == [] and list(region.list_keys("")) == []
    assert region.client.list_multipart_uploads(Bucket=s3_env).get("Uploads", []) == []
    assert _commits(LocalChunkStore(tmp_path / "local")) == []


WRITER = """
import sys
sys.path.insert(0, {repo!r})
from tests.unit.checkpoint.test_stream_upload import _payload
from spotshift.checkpoint.keys import LocalKeyProvider
from spotshift.checkpoint.streaming import write_streaming
from spotshift.sync.store import LocalChunkStore
from spotshift.sync.store_s3 import S3ChunkStore

region = S3ChunkStore({bucket!r}, "killed", part_size=5 * 1024 * 1024)
keys = LocalKeyProvider({kek!r}, create=True)
write_streaming(LocalChunkStore({local!r}), region, _payload(64), keys)
print("COMMITTED")
"""


def test_a_killed_writer_leaves_no_committed_partial(s3_env: str, tmp_path: Path) -> None:
    region = S3ChunkStore(s3_env, "killed")
    script = WRITER.format(
        repo=str(REPO), bucket=s3_env, kek=str(tmp_path / "kek.key"), local=str(tmp_path / "l")
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ}, stdout=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            uploads = region.client.list_multipart_uploads(Bucket=s3_env).get("Uploads", [])
            if uploads and region.client.list_parts(
                Bucket=s3_env, Key=uploads[0]["Key"], UploadId=uploads[0]["UploadId"]
            ).get("Parts"):
                break  # mid-upload: a part is in, the object is not finished
            time.sleep(0.02)
        assert proc.poll() is None, "the writer finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert _commits(region) == []
    with pytest.raises(NotFoundError):
        open_checkpoint(region, "emerg")
