"""Fingerprinting trees: files cache, symlinks, empty things, special files and unreadable files."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import spotshift.sync.fingerprint as fp_mod
from spotshift.errors import InputError
from spotshift.sync.chunking import FASTCDC, ChunkParams
from spotshift.sync.filescache import FilesCache
from spotshift.sync.fingerprint import fingerprint
from tests.unit.sync.conftest import SMALL, make_tree, rand_bytes


@contextlib.contextmanager
def unprivileged_fs() -> Iterator[None]:
    """File permission checks as user ``nobody`` in this thread (and threads it starts), even as root."""
    if os.geteuid() != 0:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.setfsuid(65534)
    try:
        yield
    finally:
        libc.setfsuid(0)


@pytest.fixture
def tree(tmp_path: Path, spotshift_home: Path) -> Path:
    return make_tree(tmp_path / "src")


def test_symlinks_are_recorded_not_followed(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(b"x" * 1000)
    os.symlink(outside, tree / "dir-link")
    fp = fingerprint(tree, SMALL)
    link = fp.manifest.get("dir-link")
    assert link is not None and link.kind == "symlink" and link.target == str(outside)
    assert not any("secret" in e.path for e in fp.manifest.entries)
    assert fp.stats.symlinks == 3


def test_empty_files_dirs_and_datasets(tree: Path, tmp_path: Path) -> None:
    m = fingerprint(tree, SMALL).manifest
    assert m.get("empty.txt").size == 0  # type: ignore[union-attr]
    assert m.get("emptydir").kind == "dir"  # type: ignore[union-attr]
    (tmp_path / "nothing").mkdir()
    fp = fingerprint(tmp_path / "nothing", SMALL)
    assert fp.stats.files == 0 and fp.manifest.total_bytes == 0 and len(fp.root) == 32


def test_files_cache_skips_unchanged_files(tree: Path) -> None:
    first = fingerprint(tree, SMALL)
    # files written moments ago are "racy" and re-read once; let them age
    time.sleep(0.15)
    second = fingerprint(tree, SMALL)
    third = fingerprint(tree, SMALL)
    assert third.stats.bytes_read == 0 and third.stats.cache_hits == third.stats.files
    assert first.root == second.root == third.root
    # change one file: only it is read again
    time.sleep(0.15)
    with open(tree / "sub" / "b.bin", "r+b") as f:
        f.seek(1000)
        f.write(b"changed")
    time.sleep(0.15)
    fourth = fingerprint(tree, SMALL)
    assert fourth.stats.files_read == 1 and fourth.stats.bytes_read == 400_000
    assert fourth.root != third.root
    # different chunking parameters have their own cache entries
    other = fingerprint(tree, SMALL.__class__(32768, 131072, 524288))
    assert other.stats.files_read == other.stats.files


def test_racy_files_are_not_trusted_from_cache(tmp_path: Path, spotshift_home: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    f = src / "hot.bin"
    f.write_bytes(rand_bytes(100_000, 1))
    # an mtime at (or after) the moment of reading: a same-tick rewrite could keep it, so not cached
    now = time.time_ns() + 5_000_000_000
    os.utime(f, ns=(now, now))
    fingerprint(src, SMALL)
    assert fingerprint(src, SMALL).stats.files_read == 1


def test_corrupt_files_cache_is_rebuilt(tree: Path, spotshift_home: Path) -> None:
    fingerprint(tree, SMALL)
    cache = spotshift_home / "cache" / "files.sqlite"
    for suffix in ("-wal", "-shm"):
        Path(str(cache) + suffix).unlink(missing_ok=True)
    cache.write_bytes(b"this is not a database" * 100)
    time.sleep(0.15)
    fp = fingerprint(tree, SMALL)
    assert fp.stats.files_read == fp.stats.files
    with FilesCache(cache) as c:
        assert len(c.load_tree(SMALL.key, str(tree.resolve()))) == fp.stats.files


def test_unreadable_file_names_the_path(spotshift_home: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="spotshift-perm-"))
    try:
        os.chmod(base, 0o755)
        (base / "ok.bin").write_bytes(b"fine")
        bad = base / "locked.bin"
        bad.write_bytes(b"secret")
        os.chmod(bad, 0)
        with unprivileged_fs(), pytest.raises(InputError, match=f"{bad}: file is not readable"):
            fingerprint(base, SMALL, use_cache=False)
        locked_dir = base / "locked-dir"
        os.chmod(bad, 0o644)
        locked_dir.mkdir()
        os.chmod(locked_dir, 0)
        with unprivileged_fs(), pytest.raises(InputError, match=f"{locked_dir}: directory is not readable"):
            fingerprint(base, SMALL, use_cache=False)
    finally:
        for p in base.rglob("*"):
            with contextlib.suppress(OSError):
                os.chmod(p, 0o755)
        shutil.rmtree(base)


def test_special_files_are_skipped_and_bad_names_refused(tmp_path: Path, spotshift_home: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a")
    os.mkfifo(src / "pipe")
    fp = fingerprint(src, SMALL)
    assert fp.stats.skipped == ["pipe"] and fp.stats.files == 1
    os.unlink(src / "pipe")
    with open(os.path.join(os.fsencode(src), b"bad\xffname"), "wb") as f:
        f.write(b"x")
    with pytest.raises(InputError, match="not valid UTF-8"):
        fingerprint(src, SMALL)


def test_source_must_be_a_directory(tmp_path: Path, spotshift_home: Path) -> None:
    with pytest.raises(InputError, match="no such directory"):
        fingerprint(tmp_path / "missing", SMALL)
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(InputError, match="is not a directory"):
        fingerprint(tmp_path / "file", SMALL)
    with pytest.raises(InputError, match="local directory"):
        fingerprint("s3://bucket/x", SMALL)
    (tmp_path / "d").mkdir()
    assert fingerprint((tmp_path / "d").as_uri(), SMALL).stats.files == 0


def test_two_workers_agree_with_one(tree: Path) -> None:
    for i in range(6):
        (tree / f"extra{i}.bin").write_bytes(rand_bytes(300_000, 10 + i))
    one = fingerprint(tree, SMALL, workers=1, use_cache=False)
    two = fingerprint(tree, SMALL, workers=2, use_cache=False)
    assert one.root == two.root


@pytest.mark.parametrize(
    "params",
    [SMALL, ChunkParams.resolve(16 * 1024, 64 * 1024, 256 * 1024, engine=FASTCDC)],
    ids=["pyfastcdc", "fastcdc-2016"],
)
def test_mapped_files_cut_exactly_like_streamed_files(
    tmp_path: Path, spotshift_home: Path, monkeypatch: pytest.MonkeyPatch, params: ChunkParams
) -> None:
    root = tmp_path / "src"
    root.mkdir()
    for i, size in enumerate((1, 1000, 70_000, 300_000, 2_500_000)):
        (root / f"f{i}.bin").write_bytes(rand_bytes(size, 40 + i))
    mapped: list[int] = []
    real_map = fp_mod.map_file
    monkeypatch.setattr(fp_mod, "map_file", lambda fd, size: mapped.append(size) or real_map(fd, size))
    monkeypatch.setattr(fp_mod, "HOT_FILE_S", 1e9)  # every file "just written": streamed
    streamed = fingerprint(root, params, use_cache=False)
    assert mapped == []
    monkeypatch.setattr(fp_mod, "HOT_FILE_S", -1e9)  # every file quiet: memory-mapped
    cut_in_place = fingerprint(root, params, use_cache=False)
    assert sorted(mapped) == [1, 1000, 70_000, 300_000, 2_500_000]
    assert cut_in_place.root == streamed.root
    for a, b in zip(streamed.manifest.files(), cut_in_place.manifest.files(), strict=True):
        assert list(a.chunks()) == list(b.chunks())


def test_a_file_system_that_refuses_mappings_is_streamed(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    monkeypatch.setattr(fp_mod, "HOT_FILE_S", 1e9)
    streamed = fingerprint(tree, SMALL, use_cache=False)

    def refuse(fd: int, size: int) -> None:
        raise OSError(errno.ENODEV, "No such device")

    monkeypatch.setattr(fp_mod, "map_file", refuse)
    monkeypatch.setattr(fp_mod, "HOT_FILE_S", -1e9)
    assert fingerprint(tree, SMALL, use_cache=False).root == streamed.root
