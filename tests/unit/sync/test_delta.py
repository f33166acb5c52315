"""Delta sync on local stores: push, pull, replicate, verify, repair, and faults."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from spotshift.errors import IntegrityError, NotFoundError
from spotshift.sync.archiver import push
from spotshift.sync.checker import verify
from spotshift.sync.fingerprint import fingerprint
from spotshift.sync.refs import list_datasets, load_manifest, manifest_key, read_ref
from spotshift.sync.replicator import replicate
from spotshift.sync.restorer import pull
from spotshift.sync.store import LocalChunkStore
from spotshift.sync.transfer import BoundedPool
from tests.unit.sync.conftest import SMALL, make_tree, rand_bytes, tree_bytes


@pytest.fixture
def src(tmp_path: Path, spotshift_home: Path) -> Path:
    return make_tree(tmp_path / "src")


@pytest.fixture
def store(tmp_path: Path) -> LocalChunkStore:
    return LocalChunkStore(tmp_path / "store")


def chunk_files(store: LocalChunkStore) -> list[Path]:
    return sorted(p for p in (store.root / "chunks").rglob("*") if p.is_file())


def test_push_pull_round_trip_restores_bytes_modes_mtimes_symlinks(
    src: Path, store: LocalChunkStore, tmp_path: Path
) -> None:
    stats = push(src, store, "corpus", params=SMALL)
    assert stats.chunks_sent == stats.chunks_total > 10
    assert stats.bytes_changed == stats.bytes_sent - stats.metadata_bytes_sent
    assert read_ref(store, "corpus").root == stats.root  # type: ignore[union-attr]
    assert store.exists(manifest_key(stats.root))
    out = tmp_path / "restored"
    p = pull(store, out)
    assert p.root == stats.root and p.chunks_sent == stats.chunks_total
    assert tree_bytes(out) == tree_bytes(src)
    assert (out / "sub" / "link-to-a").is_symlink() and os.readlink(out / "dangling") == "/nonexistent/target"
    # the restored tree is the same snapshot, directory times and modes included
    assert fingerprint(out, SMALL).root == stats.root


def test_unchanged_push_sends_nothing_and_edits_send_little(src: Path, store: LocalChunkStore) -> None:
    first = push(src, store, "corpus", params=SMALL)
    again = push(src, store, "corpus", params=SMALL)
    assert (again.chunks_sent, again.bytes_sent, again.root) == (0, 0, first.root)
    big = src / "big.bin"
    big.write_bytes(rand_bytes(6_000_000, 9))
    push(src, store, "corpus", params=SMALL)
    with open(big, "r+b") as f:
        for off in (500_000, 3_000_000, 5_500_000):
            f.seek(off)
            f.write(b"\x00" * 4096)
    edited = push(src, store, "corpus", params=SMALL)
    bound = 3 * 4096 + 2 * SMALL.max_size * 3 + 0.01 * 6_000_000 + edited.metadata_bytes_sent
    assert 0 < edited.bytes_sent <= bound
    assert edited.files_changed == 1 and edited.dirs_pruned >= 2
    assert edited.transfer_amplification is not None and edited.transfer_amplification >= 1.0


def test_pull_into_existing_directory_reuses_local_chunks(
    src: Path, store: LocalChunkStore, tmp_path: Path
) -> None:
    push(src, store, "corpus", params=SMALL)
    out = tmp_path / "restored"
    pull(store, out)
    (src / "sub" / "b.bin").write_bytes((src / "sub" / "b.bin").read_bytes()[:200_000] + b"tail")
    new = push(src, store, "corpus", params=SMALL)
    (out / "stray.txt").write_text("not in the snapshot")
    second = pull(store, out)
    assert second.root == new.root
    assert second.bytes_sent < 150_000  # only the changed tail came from the store
    assert (out / "stray.txt").exists()
    expected = tree_bytes(src)
    got = tree_bytes(out)
    got.pop("stray.txt")
    assert got == expected


def test_replicate_between_regions_sends_only_missing_chunks(
    src: Path, store: LocalChunkStore, tmp_path: Path
) -> None:
    home = store
    region = LocalChunkStore(tmp_path / "region-b")
    pushed = push(src, home, "corpus", params=SMALL)
    r1 = replicate(home, region, "corpus", src_location="gcp/us-central1", dst_location="aws/us-east-1")
    assert r1.root == pushed.root and r1.chunks_sent == pushed.chunks_total
    assert r1.egress_usd_per_gb == 0.12 and r1.egress_usd == pytest.approx(0.12 * r1.bytes_sent / 1e9)
    assert replicate(home, region, "corpus").chunks_sent == 0
    with open(src / "a.bin", "r+b") as f:
        f.seek(10)
        f.write(b"edit")
    push(src, home, "corpus", params=SMALL)
    r3 = replicate(home, region, "corpus")
    assert 1 <= r3.chunks_sent <= 3
    assert verify(region).ok
    row = r3.to_row("run-1")
    assert row["entity"] == "corpus" and row["method"] == "cdc_delta" and row["run_id"] == "run-1"


@pytest.mark.usefixtures("loose_chunks")
def test_verify_finds_corrupt_and_missing_chunks_and_repair_fixes_them(
    src: Path, store: LocalChunkStore, tmp_path: Path
) -> None:
    push(src, store, "corpus", params=SMALL)
    assert verify(store).ok
    files = chunk_files(store)
    with open(files[0], "r+b") as f:
        f.seek(100)
        f.write(b"X")
    files[1].unlink()
    report = verify(store)
    d = report.datasets[0]
    assert not report.ok and len(d.corrupt) == 1 and len(d.missing) == 1
    assert verify(store, full=False).datasets[0].missing == d.missing  # quick mode finds missing ones
    # repair from the original directory (re-chunked)
    repaired = verify(store, repair_from=src)
    assert repaired.ok and sorted(repaired.datasets[0].repaired) == sorted(d.corrupt + d.missing)
    assert verify(store).ok
    # repair from another store holding the snapshot
    other = LocalChunkStore(tmp_path / "other")
    replicate(store, other, "corpus")
    chunk_files(store)[2].unlink()
    assert verify(store, repair_from=other.url).ok
    assert verify(store).ok


def test_tampered_or_truncated_manifest_is_refused_and_named(
    src: Path, store: LocalChunkStore, tmp_path: Path
) -> None:
    stats = push(src, store, "corpus", params=SMALL)
    path = store.root / manifest_key(stats.root)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) - 40])
    with pytest.raises(IntegrityError, match=f"manifests/{stats.root}.parquet .*truncated"):
        pull(store, tmp_path / "out")
    report = verify(store)
    assert not report.ok and "truncated" in (report.datasets[0].manifest_error or "")
    # a manifest named for one root holding another snapshot is tampered
    (src / "new.txt").write_text("x")
    other = push(src, LocalChunkStore(tmp_path / "s2"), "corpus", params=SMALL)
    path.write_bytes((tmp_path / "s2" / manifest_key(other.root)).read_bytes())
    with pytest.raises(IntegrityError, match="tampered"):
        pull(store, tmp_path / "out")
    # repair from the source is refused (the source changed), from a good replica works
    path.write_bytes(good)
    replica = LocalChunkStore(tmp_path / "replica")
    replicate(store, replica, "corpus")
    path.write_bytes(b"garbage")
    fixed = verify(store, repair_from=replica)
    assert fixed.ok and fixed.datasets[0].manifest_repaired
    # the same snapshot (the replica's pack index: chunks its packs place elsewhere were repaired)
    assert load_manifest(store, stats.root)[0].root == stats.root
    assert verify(store).ok
    (src / "new.txt").unlink()
    pull(store, tmp_path / "out")
    assert tree_bytes(tmp_path / "out") == tree_bytes(src)


def test_corrupt_pointer_and_missing_dataset_are_clear_errors(
    src: Path, store: LocalChunkStore, tmp_path: Path
) -> None:
    with pytest.raises(NotFoundError, match="holds no dataset"):
        pull(store, tmp_path / "out")
    push(src, store, "corpus", params=SMALL)
    push(src, store, "other", params=SMALL)
    assert list_datasets(store) == ["corpus", "other"]
    with pytest.raises(Exception, match="pass --dataset"):
        pull(store, tmp_path / "out")
    (store.root / "refs" / "other" / "latest").write_text("{not json")
    with pytest.raises(IntegrityError, match="pointer refs/other/latest .* is corrupt"):
        pull(store, tmp_path / "out", "other")
    assert not verify(store).ok
    assert verify(store, "corpus").ok


def test_file_changed_after_fingerprint_is_detected(src: Path, store: LocalChunkStore) -> None:
    fp = fingerprint(src, SMALL)
    with open(src / "a.bin", "r+b") as f:
        f.write(b"changed!")
    with pytest.raises(Exception, match="changed since it was fingerprinted"):
        push(fp, store, "corpus", source_dir=src)
    assert read_ref(store, "corpus") is None  # nothing committed


def test_bounded_pool_never_exceeds_its_budget() -> None:
    in_flight = 0
    peak = 0
    lock = threading.Lock()

    def work(n: int) -> None:
        nonlocal in_flight, peak
        with lock:
            in_flight += n
            peak = max(peak, in_flight)
        time.sleep(0.005)
        with lock:
            in_flight -= n

    with BoundedPool(8, 100) as pool:
        for _ in range(60):
            pool.submit(30, work, 30)
    assert 30 <= peak <= 90

    def boom() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"), BoundedPool(2, 10) as pool:
        for _ in range(50):
            pool.submit(1, boom)


def test_write_once_manifests_on_local_store(store: LocalChunkStore) -> None:
    assert store.put_bytes("manifests/x.parquet", b"one", if_absent=True)
    assert not store.put_bytes("manifests/x.parquet", b"two", if_absent=True)
    assert store.get_bytes("manifests/x.parquet") == b"one"


_PUSH = """
import sys
import spotshift.sync.packs
from spotshift.sync.chunking import ChunkParams
spotshift.sync.packs.PACK_CHUNK_LIMIT = 0  # loose chunks (packed resume: test_packs.py)
from spotshift.sync.archiver import push
push(sys.argv[1], sys.argv[2], "big", params=ChunkParams.resolve(4096, 16384, 65536), workers=1)
"""


@pytest.mark.slow
def test_kill_9_mid_push_then_rerun_completes_and_no_pointer_is_premature(
    tmp_path: Path, spotshift_home: Path
) -> None:
    src = tmp_path / "big"
    src.mkdir()
    for i in range(4):
        (src / f"f{i}.bin").write_bytes(rand_bytes(12 << 20, 40 + i))
    store = LocalChunkStore(tmp_path / "store")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    proc = subprocess.Popen([sys.executable, "-c", _PUSH, str(src), store.url], env=env)
    deadline = time.monotonic() + 60
    killed_mid_way = False
    while time.monotonic() < deadline:
        n = len(list((store.root / "chunks").rglob("*"))) if (store.root / "chunks").exists() else 0
        if n > 200:
            os.kill(proc.pid, signal.SIGKILL)
            killed_mid_way = proc.wait() == -signal.SIGKILL
            break
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    assert killed_mid_way, "push finished before it could be killed"
    # invariant: a pointer only ever names a manifest whose chunks are all present
    if read_ref(store, "big") is not None:
        assert verify(store).ok
    before = len(chunk_files(store))
    import spotshift.sync.packs as packs

    packs.PACK_CHUNK_LIMIT, limit = 0, packs.PACK_CHUNK_LIMIT
    try:
        resumed = push(src, store, "big", params=SMALL.__class__(4096, 16384, 65536))
    finally:
        packs.PACK_CHUNK_LIMIT = limit
    assert 0 < resumed.chunks_sent < resumed.chunks_total  # only what was still missing
    assert resumed.chunks_sent <= resumed.chunks_total - before + 8
    assert not list((store.root / ".tmp").iterdir())  # the killed writer's temp files are gone
    assert verify(store).ok
    pull(store, tmp_path / "out")
    for i in range(4):
        assert (tmp_path / "out" / f"f{i}.bin").read_bytes() == (src / f"f{i}.bin").read_bytes()


def test_empty_dataset_round_trip(tmp_path: Path, spotshift_home: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    store = LocalChunkStore(tmp_path / "store")
    pushed = push(empty, store, "nothing", params=SMALL)
    assert (pushed.chunks_total, pushed.bytes_full, pushed.transfer_amplification) == (0, 0, None)
    assert verify(store).ok
    other = LocalChunkStore(tmp_path / "other")
    assert replicate(store, other, "nothing").root == pushed.root
    pull(other, tmp_path / "out")
    assert (tmp_path / "out").is_dir() and not any((tmp_path / "out").iterdir())
    assert pushed.to_row()["transfer_amplification"] is None
