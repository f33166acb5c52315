"""Bytes are verified as they arrive, before anything is written from them.

* ``replicate`` checks every chunk read from the source against its digest before writing it to
  the target: a corrupt source chunk stops the replica (no pointer, no bad chunk in the target).
* ``pull`` checks every chunk's length and digest before writing it into a file: a corrupt or
  truncated chunk stops the restore, and no file holds bytes the snapshot does not.
* The files cache never stores a file modified within the racy window (100 ms) before it was
  read: such a file could change again within one timestamp tick without its stat changing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spotshift.errors import IntegrityError
from spotshift.sync.archiver import push
from spotshift.sync.filescache import RACY_WINDOW_NS, FilesCache
from spotshift.sync.manifest import Manifest
from spotshift.sync.packs import pack_key
from spotshift.sync.refs import load_manifest, read_ref
from spotshift.sync.replicator import replicate
from spotshift.sync.restorer import pull
from spotshift.sync.store import LocalChunkStore, chunk_key
from tests.unit.sync.conftest import SMALL, make_tree, tree_bytes


@pytest.fixture
def pushed(tmp_path: Path, spotshift_home: Path) -> tuple[Path, LocalChunkStore, Manifest]:
    src = make_tree(tmp_path / "src")
    store = LocalChunkStore(tmp_path / "home")
    stats = push(src, store, "corpus", params=SMALL)
    manifest, _ = load_manifest(store, stats.root)
    return src, store, manifest


def _a_chunk_of(manifest: Manifest, path: str) -> tuple[str, int]:
    entry = manifest.get(path)
    assert entry is not None
    _, length, dig = next(iter(entry.chunks()))
    return dig.hex(), length


def _corrupt(
    store: LocalChunkStore, manifest: Manifest, chunk: tuple[str, int], *, truncate: bool = False
) -> None:
    """Damage one chunk where the store keeps it: its own object, or its range in a pack file
    (small chunks are packed; truncating a pack cuts through the chunk and what follows it)."""
    hex_, length = chunk
    loc = manifest.locations.get(bytes.fromhex(hex_))
    p = store.root / (pack_key(loc[0]) if loc else chunk_key(hex_))
    middle = (loc[1] if loc else 0) + length // 2
    data = bytearray(p.read_bytes())
    if truncate:
        del data[middle:]
    else:
        data[middle] ^= 0xFF  # same length, different content
    os.chmod(p, 0o644)
    p.write_bytes(bytes(data))


def _cut_with(manifest: Manifest, hex_: str) -> list[str]:
    """Chunk ``hex_`` and the chunks after it in its pack (what truncating it in the middle cuts)."""
    loc = manifest.locations.get(bytes.fromhex(hex_))
    if loc is None:
        return [hex_]
    return [d.hex() for d, (pack, off) in manifest.locations.items() if pack == loc[0] and off >= loc[1]]


def test_replicate_refuses_a_corrupt_source_chunk(pushed: tuple, tmp_path: Path) -> None:
    _, home, manifest = pushed
    hex_, length = _a_chunk_of(manifest, "a.bin")
    _corrupt(home, manifest, (hex_, length))
    region = LocalChunkStore(tmp_path / "region")
    with pytest.raises(IntegrityError, match=hex_):
        replicate(home, region, "corpus", workers=1)
    assert read_ref(region, "corpus") is None  # no snapshot in the target
    assert not (region.root / chunk_key(hex_)).exists()  # and not the corrupt bytes under that name


@pytest.mark.parametrize("truncate", [False, True], ids=["flipped-byte", "truncated"])
def test_pull_refuses_a_corrupt_chunk_before_writing(pushed: tuple, tmp_path: Path, truncate: bool) -> None:
    src, store, manifest = pushed
    hex_, length = _a_chunk_of(manifest, "sub/b.bin")
    _corrupt(store, manifest, (hex_, length), truncate=truncate)
    out = tmp_path / "restored"
    # a truncated pack also cuts every chunk packed after this one: pull may meet any of them first
    damaged = _cut_with(manifest, hex_) if truncate else [hex_]
    with pytest.raises(IntegrityError, match="|".join(damaged)):
        pull(store, out, workers=1)
    # whatever was restored is the snapshot's bytes; the file with the bad chunk is not there
    assert not (out / "sub" / "b.bin").exists()
    restored, original = tree_bytes(out) if out.exists() else {}, tree_bytes(src)
    for path, value in restored.items():
        assert value == original[path], path


def test_files_cache_does_not_store_a_racily_fresh_file(tmp_path: Path) -> None:
    from array import array

    f = tmp_path / "hot.bin"
    f.write_bytes(b"x" * 10)
    st = os.stat(f)
    changed_ns = max(st.st_mtime_ns, st.st_ctime_ns)
    lengths, digests = array("I", [10]), b"\0" * 16
    with FilesCache(tmp_path / "cache.sqlite") as cache:
        # read 50 ms after its last change: inside the window, not stored
        assert cache.put("p", str(f), st, lengths, digests, read_started_ns=changed_ns + 50_000_000) is False
        assert cache.put("p", str(f), st, lengths, digests, read_started_ns=changed_ns + 99_000_000) is False
        cache.commit()
        assert cache.load_tree("p", str(tmp_path)) == {}
        # read 150 ms after: outside the window, stored
        assert cache.put("p", str(f), st, lengths, digests, read_started_ns=changed_ns + 150_000_000) is True
        cache.commit()
        assert list(cache.load_tree("p", str(tmp_path))) == [str(f)]
    assert RACY_WINDOW_NS == 100_000_000  # the documented window (module doc, README)
