"""Snapshot history and prune: keep N per dataset, mark and sweep, safe against a concurrent push.

The concurrent cases are made deterministic with a store that parks a writer at a chosen write
(an Event), so the interleaving is fixed, not timed.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from spotshift.cli import main
from spotshift.errors import ConfigError, IntegrityError
from spotshift.sync.archiver import push
from spotshift.sync.checker import verify
from spotshift.sync.locks import LOCKS_PREFIX, STALE_AFTER_S, LockedError, LockInfo, read_locks
from spotshift.sync.prune import list_snapshots, prune
from spotshift.sync.refs import manifest_key
from spotshift.sync.restorer import pull
from spotshift.sync.store import CHUNK_PREFIX, LocalChunkStore
from tests.unit.sync.conftest import SMALL, rand_bytes


def chunks(store: LocalChunkStore) -> set[str]:
    return set(store.list_keys(CHUNK_PREFIX))


def age(store: LocalChunkStore, prefix: str, seconds: float) -> None:
    """Make every object under ``prefix`` look ``seconds`` old (as if written long ago)."""
    t = time.time() - seconds
    for key in store.list_keys(prefix):
        os.utime(store.root / key, (t, t))


@pytest.fixture
def store(tmp_path: Path, spotshift_home: Path) -> LocalChunkStore:
    return LocalChunkStore(tmp_path / "store")


def three_snapshots(tmp_path: Path, store: LocalChunkStore) -> tuple[Path, list[str]]:
    """Dataset ``ds`` pushed three times (each push adds a file and drops the oldest one)."""
    src = tmp_path / "src"
    src.mkdir()
    roots = []
    for i in range(3):
        (src / f"f{i}.bin").write_bytes(rand_bytes(300_000, seed=i))
        if i:
            (src / f"f{i - 1}.bin").unlink()
        roots.append(push(src, store, "ds", params=SMALL).root)
    return src, roots


def test_snapshots_list_history_newest_first_with_latest_marked(
    tmp_path: Path, store: LocalChunkStore
) -> None:
    _, roots = three_snapshots(tmp_path, store)
    snaps = list_snapshots(store)
    assert [s.root for s in snaps] == roots[::-1]
    assert [s.latest for s in snaps] == [True, False, False]
    assert all(s.dataset == "ds" and s.files == 1 and s.bytes == 300_000 and s.manifest_bytes for s in snaps)


@pytest.mark.usefixtures("loose_chunks")
def test_prune_keeps_n_newest_and_frees_what_only_forgotten_snapshots_used(
    tmp_path: Path, store: LocalChunkStore, capsys: pytest.CaptureFixture[str]
) -> None:
    src, roots = three_snapshots(tmp_path, store)
    before = chunks(store)
    age(store, CHUNK_PREFIX, 2 * 86400)  # written two days ago: outside the default grace period
    r = prune(store, keep=2)
    assert [f["root"] for f in r.forgotten] == [roots[0]]
    assert r.manifests_deleted == [roots[0]] and not store.exists(manifest_key(roots[0]))
    assert r.chunks_deleted > 0 and chunks(store) < before
    # the kept snapshots are whole: verify reads every chunk, pull restores the latest bytes
    assert all(d.ok for d in verify(store).datasets)
    pull(store, tmp_path / "out", "ds")
    assert (tmp_path / "out" / "f2.bin").read_bytes() == (src / "f2.bin").read_bytes()
    assert [s.root for s in list_snapshots(store)] == roots[:0:-1]
    # the command line says the same; --keep 0 is refused: the latest is always kept
    assert main(["sync", "prune", store.url, "--keep", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["forgotten"][0]["root"] == roots[1]
    assert main(["sync", "prune", store.url, "--keep", "0"]) == 2
    assert "--keep must be >= 1" in capsys.readouterr().err


def test_grace_period_keeps_young_unreferenced_chunks(tmp_path: Path, store: LocalChunkStore) -> None:
    _, roots = three_snapshots(tmp_path, store)
    orphan = "ab" * 16  # what a writer that takes no lock (or a push that died) left a moment ago
    store.put_chunk(orphan, b"x" * 100)
    r = prune(store, keep=1)  # default grace: 24 h; everything was written just now
    assert r.chunks_deleted == 0 and store.has_chunk(orphan) and r.young_kept > 0
    assert len(r.forgotten) == 2  # history is forgotten at once, its chunks wait for the grace period
    r = prune(store, keep=1, grace_s=0)
    assert r.chunks_deleted > 0 and not store.has_chunk(orphan)
    assert all(d.ok for d in verify(store).datasets)


@pytest.mark.usefixtures("loose_chunks")
def test_dry_run_deletes_nothing(tmp_path: Path, store: LocalChunkStore) -> None:
    three_snapshots(tmp_path, store)
    before = set(store.list_keys(""))
    r = prune(store, keep=1, grace_s=0, dry_run=True)
    assert r.chunks_deleted > 0 and len(r.manifests_deleted) == 2
    assert set(store.list_keys("")) == before


class ParkingStore(LocalChunkStore):
    """A local store that parks the first write of a key starting with ``park_prefix`` until released."""

    def __init__(self, root: Path, park_prefix: str, op: str = "put"):
        super().__init__(root)
        self.park_prefix, self.op = park_prefix, op
        self.parked, self.release = threading.Event(), threading.Event()

    def _maybe_park(self, key: str, op: str) -> None:
        if op == self.op and key.startswith(self.park_prefix) and not self.parked.is_set():
            self.parked.set()
            assert self.release.wait(60), "test never released the parked writer"

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        self._maybe_park(key, "put")
        return super().put_bytes(key, data, if_absent=if_absent)

    def delete(self, key: str) -> None:
        self._maybe_park(key, "delete")
        super().delete(key)


@pytest.mark.usefixtures("loose_chunks")
def test_prune_refuses_while_a_push_holds_chunks_it_has_not_committed(
    tmp_path: Path, spotshift_home: Path
) -> None:
    # The race a mark-and-sweep must close: garbage chunk G lies in the store (from a forgotten
    # snapshot); a push finds G present, so it does not send it, and parks before writing the
    # manifest that names G. A prune now must not delete G.
    root = tmp_path / "store"
    src, _ = three_snapshots(tmp_path, LocalChunkStore(root))
    age(LocalChunkStore(root), "", 2 * 86400)
    (src / "f0.bin").write_bytes(rand_bytes(300_000, seed=0))  # f0 comes back: its chunks are garbage-to-be
    store = ParkingStore(root, "manifests/")
    result: dict[str, object] = {}
    pusher = threading.Thread(target=lambda: result.update(stats=push(src, store, "ds", params=SMALL)))
    pusher.start()
    assert store.parked.wait(60)
    before = chunks(store)
    with pytest.raises(LockedError, match="in use by 1 operation.*sync push ds"):
        prune(LocalChunkStore(root), keep=1, grace_s=0)
    assert chunks(store) == before  # nothing deleted
    store.release.set()
    pusher.join(60)
    assert result["stats"].chunks_sent == 0  # f0's chunks were reused, not resent  # type: ignore[union-attr]
    # after the push the same prune runs, and every snapshot it keeps is whole
    prune(LocalChunkStore(root), keep=1, grace_s=0)
    report = verify(LocalChunkStore(root))
    assert all(d.ok for d in report.datasets), report.to_dict()
    assert not list(LocalChunkStore(root).list_keys(LOCKS_PREFIX))  # every lock released


@pytest.mark.usefixtures("loose_chunks")
def test_push_refuses_while_a_prune_is_sweeping(tmp_path: Path, spotshift_home: Path) -> None:
    root = tmp_path / "store"
    src, _ = three_snapshots(tmp_path, LocalChunkStore(root))
    store = ParkingStore(root, CHUNK_PREFIX, op="delete")  # prune parks at its first chunk delete
    errors: list[BaseException] = []

    def run_prune() -> None:
        try:
            prune(store, keep=1, grace_s=0)
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            errors.append(exc)

    pruner = threading.Thread(target=run_prune)
    pruner.start()
    assert store.parked.wait(60)
    (src / "new.bin").write_bytes(rand_bytes(100_000, seed=9))
    with pytest.raises(LockedError, match="is being pruned by sync prune"):
        push(src, LocalChunkStore(root), "ds", params=SMALL, lock_wait_s=0)
    store.release.set()
    pruner.join(60)
    assert not errors
    push(src, LocalChunkStore(root), "ds", params=SMALL, lock_wait_s=0)
    assert all(d.ok for d in verify(LocalChunkStore(root)).datasets)


def test_stale_locks_do_not_block_and_prune_removes_them(tmp_path: Path, store: LocalChunkStore) -> None:
    three_snapshots(tmp_path, store)
    now = time.time()
    dead_here = LockInfo("shared", os.uname().nodename, 2**22 + 12345, "sync push ds", now, now)
    silent_elsewhere = LockInfo(
        "shared", "other-host", 1, "sync push ds", now - 7200, now - STALE_AFTER_S - 1
    )
    for i, lock in enumerate((dead_here, silent_elsewhere)):
        store.put_bytes(f"{LOCKS_PREFIX}shared-{i}.json", json.dumps(lock.__dict__).encode())
    r = prune(store, keep=1, grace_s=0)
    assert len(r.stale_locks_removed) == 2 and not read_locks(store)
    # a fresh lock of a live writer elsewhere does block
    live = LockInfo("shared", "other-host", 1, "sync push ds", now, now)
    store.put_bytes(f"{LOCKS_PREFIX}shared-live.json", json.dumps(live.__dict__).encode())
    with pytest.raises(LockedError, match="host other-host"):
        prune(store, keep=1, grace_s=0)


def test_a_damaged_kept_snapshot_stops_prune_before_it_deletes_anything(
    tmp_path: Path, store: LocalChunkStore
) -> None:
    _, roots = three_snapshots(tmp_path, store)
    (store.root / manifest_key(roots[-1])).write_bytes(b"truncated")
    before = set(store.list_keys(""))
    with pytest.raises(IntegrityError, match="stopped before deleting anything"):
        prune(store, keep=1, grace_s=0)
    assert set(store.list_keys("")) - {k for k in store.list_keys(LOCKS_PREFIX)} == before
    with pytest.raises(ConfigError):
        prune(store, keep=1, grace_s=-1)
