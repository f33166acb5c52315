"""Fingerprint a directory tree: walk it, chunk new or changed files in parallel, build its manifest.

Files are memory-mapped and cut in place (:func:`spotshift.sync.chunking.iter_mapped_chunks`:
no read copies, the page cache is the only buffer) on ``workers`` threads, one file per thread at
a time; files modified in the last :data:`HOT_FILE_S` seconds are streamed instead
(:func:`~spotshift.sync.chunking.iter_chunks`), see :func:`chunk_file`. Unchanged files come from the files cache
(:mod:`spotshift.sync.filescache`) without being read. Symlinks are recorded, never followed;
sockets, FIFOs and device files are skipped and listed in the stats.

State: only the files cache (``$SPOTSHIFT_HOME/cache/files.sqlite``). A manifest is written where
a snapshot is committed (a store's ``manifests/<root>.parquet``), or where the caller asks
(``spotshift sync fingerprint DIR --manifest FILE``).
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from array import array
from pathlib import Path
from typing import Any

from spotshift.errors import InputError
from spotshift.progress import NO_PROGRESS, Progress, Task
from spotshift.sync.chunking import (
    ChunkParams,
    default_workers,
    digest_function,
    iter_chunks,
    iter_mapped_chunks,
    map_file,
)
from spotshift.sync.entries import DIR, FILE, ROOT_PATH, SYMLINK, FileEntry
from spotshift.sync.filescache import FilesCache, stat_key, unpack_chunks
from spotshift.sync.manifest import Manifest
from spotshift.sync.workers import check_workers

_O_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_COMMIT_EVERY_S = 1.0
#: a file modified less than this long before it is read is streamed, not memory-mapped
HOT_FILE_S = 2.0
#: chunks handed to a reading digest function (a push's inline writer) in runs of about this many
#: bytes: few calls, and the bytes are hashed while the CPU cache still holds them
RUN_BYTES = 512 * 1024


class FingerprintStats:
    """What a fingerprint pass did. ``bytes_read`` is what was actually read (cache misses)."""

    def __init__(self, workers: int = 1, skipped: list[str] | None = None):
        self.files = 0
        self.dirs = 0
        self.symlinks = 0
        self.bytes_total = 0
        self.bytes_read = 0
        self.chunks = 0
        self.cache_hits = 0
        self.files_read = 0
        self.workers = workers
        self.seconds = 0.0
        self.skipped: list[str] = skipped or []

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class Fingerprint:
    """A tree's manifest and the statistics of the pass that built it."""

    def __init__(self, manifest: Manifest, stats: FingerprintStats):
        self.manifest = manifest
        self.stats = stats

    @property
    def root(self) -> str:
        return self.manifest.root


class _Walked:
    def __init__(self, top: FileEntry):
        self.entries: list[FileEntry] = [top]
        self.files: list[tuple[str, str, os.stat_result]] = []  # (relative path, absolute path, lstat)
        self.skipped: list[str] = []


def _rel_name(rel_dir: str, name: str, abs_path: str) -> str:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{abs_path!r}: file name is not valid UTF-8; rename it to include it") from None
    return name if rel_dir == ROOT_PATH else f"{rel_dir}/{name}"


def _walk(root: Path) -> _Walked:
    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise InputError(f"{root}: no such directory") from None
    except PermissionError:
        raise InputError(f"{root}: permission denied") from None
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(f"{root}: is not a directory")
    out = _Walked(FileEntry(ROOT_PATH, DIR, 0, stat.S_IMODE(st.st_mode), st.st_mtime_ns))
    stack = [(ROOT_PATH, str(root))]
    while stack:
        rel_dir, abs_dir = stack.pop()
        try:
            with os.scandir(abs_dir) as it:
                items = list(it)
        except PermissionError:
            raise InputError(f"{abs_dir}: directory is not readable (permission denied)") from None
        except OSError as exc:
            raise InputError(f"{abs_dir}: cannot list directory ({exc.strerror})") from None
        for de in items:
            rel = _rel_name(rel_dir, de.name, de.path)
            try:
                lst = de.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # vanished while walking
            mode = lst.st_mode
            if stat.S_ISDIR(mode):
                out.entries.append(FileEntry(rel, DIR, 0, stat.S_IMODE(mode), lst.st_mtime_ns))
                stack.append((rel, de.path))
            elif stat.S_ISREG(mode):
                out.files.append((rel, de.path, lst))
            elif stat.S_ISLNK(mode):
                try:
                    target = os.readlink(de.path)
                except OSError as exc:
                    raise InputError(f"{de.path}: cannot read symlink ({exc.strerror})") from None
                out.entries.append(
                    FileEntry(rel, SYMLINK, len(target), stat.S_IMODE(mode), lst.st_mtime_ns, target)
                )
            else:
                out.skipped.append(rel)
    return out


def chunk_file(
    abs_path: str, params: ChunkParams, hfn: Any = None
) -> tuple[os.stat_result, array, bytes, int]:
    """Chunk one regular file: ``(stat, lengths, digests, read_started_ns)``.

    A file quiet for :data:`HOT_FILE_S` is memory-mapped and cut in place (no read copies); a file
    modified more recently is streamed, because a writer that truncates a mapped file makes the
    next access fault (SIGBUS) instead of failing a read. Raises :class:`InputError` naming the
    file when it cannot be read, or when it keeps changing while it is read.
    """
    hfn = hfn or digest_function(params.digest)
    for _attempt in range(3):
        started = time.time_ns()
        try:
            fd = os.open(abs_path, _O_FLAGS)
        except PermissionError:
            raise InputError(f"{abs_path}: file is not readable (permission denied)") from None
        except OSError as exc:
            raise InputError(f"{abs_path}: cannot open ({exc.strerror})") from None
        with open(fd, "rb", buffering=0) as f:
            before = os.fstat(fd)
            lengths = array("I")
            parts: list[bytes] = []
            quiet = started - max(before.st_mtime_ns, before.st_ctime_ns) > HOT_FILE_S * 1e9
            try:
                if not (
                    before.st_size
                    and quiet
                    and _chunk_mapped(fd, before.st_size, params, hfn, lengths, parts)
                ):
                    for data in iter_chunks(f, params):  # type: ignore[arg-type]
                        lengths.append(len(data))
                        parts.append(hfn(data))
            except OSError as exc:
                raise InputError(f"{abs_path}: read failed ({exc.strerror})") from None
            after = os.fstat(fd)
        if stat_key(before) == stat_key(after) and sum(lengths) == before.st_size:
            return before, lengths, b"".join(parts), started
    raise InputError(f"{abs_path}: file keeps changing while it is read; fingerprint it when it is quiet")


def _chunk_mapped(fd: int, size: int, params: ChunkParams, hfn: Any, lengths: array, parts: list) -> bool:
    """Cut the mapped file into ``lengths``/``parts``; False (nothing appended) where the file system
    refuses the mapping (some FUSE and special file systems): then the file is streamed."""
    try:
        m = map_file(fd, size)
    except OSError:
        return False
    try:
        chunks = iter_mapped_chunks(memoryview(m), params)
        read = getattr(hfn, "read_chunks", None)  # a digest function that reads the bytes itself
        pos = run_start = 0
        run: list[int] = []
        try:
            for data in chunks:
                n = len(data)
                lengths.append(n)
                if read is None:
                    parts.append(hfn(data))
                else:  # a run of RUN_BYTES is cut, then read, hashed and written while in cache
                    run.append(n)
                    if pos + n - run_start >= RUN_BYTES:
                        parts.append(read(fd, run_start, run))
                        run_start, run = pos + n, []
                pos += n
                data = None  # noqa: F841 - no view may outlive the mapping
            if run:
                parts.append(read(fd, run_start, run))
        finally:
            chunks.close()
    finally:
        with contextlib.suppress(BufferError):  # a view still held (a traceback): unmapped when freed
            m.close()
    return True


def _prefetch_parquet() -> Any:
    # the manifest is written with pyarrow (~0.2 s to import): overlap that with chunking
    def load() -> None:
        # an import failure surfaces later, where pyarrow is really needed
        with contextlib.suppress(Exception):
            import pyarrow.parquet  # noqa: F401

    import threading

    t = threading.Thread(target=load, name="spotshift-prefetch-pyarrow", daemon=True)
    t.start()
    return t


def fingerprint(
    source: str | os.PathLike[str],
    params: ChunkParams | None = None,
    *,
    workers: int | None = None,
    use_cache: bool = True,
    cache_path: str | os.PathLike[str] | None = None,
    prefetch_parquet: bool = False,
    progress: Progress = NO_PROGRESS,
    digest_with: Any = None,
) -> Fingerprint:
    """The manifest of the tree at ``source`` (a directory path or ``file://`` URL) and pass statistics.

    ``prefetch_parquet`` starts importing pyarrow in the background when files must be read, for
    callers that will write the manifest next (it overlaps the import with chunking). ``progress``
    gets one task: the bytes of the files that must be read (cached files are not). ``digest_with``
    (``chunk bytes -> digest``, called from the chunking threads) replaces the digest function of
    ``params.digest``: a push's :class:`~spotshift.sync.inline.InlineWriter` writes chunks as they are cut.
    """
    t0 = time.perf_counter()
    params = params or ChunkParams()
    root = Path(local_path(source)).expanduser().resolve()
    walked = _walk(root)
    workers = check_workers(workers, default_workers())
    stats = FingerprintStats(workers=workers, skipped=sorted(walked.skipped))
    cache = FilesCache(cache_path) if use_cache else None
    try:
        cached = cache.load_tree(params.key, str(root)) if cache else {}
        todo: list[tuple[str, str, os.stat_result]] = []
        for rel, abs_path, lst in walked.files:
            hit = cached.get(abs_path)
            if hit is not None and hit[0] == stat_key(lst):
                lengths, digests = unpack_chunks(hit[1])
                walked.entries.append(
                    FileEntry(
                        rel,
                        FILE,
                        lst.st_size,
                        stat.S_IMODE(lst.st_mode),
                        lst.st_mtime_ns,
                        None,
                        lengths,
                        digests,
                    )
                )
                stats.cache_hits += 1
            else:
                todo.append((rel, abs_path, lst))
        prefetcher = _prefetch_parquet() if todo and prefetch_parquet else None
        try:
            if todo:
                task = progress.task(
                    f"fingerprint {root.name}", total=sum(t[2].st_size for t in todo), unit="bytes"
                )
                _chunk_all(todo, params, workers, cache, walked.entries, stats, task, digest_with)
        except BaseException:
            # never exit while a thread is half-way through importing pyarrow (it can abort the process)
            if prefetcher is not None:
                prefetcher.join(timeout=30)
            raise
        if cache:
            cache.forget_missing(params.key, str(root), {a for _, a, _ in walked.files})
            cache.commit()
    finally:
        if cache:
            cache.close()
    manifest = Manifest(params, walked.entries)
    for e in manifest.entries:
        if e.kind == FILE:
            stats.files += 1
            stats.bytes_total += e.size
            stats.chunks += e.chunk_count
        elif e.kind == DIR:
            stats.dirs += 1
        else:
            stats.symlinks += 1
    stats.seconds = time.perf_counter() - t0
    return Fingerprint(manifest, stats)


def _chunk_all(
    todo: list[tuple[str, str, os.stat_result]],
    params: ChunkParams,
    workers: int,
    cache: FilesCache | None,
    entries: list[FileEntry],
    stats: FingerprintStats,
    task: Task,
    digest_with: Any = None,
) -> None:
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait  # not needed on cached runs

    hfn = digest_with or digest_function(params.digest)
    todo.sort(key=lambda t: -t[2].st_size)  # largest first balances the threads
    last_commit = time.monotonic()
    with ThreadPoolExecutor(
        max_workers=min(workers, len(todo)), thread_name_prefix="spotshift-chunk"
    ) as pool:
        futures = {
            pool.submit(chunk_file, abs_path, params, hfn): (rel, abs_path) for rel, abs_path, _ in todo
        }
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                exc = fut.exception()
                if exc is not None:
                    for p in pending:
                        p.cancel()
                    raise exc
                rel, abs_path = futures[fut]
                st, lengths, digests, started = fut.result()
                entries.append(
                    FileEntry(
                        rel,
                        FILE,
                        st.st_size,
                        stat.S_IMODE(st.st_mode),
                        st.st_mtime_ns,
                        None,
                        lengths,
                        digests,
                    )
                )
                stats.bytes_read += st.st_size
                stats.files_read += 1
                task.advance(st.st_size)
                if cache is not None:
                    cache.put(params.key, abs_path, st, lengths, digests, started)
            if cache is not None and time.monotonic() - last_commit > _COMMIT_EVERY_S:
                cache.commit()  # a killed run keeps what it finished
                last_commit = time.monotonic()


def local_path(source: str | os.PathLike[str]) -> str:
    """A local directory from a path or ``file://`` URL; :class:`InputError` for other URL schemes."""
    text = os.fspath(source)
    if "://" in text:
        from urllib.parse import unquote, urlparse

        parsed = urlparse(text)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise InputError(f"{text}: a dataset source must be a local directory or file:/// URL")
        return unquote(parsed.path)
    return text
