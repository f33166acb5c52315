"""Checkpoint format: round trips, identity, and refusal of every kind of damage with a clear one-line error."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
from pathlib import Path

import blake3
import numpy as np
import pytest
import torch

from spotshift.checkpoint import crypto
from spotshift.checkpoint.format import (
    CheckpointPayload,
    StoredCheckpoint,
    latest_checkpoint,
    list_checkpoints,
    open_checkpoint,
    parse_checkpoint_path,
    write_checkpoint,
)
from spotshift.checkpoint.keys import LocalKeyProvider, open_key_provider
from spotshift.errors import ConfigError, IntegrityError, NotFoundError
from spotshift.sync.store import LocalChunkStore


def payload(step: int = 7, scale: float = 1.0, kind: str = "periodic") -> CheckpointPayload:
    g = torch.Generator().manual_seed(step)
    return CheckpointPayload(
        job="job-a",
        step=step,
        tokens=step * 128,
        kind=kind,
        location="gcp/us-central1",
        state={"rng": {"python": [3, [1, 2, 3], None]}, "data_position": {"next_step": step + 1}},
        parts={
            "model": {
                "w": torch.randn(64, 48, generator=g) * scale,
                "b": torch.zeros(48),
                "half": torch.randn(5, generator=g).to(torch.bfloat16),
                "scalar": torch.tensor(2.5),
                "empty": torch.zeros(0, 3),
            },
            "optim": {"exp_avg/w": torch.randn(64, 48, generator=g), "step/w": torch.tensor(float(step))},
        },
    )


@pytest.fixture
def keys(spotshift_home: Path) -> LocalKeyProvider:
    return LocalKeyProvider(create=True)


@pytest.fixture
def store(tmp_path: Path) -> LocalChunkStore:
    return LocalChunkStore(tmp_path / "store")


def committed(store: LocalChunkStore, keys: LocalKeyProvider, **kw: object) -> StoredCheckpoint:
    # small segments so the tests exercise multi-segment streams and their boundaries
    ref = write_checkpoint(store, payload(**kw), keys, segment_bytes=4096)  # type: ignore[arg-type]
    return StoredCheckpoint(store, ref.job, ref.checkpoint_id)


def test_round_trip_all_dtypes_and_safetensors_compatible(
    store: LocalChunkStore, keys: LocalKeyProvider
) -> None:
    from safetensors.torch import load

    p = payload()
    ck = committed(store, keys)
    loaded = ck.load_tensors(keys)
    for part, tensors in p.parts.items():
        assert set(loaded[part]) == set(tensors)
        for name, t in tensors.items():
            assert loaded[part][name].dtype == t.dtype and torch.equal(loaded[part][name], t), name
    # once decrypted, a part is a plain safetensors file
    plain = ck.read_parts(keys)
    assert torch.equal(load(plain["model"])["w"], p.parts["model"]["w"])
    assert ck.verify(keys)["ok"] is True
    assert ck.meta["versions"]["torch"] == torch.__version__


def test_identity_is_content_not_encryption(
    store: LocalChunkStore, keys: LocalKeyProvider, tmp_path: Path
) -> None:
    a = committed(store, keys)
    other = LocalChunkStore(tmp_path / "other")
    b = committed(other, keys)
    assert a.checkpoint_id == b.checkpoint_id and a.content_hash == b.content_hash
    assert a.checkpoint_id.startswith("s0000000007-")
    # fresh data key each time: the stored bytes share nothing
    key_a = a.prefix + a.meta["parts"]["model"]["key"]
    key_b = b.prefix + b.meta["parts"]["model"]["key"]
    assert store.get_bytes(key_a) != other.get_bytes(key_b)
    assert a.meta["encryption"]["wrapped_key"] != b.meta["encryption"]["wrapped_key"]
    assert committed(store, keys, scale=2.0).checkpoint_id != a.checkpoint_id


def test_latest_pointer_moves_forward_only(store: LocalChunkStore, keys: LocalKeyProvider) -> None:
    c10 = committed(store, keys, step=10)
    c5 = committed(store, keys, step=5)
    assert list_checkpoints(store, "job-a") == [c5.checkpoint_id, c10.checkpoint_id]
    assert latest_checkpoint(store, "job-a") == c10.checkpoint_id
    assert open_checkpoint(store, "job-a").step == 10
    with pytest.raises(NotFoundError, match="no committed checkpoint of job 'nope'"):
        open_checkpoint(store, "nope")


def test_uncommitted_parts_do_not_count(store: LocalChunkStore, keys: LocalKeyProvider) -> None:
    ck = committed(store, keys)
    store.delete(ck.prefix + "COMMIT")  # a crash before the marker: parts and metadata, no commit
    assert list_checkpoints(store, "job-a") == []
    with pytest.raises(IntegrityError, match=f"checkpoint job-a/{ck.checkpoint_id} .*not committed"):
        StoredCheckpoint(store, "job-a", ck.checkpoint_id)


def _part_path(store: LocalChunkStore, ck: StoredCheckpoint, part: str = "model") -> Path:
    return store.root / (ck.prefix + ck.meta["parts"][part]["key"])


def test_flipped_byte_refused_before_decryption(store: LocalChunkStore, keys: LocalKeyProvider) -> None:
    ck = committed(store, keys)
    p = _part_path(store, ck)
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as err:
        StoredCheckpoint(store, "job-a", ck.checkpoint_id).verify(keys)
    msg = str(err.value)
    assert f"checkpoint job-a/{ck.checkpoint_id}" in msg and "part model does not match its hash" in msg
    assert "\n" not in msg


def test_flipped_byte_with_forged_hash_still_refused(store: LocalChunkStore, keys: LocalKeyProvider) -> None:
    """An attacker who also rewrites the stored hash (and the commit) meets the seal and the GCM tags."""
    ck = committed(store, keys)
    p = _part_path(store, ck)
    data = bytearray(p.read_bytes())
    data[100] ^= 0x80
    p.write_bytes(bytes(data))
    meta = dict(ck.meta)
    meta["parts"]["model"]["stored_hash"] = blake3.blake3(bytes(data)).hexdigest()
    _rewrite_meta(store, ck, meta)
    with pytest.raises(IntegrityError, match="metadata does not match its seal"):
        StoredCheckpoint(store, "job-a", ck.checkpoint_id).verify(keys)


def _rewrite_meta(store: LocalChunkStore, ck: StoredCheckpoint, meta: dict) -> None:
    raw = json.dumps(meta, indent=1, sort_keys=True).encode()
    store.put_bytes(ck.prefix + ck.commit["meta_key"], raw)
    # the best a forger without the key can do: an old-style marker with an unkeyed hash
    commit = {k: v for k, v in ck.commit.items() if k not in ("mac", "mac_alg")}
    commit["meta_hash"] = blake3.blake3(raw).hexdigest()
    store.put_bytes(ck.prefix + "COMMIT", json.dumps(commit).encode())


def test_tampered_metadata_refused(store: LocalChunkStore, keys: LocalKeyProvider) -> None:
    ck = committed(store, keys)
    meta = json.loads(ck.meta_bytes)
    meta["tokens"] = 1  # same step, forged progress
    raw = json.dumps(meta).encode()
    store.put_bytes(ck.prefix + ck.commit["meta_key"], raw)
    with pytest.raises(IntegrityError, match="metadata does not match its seal"):
        StoredCheckpoint(store, "job-a", ck.checkpoint_id).verify(keys)
    # the keyed marker does not fit re-serialized genuine metadata either (it binds the exact bytes)
    store.put_bytes(ck.prefix + ck.commit["meta_key"], json.dumps(ck.meta).encode())
    with pytest.raises(IntegrityError, match="commit marker does not authenticate"):
        StoredCheckpoint(store, "job-a", ck.checkpoint_id).verify(keys)
    _rewrite_meta(store, ck, meta)  # a forger who also writes an (unkeyed, old-style) commit marker
    with pytest.raises(IntegrityError, match="metadata does not match its seal"):
        StoredCheckpoint(store, "job-a", ck.checkpoint_id).verify(keys)


def test_markers_from_before_the_mac_still_read(store: LocalChunkStore, keys: LocalKeyProvider) -> None:
    """A checkpoint committed with an unkeyed ``meta_hash`` marker verifies (its seal authenticates it),
    is refused when the metadata no longer matches that hash, and gets a keyed marker when copied."""
    from spotshift.checkpoint.tiered import copy_checkpoint

    ck = committed(store, keys)
    legacy = {k: ck.commit[k] for k in ("checkpoint_id", "meta_key", "step", "committed_at")}
    legacy["meta_hash"] = blake3.blake3(ck.meta_bytes).hexdigest()
    store.put_bytes(ck.prefix + "COMMIT", json.dumps(legacy).encode())
    assert StoredCheckpoint(store, "job-a", ck.checkpoint_id).verify(keys)["ok"]
    other = LocalChunkStore(store.root.parent / "copy")
    copy_checkpoint(store, other, "job-a", ck.checkpoint_id, keys)
    copied = StoredCheckpoint(other, "job-a", ck.checkpoint_id)
    assert "mac" in copied.commit and "meta_hash" not in copied.commit and copied.verify(keys)["ok"]
    store.put_bytes(ck.prefix + ck.commit["meta_key"], ck.meta_bytes + b" ")
    with pytest.raises(IntegrityError, match="metadata does not match the hash in COMMIT"):
        StoredCheckpoint(store, "job-a", ck.checkpoint_id)


def test_swapped_part_refused(store: LocalChunkStore, keys: LocalKeyProvider) -> None:
    a = committed(store, keys, step=1)
    b = committed(store, keys, step=2)
    # b's model part replaced by a's (same size: same tensor shapes)
    _part_path(store, b).write_bytes(_part_path(store, a).read_bytes())
    with pytest.raises(IntegrityError, match=f"{b.checkpoint_id}.*part model does not match its hash"):
        StoredCheckpoint(store, "job-a", b.checkpoint_id).verify(keys)
    # swapping the optimizer part into the model part's name within one checkpoint
    c = committed(store, keys, step=3)
    mp, op = _part_path(store, c, "model"), _part_path(store, c, "optim")
    mp.write_bytes(op.read_bytes())
    with pytest.raises(IntegrityError, match=f"{c.checkpoint_id}.*part model"):
        StoredCheckpoint(store, "job-a", c.checkpoint_id).verify(keys)


def test_truncated_part_refused(store: LocalChunkStore, keys: LocalKeyProvider) -> None:
    ck = committed(store, keys)
    p = _part_path(store, ck)
    full = p.read_bytes()
    p.write_bytes(full[:-1000])
    with pytest.raises(IntegrityError, match=r"part model truncated \(\d+ of \d+ bytes\)"):
        StoredCheckpoint(store, "job-a", ck.checkpoint_id).verify(keys)


def test_truncation_at_segment_boundary_caught_by_final_flag(
    store: LocalChunkStore, keys: LocalKeyProvider
) -> None:
    ck = committed(store, keys)
    pm = ck.meta["parts"]["model"]
    seg = ck.meta["encryption"]["segment_bytes"]
    assert pm["plain_bytes"] > 2 * seg
    p = _part_path(store, ck)
    cut = crypto.HEADER_BYTES + 2 * (seg + crypto.TAG_BYTES)  # drop everything after two whole segments
    key = ck.data_key(keys)
    with open(p, "rb") as f, pytest.raises(IntegrityError, match="segment 1 does not authenticate"):
        import io

        stream = io.BytesIO(f.read()[:cut])
        list(
            crypto.iter_decrypt(
                stream,
                key,
                part_index=pm["index"],
                part_name="model",
                segment_bytes=seg,
                plain_bytes=2 * seg,
                what="x",
            )
        )


def test_wrong_key_refused(store: LocalChunkStore, keys: LocalKeyProvider, tmp_path: Path) -> None:
    ck = committed(store, keys)
    other = LocalKeyProvider(tmp_path / "other.key", create=True)
    with pytest.raises(IntegrityError, match=f"checkpoint job-a/{ck.checkpoint_id} .*wrong key"):
        ck.verify(other)
    # same key id claimed but the key differs: the unwrap itself refuses
    meta = dict(ck.meta)
    meta["encryption"] = dict(meta["encryption"], kek_id=other.key_id)
    _rewrite_meta(store, ck, meta)
    with pytest.raises(IntegrityError, match="does not unwrap with"):
        StoredCheckpoint(store, "job-a", ck.checkpoint_id).verify(other)


def test_wrapped_key_from_another_checkpoint_refused(store: LocalChunkStore, keys: LocalKeyProvider) -> None:
    a = committed(store, keys, step=1)
    b = committed(store, keys, step=2)
    meta = dict(b.meta)
    meta["encryption"] = dict(meta["encryption"], wrapped_key=a.meta["encryption"]["wrapped_key"])
    _rewrite_meta(store, b, meta)
    with pytest.raises(IntegrityError, match=f"{b.checkpoint_id}.*does not unwrap"):
        StoredCheckpoint(store, "job-a", b.checkpoint_id).verify(keys)


def test_key_material_never_in_errors_or_logs(
    store: LocalChunkStore, keys: LocalKeyProvider, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ck = committed(store, keys)
    kek = keys.path.read_bytes()
    data_key = ck.data_key(keys)
    secrets_as_text = {
        s for k in (kek, data_key) for s in (k.hex(), base64.b64encode(k).decode(), repr(k), k.hex().upper())
    }
    messages = []
    with pytest.raises(IntegrityError, match="wrong key") as wrong:  # a wrong key must be refused
        ck.verify(LocalKeyProvider(tmp_path / "x.key", create=True))
    messages.append(str(wrong.value))
    p = _part_path(store, ck)
    data = bytearray(p.read_bytes())
    data[-5] ^= 1
    p.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as err:
        StoredCheckpoint(store, "job-a", ck.checkpoint_id).read_parts(keys, check_stored=False)
    messages.append(str(err.value))
    messages.append(repr(keys))
    text = "\n".join(messages) + caplog.text
    assert messages and not any(s in text for s in secrets_as_text)


def test_local_key_file_is_private(spotshift_home: Path) -> None:
    with pytest.raises(ConfigError, match="key file .*kek.key does not exist"):
        open_key_provider("local")  # a reader never creates the key
    assert not (spotshift_home / "keys").exists()
    kp = open_key_provider("local", create=True)
    assert isinstance(kp, LocalKeyProvider)
    assert stat.S_IMODE(kp.path.stat().st_mode) == 0o600
    assert kp.path.is_relative_to(spotshift_home)
    assert LocalKeyProvider().key_id == kp.key_id  # reused, not regenerated
    os.chmod(kp.path, 0o644)
    with pytest.raises(ConfigError, match="accessible by group/others"):
        LocalKeyProvider()
    with pytest.raises(ConfigError, match="unknown kind"):
        open_key_provider("vault:x")


def test_checkpoint_paths() -> None:
    assert parse_checkpoint_path("s3://b/pre/checkpoints/j/s0000000010-abcdef0123456789") == (
        "s3://b/pre",
        "j",
        "s0000000010-abcdef0123456789",
    )
    assert parse_checkpoint_path("gs://b/checkpoints/j/latest") == ("gs://b", "j", None)
    store, job, ckpt = parse_checkpoint_path("/x/y/checkpoints/j")
    assert store == "file:///x/y" and job == "j" and ckpt is None
    with pytest.raises(ConfigError, match="not a checkpoint path"):
        parse_checkpoint_path("/x/y/z")
    with pytest.raises(ConfigError, match="not a checkpoint id"):
        parse_checkpoint_path("/x/checkpoints/j/garbage")


def test_numpy_tensors_checkpoint(store: LocalChunkStore, keys: LocalKeyProvider) -> None:
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    p = CheckpointPayload(
        "j", 1, 1, "final", "aws/us-east-1", {}, {"model": {"a": arr, "m": np.array([True, False])}}
    )
    ref = write_checkpoint(store, p, keys)
    out = open_checkpoint(store, "j", ref.checkpoint_id).load_tensors(keys)["model"]
    assert out["a"].numpy().tolist() == arr.tolist() and out["m"].tolist() == [True, False]
    with pytest.raises(ConfigError, match="kind"):
        CheckpointPayload("j", 1, 1, "sometimes", "aws/us-east-1", {}, {"model": {}})
