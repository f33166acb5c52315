"""Pack files: small chunks in a few objects, the pack index in the manifest, and what must stay true."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import spotshift.sync.packs as packs
import spotshift.sync.store as store_module
from spotshift.errors import IntegrityError
from spotshift.sync.archiver import push
from spotshift.sync.checker import verify
from spotshift.sync.manifest import METADATA_KEY, Manifest
from spotshift.sync.prune import prune
from spotshift.sync.refs import load_manifest, manifest_key, read_ref
from spotshift.sync.replicator import replicate
from spotshift.sync.restorer import pull
from spotshift.sync.store import LocalChunkStore
from tests.unit.sync.conftest import SMALL, make_tree, rand_bytes, stored_objects, tree_bytes


@pytest.fixture
def src(tmp_path: Path, spotshift_home: Path) -> Path:
    root = make_tree(tmp_path / "src")
    for i in range(3):
        (root / f"big{i}.bin").write_bytes(rand_bytes(3_000_000, 70 + i))
    return root


@pytest.fixture
def store(tmp_path: Path) -> LocalChunkStore:
    return LocalChunkStore(tmp_path / "store")


def small_packs(monkeypatch: pytest.MonkeyPatch, target: int = 2 << 20) -> None:
    monkeypatch.setattr(packs, "PACK_TARGET_BYTES", target)


def packed(store: LocalChunkStore) -> list[Path]:
    return sorted(p for p in (store.root / "packs").rglob("*") if p.is_file())


def format_version(store: LocalChunkStore, root: str) -> int:
    import io

    import pyarrow.parquet as pq

    raw = (store.root / manifest_key(root)).read_bytes()
    return json.loads(pq.ParquetFile(io.BytesIO(raw)).schema_arrow.metadata[METADATA_KEY])["version"]


def test_small_chunks_go_into_a_few_packs_and_pull_back_exactly(
    src: Path, store: LocalChunkStore, tmp_path: Path
) -> None:
    pushed = push(src, store, "corpus", params=SMALL)
    manifest, _ = load_manifest(store, pushed.root)
    assert not (store.root / "chunks").exists()
    assert 1 <= len(packed(store)) <= 2 < pushed.chunks_total
    assert set(manifest.locations) == set(manifest.unique_chunks())  # every chunk indexed
    assert format_version(store, pushed.root) == 2
    assert verify(store).ok and verify(store, full=False).ok
    pull(store, tmp_path / "out")
    assert tree_bytes(tmp_path / "out") == tree_bytes(src)


def test_format_1_manifests_and_loose_chunks_still_pull(
    src: Path, store: LocalChunkStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(packs, "PACK_CHUNK_LIMIT", 0)  # a store written before packs existed
    old = push(src, store, "corpus", params=SMALL)
    assert format_version(store, old.root) == 1 and not packed(store)
    monkeypatch.undo()
    pull(store, tmp_path / "out")
    assert tree_bytes(tmp_path / "out") == tree_bytes(src)
    # the next push packs only the new chunks; the old ones stay where they are
    (src / "new.bin").write_bytes(rand_bytes(500_000, 99))
    new = push(src, store, "corpus", params=SMALL)
    manifest, _ = load_manifest(store, new.root)
    assert 0 < new.chunks_sent < new.chunks_total and len(manifest.locations) == new.chunks_sent
    assert verify(store).ok
    pull(store, tmp_path / "out2")
    assert tree_bytes(tmp_path / "out2") == tree_bytes(src)


def _rewrite_index(store: LocalChunkStore, root: str, edit) -> None:  # type: ignore[no-untyped-def]
    """Write manifest ``root`` back with its pack index edited (the Merkle root does not cover it)."""
    manifest, _ = load_manifest(store, root)
    locs = dict(manifest.locations)
    edit(locs)
    (store.root / manifest_key(root)).write_bytes(manifest.with_locations(locs).to_parquet_bytes())


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda locs: locs.update({k: ("../../etc/passwd", 0) for k in list(locs)[:1]}), "not 32 hex digits"),
        (lambda locs: locs.update({k: (v[0], -5) for k, v in list(locs.items())[:1]}), "out of bounds"),
        (lambda locs: locs.update({k: (v[0], 1 << 41) for k, v in list(locs.items())[:1]}), "out of bounds"),
    ],
    ids=["unsafe-pack-id", "negative-offset", "offset-past-limit"],
)
def test_a_malformed_pack_index_is_refused_when_the_manifest_is_read(
    src: Path, store: LocalChunkStore, tmp_path: Path, edit, message: str
) -> None:  # type: ignore[no-untyped-def]
    pushed = push(src, store, "corpus", params=SMALL)
    _rewrite_index(store, pushed.root, edit)
    with pytest.raises(IntegrityError, match=message):
        pull(store, tmp_path / "out")
    assert not verify(store).ok


def test_a_chunk_listed_twice_in_the_pack_index_is_refused(src: Path, store: LocalChunkStore) -> None:
    pushed = push(src, store, "corpus", params=SMALL)
    raw = (store.root / manifest_key(pushed.root)).read_bytes()
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.ParquetFile(io.BytesIO(raw)).read()
    rows = table.to_pylist()
    first = next(r for r in rows if r["pack"] is not None)
    # a new file made of that one chunk, indexed at another place of the same pack
    twin = dict(first, path="zz-twin.bin", size=first["chunk_length"], chunk_offset=0)
    twin["pack_offset"] = first["pack_offset"] + 1
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([*rows, twin], schema=table.schema), sink)
    with pytest.raises(IntegrityError, match="listed at two places"):
        Manifest.from_parquet_bytes(sink.getvalue(), name="m")


def test_a_pack_index_pointing_at_other_bytes_fails_the_digest_check_on_read(
    src: Path, store: LocalChunkStore, tmp_path: Path
) -> None:
    pushed = push(src, store, "corpus", params=SMALL)
    # shift one chunk's offset inside its (real) pack: well-formed, in bounds, wrong bytes
    _rewrite_index(
        store, pushed.root, lambda locs: locs.update({k: (v[0], v[1] + 1) for k, v in list(locs.items())[:1]})
    )
    with pytest.raises(IntegrityError, match="no copy matches its digest"):
        pull(store, tmp_path / "out")
    report = verify(store)
    assert not report.ok and len(report.datasets[0].corrupt) == 1


def test_corrupt_or_lost_packs_are_found_and_repaired_without_rewriting_packs(
    src: Path, store: LocalChunkStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_packs(monkeypatch)
    pushed = push(src, store, "corpus", params=SMALL)
    files = packed(store)
    assert len(files) >= 3
    with open(files[0], "r+b") as f:  # one byte of the pack's first chunk
        f.seek(100)
        f.write(b"X")
    lost = files[1].read_bytes()
    files[1].unlink()
    report = verify(store)
    d = report.datasets[0]
    assert not report.ok and len(d.corrupt) == 1 and len(d.missing) >= 1
    assert verify(store, full=False).datasets[0].missing == d.missing  # quick mode sees the lost pack
    with pytest.raises(IntegrityError):
        pull(store, tmp_path / "broken")
    repaired = verify(store, repair_from=src)
    assert repaired.ok and sorted(repaired.datasets[0].repaired) == sorted(d.corrupt + d.missing)
    assert verify(store).ok
    assert not files[1].exists() and files[0].read_bytes()[100:101] == b"X"  # packs left as they were
    pull(store, tmp_path / "out")
    assert tree_bytes(tmp_path / "out") == tree_bytes(src)
    assert len(lost) > 0 and pushed.chunks_total > 0


def test_a_push_killed_after_some_packs_resumes_without_resending_them(
    src: Path, store: LocalChunkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_packs(monkeypatch, target=1 << 20)
    import spotshift.sync.fingerprint as fingerprint
    import spotshift.sync.inline as inline

    monkeypatch.setattr(fingerprint, "default_workers", lambda: 1)  # one chunking thread: same packs
    real = inline.write_direct
    written: list[str] = []

    def dying(store, key, buf, length):  # type: ignore[no-untyped-def]
        if key.startswith("packs/"):
            if len(written) == 3:
                raise KeyboardInterrupt("killed")  # the process dies after three packs are in
            written.append(key)
        return real(store, key, buf, length)

    monkeypatch.setattr(inline, "write_direct", dying)
    with pytest.raises(KeyboardInterrupt):
        push(src, store, "corpus", params=SMALL, workers=1)
    assert len(packed(store)) == 3
    assert read_ref(store, "corpus") is None  # nothing committed
    monkeypatch.setattr(inline, "write_direct", real)
    resumed = push(src, store, "corpus", params=SMALL, workers=1)
    assert 0 < resumed.chunks_sent < resumed.chunks_total  # the 3 packs already there are skipped
    assert verify(store).ok


def test_check_existing_resends_only_the_chunks_of_a_lost_pack(
    src: Path, store: LocalChunkStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_packs(monkeypatch)
    region = LocalChunkStore(tmp_path / "region")
    push(src, store, "corpus", params=SMALL)
    first = replicate(store, region, "corpus")
    manifest, _ = load_manifest(region, first.root)
    gone = packed(region)[0]
    in_gone = sum(1 for pack, _ in manifest.locations.values() if pack == gone.name)
    gone.unlink()
    assert replicate(store, region, "corpus").chunks_sent == 0  # the replica is trusted by default
    again = replicate(store, region, "corpus", check_existing=True)
    assert again.chunks_sent == in_gone and verify(region).ok


def test_prune_deletes_a_pack_only_when_no_kept_snapshot_uses_any_of_its_chunks(
    tmp_path: Path, spotshift_home: Path, store: LocalChunkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_packs(monkeypatch)
    src = tmp_path / "data"
    src.mkdir()
    (src / "keep.bin").write_bytes(rand_bytes(3_000_000, 1))
    (src / "drop.bin").write_bytes(rand_bytes(3_000_000, 2))
    push(src, store, "corpus", params=SMALL)
    first = set(packed(store))
    # second snapshot: drop.bin gone, keep.bin edited at its start (its first pack now partly unused)
    (src / "drop.bin").unlink()
    with open(src / "keep.bin", "r+b") as f:
        f.write(rand_bytes(4096, 3))
    second = push(src, store, "corpus", params=SMALL)
    manifest, _ = load_manifest(store, second.root)
    used = {pack for pack, _ in manifest.locations.values()}
    report = prune(store, keep=1, grace_s=0)
    left = {p.name for p in packed(store)}
    assert left == used  # exactly the packs the kept snapshot uses, partly used ones whole
    assert report.packs_deleted == len({p.name for p in first} - used) > 0 and report.packs_kept == len(used)
    assert verify(store).ok
    pull(store, tmp_path / "out")
    assert tree_bytes(tmp_path / "out") == tree_bytes(src)


def test_s3_style_object_count_falls_with_packs(src: Path, tmp_path: Path, spotshift_home: Path) -> None:
    loose = LocalChunkStore(tmp_path / "loose")
    import spotshift.sync.packs as p

    limit, p.PACK_CHUNK_LIMIT = p.PACK_CHUNK_LIMIT, 0
    try:
        push(src, loose, "corpus", params=SMALL)
    finally:
        p.PACK_CHUNK_LIMIT = limit
    packed_store = LocalChunkStore(tmp_path / "packed")
    push(src, packed_store, "corpus", params=SMALL)
    assert len(stored_objects(packed_store.root)) * 10 < len(stored_objects(loose.root))


def test_a_push_makes_every_chunk_and_pack_durable_before_the_manifest_names_it(
    src: Path, store: LocalChunkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks are written while the tree is cut (batched, not fsynced one by one): the file system
    sync that makes them durable must come after the last of them and before the manifest and
    the ``latest`` pointer that reference them."""
    small_packs(monkeypatch, target=1 << 20)
    monkeypatch.setattr(packs, "PACK_CHUNK_LIMIT", SMALL.avg_size)  # about half the chunks are loose
    events: list[str] = []
    real_put, real_commit, real_flush = (
        LocalChunkStore.put_bytes,
        LocalChunkStore.commit_temp,
        LocalChunkStore.flush,
    )

    def log(store: LocalChunkStore, key: str) -> None:
        events.append(f"{'durable' if store.fsync_each else 'batched'} {key.split('/')[0]}")

    def put(self, key, data, *, if_absent=False):  # type: ignore[no-untyped-def]
        log(self, key)
        return real_put(self, key, data, if_absent=if_absent)

    def commit_temp(self, fd, tmp, key, *, if_absent=False):  # type: ignore[no-untyped-def]
        log(self, key)
        return real_commit(self, fd, tmp, key, if_absent=if_absent)

    def flush(self):  # type: ignore[no-untyped-def]
        events.append("flush")
        return real_flush(self)

    monkeypatch.setattr(LocalChunkStore, "put_bytes", put)
    monkeypatch.setattr(LocalChunkStore, "commit_temp", commit_temp)
    real_syncfs = store_module.syncfs

    def syncfs(path):  # type: ignore[no-untyped-def]
        events.append("synced")
        return real_syncfs(path)

    monkeypatch.setattr(LocalChunkStore, "flush", flush)
    monkeypatch.setattr(store_module, "syncfs", syncfs)
    push(src, store, "corpus", params=SMALL)
    assert "batched packs" in events and "batched chunks" in events  # both kinds were written
    first_manifest = events.index("durable manifests")
    pointer = events.index("durable refs")
    last_batched = max(i for i, e in enumerate(events) if e.startswith("batched"))
    flushed = events.index("flush", last_batched)
    assert last_batched < flushed < events.index("synced", flushed) < first_manifest < pointer


@pytest.mark.parametrize("length", [1, 4095, 4096, 4097, 3 * 4096 + 17])
def test_direct_writes_store_exactly_length_bytes(tmp_path: Path, length: int) -> None:
    """Direct I/O writes whole blocks; the object is cut back to its length (and reads back equal)."""
    import spotshift.sync.inline as inline

    store = LocalChunkStore(tmp_path / "store", fsync_each=False)
    buf = inline.aligned_buffer(length + 3 * inline.BLOCK)
    buf[: len(buf)] = b"\xff" * len(buf)  # what lies past the length must not be stored
    data = rand_bytes(length, length)
    buf[:length] = data
    assert inline.write_direct(store, "chunks/ab/x", buf, length)
    assert store.get_bytes("chunks/ab/x") == data
    assert not inline.write_direct(store, "chunks/ab/x", buf, length)  # write-once


def test_push_check_existing_rewrites_only_the_chunks_of_a_lost_pack(
    src: Path, store: LocalChunkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_packs(monkeypatch)
    first = push(src, store, "corpus", params=SMALL)
    manifest, _ = load_manifest(store, first.root)
    gone = packed(store)[0]
    in_gone = sum(1 for pack, _ in manifest.locations.values() if pack == gone.name)
    gone.unlink()
    (src / "extra.txt").write_text("a change, so the snapshot is committed again")
    for p in src.rglob("*"):  # every file read again (not from the files cache): cut and written inline
        if p.is_file():
            os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    small_packs(monkeypatch, target=1 << 20)  # packs grouped otherwise: none would match by name
    again = push(src, store, "corpus", params=SMALL, check_existing=True)
    assert in_gone <= again.chunks_sent <= in_gone + 1  # the lost pack's chunks (+ the new file)
    assert verify(store).ok


def test_a_mapped_file_that_repeats_itself_is_packed_once_per_distinct_chunk(
    tmp_path: Path, spotshift_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Quiet files are cut first and read into the pack in runs: a chunk repeated inside a run (or
    one the store already has) is dropped from the pack and the chunks after it move down."""
    import spotshift.sync.fingerprint as fingerprint

    monkeypatch.setattr(fingerprint, "HOT_FILE_S", -1.0)  # files just written are mapped, not streamed
    small_packs(monkeypatch, target=1 << 20)
    root = tmp_path / "src"
    root.mkdir()
    block = rand_bytes(300_000, 5)
    (root / "rep.bin").write_bytes(block * 8 + rand_bytes(700_000, 6))
    store = LocalChunkStore(tmp_path / "store")
    pushed = push(root, store, "rep", params=SMALL)
    manifest, _ = load_manifest(store, pushed.root)
    unique = manifest.unique_chunks()
    assert len(unique) < sum(e.chunk_count for e in manifest.files())  # the file does repeat itself
    assert sum(p.stat().st_size for p in packed(store)) == sum(unique.values())
    (root / "more.bin").write_bytes(rand_bytes(100_000, 7) + block * 3)  # most chunks known already
    again = push(root, store, "rep", params=SMALL)
    assert again.chunks_sent < 6
    assert verify(store).ok
    pull(store, tmp_path / "out")
    assert tree_bytes(tmp_path / "out") == tree_bytes(root)
