"""``ckpt prune``: keep the newest N, never latest, never a base an undelivered delta needs."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from spotshift.checkpoint.format import latest_key, list_checkpoints, open_checkpoint, write_checkpoint
from spotshift.checkpoint.keys import LocalKeyProvider
from spotshift.checkpoint.migrate import DELTA_FORMAT, DELTA_MAGIC
from spotshift.checkpoint.prune import prune_checkpoints
from spotshift.cli import main
from spotshift.sync.store import LocalChunkStore
from tests.unit.checkpoint.test_format import payload

JOB = "job-a"


@pytest.fixture
def five(tmp_path: Path, spotshift_home: Path) -> tuple[LocalChunkStore, LocalKeyProvider, list[str]]:
    store, keys = LocalChunkStore(tmp_path / "store"), LocalKeyProvider(create=True)
    ids = [write_checkpoint(store, payload(step=s), keys).checkpoint_id for s in (100, 200, 300, 400, 500)]
    return store, keys, ids


def fake_delta(base_id: str) -> bytes:
    """The plaintext head of an undelivered delta naming ``base_id`` (prune reads only the envelope)."""
    env = json.dumps(
        {"format": DELTA_FORMAT, "job": JOB, "checkpoint_id": "s0000000600-x", "base_id": base_id}
    )
    return DELTA_MAGIC + struct.pack("<I", len(env)) + env.encode() + b"\x00" * 64


def test_keeps_the_newest_n_and_every_kept_checkpoint_still_verifies(five, capsys) -> None:  # noqa: ANN001
    store, keys, ids = five
    assert main(["ckpt", "prune", f"{store.url}/checkpoints/{JOB}", "--keep", "2", "--dry-run"]) == 0
    assert "would delete 3 checkpoint(s)" in capsys.readouterr().out
    assert list_checkpoints(store, JOB) == ids
    r = prune_checkpoints(store, JOB, keep=2)
    assert r.deleted == ids[:3] and r.kept == ids[3:] and r.bytes_freed > 0
    assert list_checkpoints(store, JOB) == ids[3:]
    assert not list(store.list_keys(f"checkpoints/{JOB}/{ids[0]}/"))  # parts gone too, not just COMMIT
    for c in ids[3:]:
        open_checkpoint(store, JOB, c).verify(keys)
    assert main(["ckpt", "prune", f"{store.url}/checkpoints/{JOB}", "--keep", "0"]) == 2


def test_never_deletes_what_latest_names(five) -> None:  # noqa: ANN001
    store, _, ids = five
    # a rollback left latest on an older checkpoint than the newest committed one
    store.put_bytes(latest_key(JOB), json.dumps({"checkpoint_id": ids[1], "step": 200}).encode())
    r = prune_checkpoints(store, JOB, keep=1)
    assert set(r.kept) == {ids[1], ids[4]} and ids[1] not in r.deleted


def test_never_deletes_the_base_of_an_undelivered_delta(five) -> None:  # noqa: ANN001
    store, _, ids = five
    store.put_bytes(f"checkpoints/{JOB}/incoming/s0000000600-x.ab.delta", fake_delta(ids[0]))
    r = prune_checkpoints(store, JOB, keep=1)
    assert set(r.kept) == {ids[0], ids[4]} and r.delta_bases
    # a delta whose envelope cannot be read could need any base: nothing is deleted
    store.put_bytes(f"checkpoints/{JOB}/incoming/garbled.delta", b"not a delta")
    r = prune_checkpoints(store, JOB, keep=1)
    assert r.blocked_by and "garbled.delta" in r.blocked_by and not r.deleted
    assert list_checkpoints(store, JOB) == [ids[0], ids[4]]


def test_uncommitted_checkpoints_are_left_to_their_writer(five) -> None:  # noqa: ANN001
    store, _, ids = five
    store.put_bytes(f"checkpoints/{JOB}/s0000000050-deadbeefdeadbeef/model-x.enc", b"half written")
    prune_checkpoints(store, JOB, keep=1)
    assert store.exists(f"checkpoints/{JOB}/s0000000050-deadbeefdeadbeef/model-x.enc")
