"""``pull``: restore a snapshot into a directory (the restorer). Every chunk is checked against
its length and digest before it is written; files are written under temp names and renamed into
place when complete; chunks already in the directory are reused instead of downloaded."""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

from spotshift.atomic import remove_stale_temp_files, temp_path
from spotshift.errors import InputError, IntegrityError
from spotshift.progress import NO_PROGRESS, Progress
from spotshift.sync.chunking import digest_function
from spotshift.sync.delta import as_store, bytes_in_flight, finish, io_workers, transfer_location
from spotshift.sync.diff import diff
from spotshift.sync.entries import DIR, ROOT_PATH, SYMLINK, FileEntry
from spotshift.sync.fingerprint import fingerprint
from spotshift.sync.manifest import Manifest
from spotshift.sync.packs import Location, read_chunk
from spotshift.sync.refs import load_manifest, resolve_dataset
from spotshift.sync.store import ChunkStore, syncfs
from spotshift.sync.transfer import BoundedPool, TransferStats


def pull(
    store: ChunkStore | str,
    dest: str | os.PathLike[str],
    dataset: str | None = None,
    *,
    root: str | None = None,
    workers: int | None = None,
    budget_bytes: int | None = None,
    reuse_local: bool = True,
    src_location: str | None = None,
    dst_location: str | None = None,
    keep_special_bits: bool = False,
    progress: Progress = NO_PROGRESS,
) -> TransferStats:
    """Restore a snapshot into directory ``dest``, verifying every chunk; restores mode and mtime.

    Files already identical in ``dest`` are left alone and chunks found in ``dest`` are copied
    locally instead of downloaded (``reuse_local``). Files in ``dest`` that the snapshot does not
    list are left in place.

    A manifest is untrusted input (anyone who can write to the bucket can write one): setuid,
    setgid and sticky bits are not restored unless ``keep_special_bits`` (as tar and rsync do for
    archives they do not trust), and entries this file system cannot hold (names or paths too
    long) are refused with :class:`InputError` before anything is written.
    """
    t0 = time.perf_counter()
    store = as_store(store)
    workers = io_workers(workers, store)
    src_location, dst_location = transfer_location(src_location, store.url), transfer_location(dst_location)
    dataset, ref = resolve_dataset(store, dataset)
    manifest, raw = load_manifest(store, root or ref.root)
    dest_dir = Path(dest).expanduser().resolve()
    stats = TransferStats(
        dataset,
        src=store.url,
        dst=str(dest_dir),
        src_location=src_location,
        dst_location=dst_location,
        bytes_scanned=len(raw),
    )
    hfn = digest_function(manifest.params.digest)
    if dest_dir.exists() and not dest_dir.is_dir():
        raise InputError(f"{dest_dir}: exists and is not a directory")
    _check_fits(manifest, dest_dir, store.url)
    mode_mask = 0o7777 if keep_special_bits else 0o777
    _remove_stale_parts(manifest, dest_dir)
    local, local_chunks = _what_is_here(dest_dir, manifest, reuse_local, stats, progress)
    dest_dir.mkdir(parents=True, exist_ok=True)
    d = diff(manifest, local)
    stats.files_changed, stats.dirs_pruned = len(d.changed_files), d.dirs_pruned
    changed = {e.path for e in d.changed_files}
    # directories first (top-down), then symlinks, then file contents; directory times last
    for e in manifest.entries:
        if e.kind == DIR and e.path != ROOT_PATH:
            _ensure_dir(dest_dir / e.path)
    for e in manifest.entries:
        if e.kind == SYMLINK:
            _restore_symlink(dest_dir / e.path, e)
    task = progress.task(f"pull {dataset}", total=sum(e.size for e in d.changed_files), unit="bytes")
    writer = _FileWriter(store, dest_dir, hfn, local_chunks, stats, mode_mask, task)
    writer.locations = manifest.locations
    try:
        with BoundedPool(workers, bytes_in_flight(manifest.params, budget_bytes)) as pool:
            writer.pool = pool
            for e in manifest.files():
                if e.path in changed:
                    writer.start(e)
    finally:
        writer.cleanup()
    for e in sorted((e for e in manifest.entries if e.kind == DIR), key=lambda e: -e.path.count("/")):
        _restore_meta(dest_dir if e.path == ROOT_PATH else dest_dir / e.path, e, mode_mask)
    syncfs(dest_dir)
    return finish(stats, manifest, t0)


def _what_is_here(
    dest_dir: Path, manifest: Manifest, reuse_local: bool, stats: TransferStats, progress: Progress
) -> tuple[Manifest | None, dict[bytes, tuple[str, int, int]]]:
    """What ``dest_dir`` already holds (None when nothing or not ``reuse_local``), and where each of
    its chunks can be read locally: (path, offset, length) by digest."""
    if not (reuse_local and dest_dir.is_dir() and any(dest_dir.iterdir())):
        return None, {}
    fp = fingerprint(dest_dir, manifest.params, progress=progress)
    stats.bytes_scanned += fp.stats.bytes_read
    local_chunks: dict[bytes, tuple[str, int, int]] = {}
    for e in fp.manifest.files():
        for off, length, dig in e.chunks():
            local_chunks.setdefault(dig, (str(dest_dir / e.path), off, length))
    return fp.manifest, local_chunks


def _check_fits(manifest: Manifest, dest_dir: Path, where: str) -> None:
    """Refuse, before writing anything, entries whose names or paths this file system cannot hold."""
    probe = dest_dir
    while not probe.exists():
        probe = probe.parent
    try:
        name_max = os.pathconf(probe, "PC_NAME_MAX")
        path_max = os.pathconf(probe, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    base = len(os.fsencode(dest_dir)) + 1
    for e in manifest.entries:
        if e.path == ROOT_PATH:
            continue
        name = len(os.fsencode(e.name))
        if name > name_max:
            raise InputError(
                f"snapshot {manifest.root[:12]} in {where}: entry name of {name} bytes is longer than the "
                f"{name_max} bytes {dest_dir} allows ({e.path[:60]!r}...)"
            )
        if base + len(os.fsencode(e.path)) >= path_max:
            raise InputError(
                f"snapshot {manifest.root[:12]} in {where}: path of {base + len(os.fsencode(e.path))} bytes "
                f"under {dest_dir} is longer than the {path_max} bytes the file system allows"
            )


def _remove_stale_parts(manifest: Manifest, dest_dir: Path) -> None:
    """Delete the partial files killed pulls left in the directories this pull writes into."""
    for e in manifest.entries:
        if e.kind == DIR:
            remove_stale_temp_files(dest_dir if e.path == ROOT_PATH else dest_dir / e.path)


def _ensure_dir(path: Path) -> None:
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    path.mkdir(exist_ok=True)
    os.chmod(path, 0o700 | stat.S_IMODE(path.stat().st_mode))  # writable while we fill it


def _restore_symlink(path: Path, e: FileEntry) -> None:
    if path.is_symlink() and os.readlink(path) == e.target:
        pass
    else:
        if path.is_dir() and not path.is_symlink():
            raise InputError(f"{path}: is a directory where the snapshot has a symlink; remove it first")
        if path.is_symlink() or path.exists():
            path.unlink()
        os.symlink(e.target or "", path)
    with contextlib.suppress(NotImplementedError, OSError):
        os.utime(path, ns=(e.mtime_ns, e.mtime_ns), follow_symlinks=False)


def _restore_meta(path: Path, e: FileEntry, mode_mask: int) -> None:
    os.chmod(path, e.mode & mode_mask)
    os.utime(path, ns=(e.mtime_ns, e.mtime_ns))


class _FileWriter:
    """Writes files chunk by chunk into temp files; a file is renamed into place when complete."""

    def __init__(
        self,
        store: ChunkStore,
        dest: Path,
        hfn: Any,
        local: dict[bytes, tuple[str, int, int]],
        stats: TransferStats,
        mode_mask: int,
        task: Any,
    ):
        self.store, self.dest, self.hfn, self.local, self.stats = store, dest, hfn, local, stats
        self.mode_mask = mode_mask
        self.task = task  # progress: bytes restored
        self.pool: BoundedPool | None = None
        self.locations: dict[bytes, Location] = {}  # the snapshot's pack index
        self._open: dict[str, tuple[int, Path, FileEntry, list[int]]] = {}
        self._lock = threading.Lock()

    def start(self, e: FileEntry) -> None:
        final = self.dest / e.path
        if final.is_dir() and not final.is_symlink():
            raise InputError(f"{final}: is a directory where the snapshot has a file; remove it first")
        tmp = temp_path(final.parent)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        with self._lock:
            self._open[e.path] = (fd, tmp, e, [e.chunk_count])
        if e.chunk_count == 0:
            self._complete(e.path)
            return
        os.ftruncate(fd, e.size)
        assert self.pool is not None
        for off, length, dig in e.chunks():
            self.pool.submit(length, self._write_chunk, e.path, fd, off, length, dig)

    def _fetch(self, dig: bytes, length: int) -> tuple[bytes, bool]:
        hit = self.local.get(dig)
        if hit is not None:
            try:
                with open(hit[0], "rb") as f:
                    f.seek(hit[1])
                    data = f.read(hit[2])
                if self.hfn(data) == dig:
                    return data, True
            except OSError:
                pass  # replaced meanwhile: fall back to the store
        data = read_chunk(self.store, dig, length, self.hfn, self.locations.get(dig))
        if data is None:
            raise IntegrityError(
                f"chunk {dig.hex()} in {self.store.url} is missing or corrupt (no copy matches its digest); "
                "run `spotshift sync verify --repair`"
            )
        return data, False

    def _write_chunk(self, path: str, fd: int, off: int, length: int, dig: bytes) -> None:
        data, was_local = self._fetch(dig, length)
        os.pwrite(fd, data, off)
        self.task.advance(length)
        with self._lock:
            if not was_local:
                self.stats.chunks_sent += 1
                self.stats.bytes_sent += length
                self.stats.bytes_changed += length
            remaining = self._open[path][3]
            remaining[0] -= 1
            done = remaining[0] == 0
        if done:
            self._complete(path)

    def _complete(self, path: str) -> None:
        with self._lock:
            fd, tmp, e, _ = self._open.pop(path)
        os.close(fd)  # durable at the end of the pull (one syncfs for every file)
        final = self.dest / e.path
        if final.is_symlink():
            final.unlink()
        os.replace(tmp, final)
        _restore_meta(final, e, self.mode_mask)

    def cleanup(self) -> None:
        with self._lock:
            left = list(self._open.values())
            self._open.clear()
        for fd, tmp, _, _ in left:
            with contextlib.suppress(OSError):
                os.close(fd)
            tmp.unlink(missing_ok=True)


# ---- verify and repair -----------------------------------------------------------------------------
