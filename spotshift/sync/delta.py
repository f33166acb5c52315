"""Delta sync: push a directory into a store, replicate a snapshot between stores, pull, verify and repair.

Every operation moves only chunks the other side lacks:

1. diff the source snapshot against the target's current snapshot of the dataset (Merkle
   subtrees with equal hashes are skipped whole),
2. ask the target whether each remaining chunk is already there (a killed earlier run, another
   dataset), and send the rest on a thread pool with a bounded number of bytes in flight, checking
   every chunk's digest before it is written,
3. commit: write the manifest (once, named by its root), then the dataset's pointer.

A kill at any moment leaves at worst unreferenced chunks (and a stale temp file, which the next
writer of a local store removes); a rerun sends only what is still missing. No pointer ever names
a manifest whose chunks are not all present.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spotshift.atomic import remove_stale_temp_files, temp_path
from spotshift.errors import ConfigError, InputError, IntegrityError, NotFoundError
from spotshift.home import location_of_store
from spotshift.pricing.regions import check_location
from spotshift.progress import NO_PROGRESS, Progress
from spotshift.sync.chunking import ChunkParams, digest_function
from spotshift.sync.fingerprint import Fingerprint, fingerprint, local_path
from spotshift.sync.locks import store_lock
from spotshift.sync.manifest import DIR, ROOT_PATH, SYMLINK, Diff, FileEntry, Manifest, diff
from spotshift.sync.packs import (
    Location,
    PackPlan,
    chunk_state,
    has_pack,
    present_in_packs,
    read_chunk,
    write_pack,
)
from spotshift.sync.refs import (
    Ref,
    check_dataset_name,
    list_datasets,
    load_manifest,
    manifest_key,
    read_ref,
    record_snapshot,
    resolve_dataset,
    store_manifest,
    write_ref,
)
from spotshift.sync.sender import Located, SourceSender
from spotshift.sync.store import ChunkStore, LocalChunkStore, chunk_key, syncfs
from spotshift.sync.store_url import open_store
from spotshift.sync.transfer import BoundedPool, TransferStats, check_workers

#: default bytes of chunk payload in flight per operation (the memory bound of a transfer)
DEFAULT_BUDGET_BYTES = 64 * 1024 * 1024
#: how long a writer waits for a running prune to release the store before it gives up
LOCK_WAIT_S = 60.0


def _store(store: ChunkStore | str) -> ChunkStore:
    return open_store(store) if isinstance(store, str) else store


def default_io_workers(store: ChunkStore) -> int:
    """Local disks saturate with a few writers; object stores want many requests in flight."""
    return 4 if isinstance(store, LocalChunkStore) else 16


def _io_workers(workers: int | None, store: ChunkStore) -> int:
    return check_workers(workers, default_io_workers(store))


def _location(explicit: str | None, store_url: str | None = None) -> str | None:
    """A transfer end's location: ``explicit`` (validated: ``provider/region[/zone]`` of a known
    region), else the region store ``store_url`` is, when it is a known one (else unpriced)."""
    if explicit is not None:
        return check_location(explicit, "location", zone=True)
    derived = location_of_store(store_url) if store_url else None
    if derived is None:
        return None
    try:
        return check_location(derived)
    except ConfigError:
        return None


def _budget(params: ChunkParams, budget_bytes: int | None) -> int:
    return budget_bytes or max(DEFAULT_BUDGET_BYTES, 2 * params.max_size)


def _prepare_target(store: ChunkStore) -> None:
    store.remove_stale_temp_files()  # what killed writers left behind


def _chunk_writer(store: ChunkStore) -> ChunkStore:
    """Where a sync writes chunks: local stores defer durability to one flush before the commit."""
    if isinstance(store, LocalChunkStore) and store.fsync_each:
        return LocalChunkStore(store.root, fsync_each=False)
    return store


def _target_manifest(store: ChunkStore, dataset: str, params: ChunkParams) -> tuple[Manifest | None, int]:
    """The target's current snapshot of ``dataset`` when comparable (same chunking), and bytes read."""
    try:
        ref = read_ref(store, dataset)
    except IntegrityError:
        return None, 0  # a corrupt pointer is replaced by this commit
    if ref is None or ref.chunk_params != params:
        return None, 0
    try:
        manifest, raw = load_manifest(store, ref.root)
    except (NotFoundError, IntegrityError):
        return None, 0  # diff against nothing: every chunk is checked in the store
    return manifest, len(raw)


def _plan(
    target: ChunkStore, dataset: str, manifest: Manifest, check_existing: bool, stats: TransferStats
) -> tuple[Diff | None, dict[bytes, Location]]:
    """What ``manifest`` has that the target's current snapshot lacks (None when the target is at
    it), and where the target already has chunks (its snapshot's pack index).

    With ``check_existing`` that snapshot is not trusted: every chunk counts as missing except
    those its pack index places in a pack that is there and long enough (loose chunks are looked
    up one by one when they are sent).
    """
    _prepare_target(target)
    old, read = _target_manifest(target, dataset, manifest.params)
    stats.bytes_scanned += read
    if check_existing:
        d = diff(manifest, None)
        stats.files_changed = len(d.changed_files)
        if old is None:
            return d, {}
        present = present_in_packs(target, d.missing_chunks(), old.locations)
        d.target_chunks.update(present)
        return d, present
    if old is not None and old.root == manifest.root:
        stats.dirs_pruned = 1
        return None, old.locations
    d = diff(manifest, old)
    stats.files_changed, stats.dirs_pruned = len(d.changed_files), d.dirs_pruned
    return d, old.locations if old is not None else {}


def _pack_index(manifest: Manifest, old: dict[bytes, Location], new: dict[bytes, Location]) -> Manifest:
    """``manifest`` with the target's pack index: new packs, else where the target already had them."""
    if not old and not new:
        return manifest.with_locations({}) if manifest.locations else manifest
    locs = {d: old[d] for d in manifest.unique_chunks() if d in old} if old else {}
    locs.update(new)
    return manifest.with_locations(locs)


def _commit(
    store: ChunkStore, dataset: str, manifest: Manifest, raw: bytes | None, stats: TransferStats
) -> None:
    written = store_manifest(store, manifest, raw)
    ref = Ref.for_manifest(dataset, manifest)
    written += record_snapshot(store, ref)  # the dataset's history, before the pointer
    ref_bytes = write_ref(store, ref)
    stats.metadata_bytes_sent += written + ref_bytes
    stats.bytes_sent += written + ref_bytes


def _finish(stats: TransferStats, manifest: Manifest, t0: float) -> TransferStats:
    uniq = manifest.unique_chunks()
    stats.root = manifest.root
    stats.bytes_full = manifest.total_bytes
    stats.chunks_total = len(uniq)
    stats.files_total = manifest.file_count
    stats.price()
    stats.seconds = time.perf_counter() - t0
    return stats


# ---- push ------------------------------------------------------------------------------------------
def push(
    source: str | os.PathLike[str] | Fingerprint,
    store: ChunkStore | str,
    dataset: str,
    *,
    params: ChunkParams | None = None,
    source_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    budget_bytes: int | None = None,
    src_location: str | None = None,
    dst_location: str | None = None,
    check_existing: bool = False,
    lock_wait_s: float = LOCK_WAIT_S,
    progress: Progress = NO_PROGRESS,
) -> TransferStats:
    """Snapshot the directory ``source`` into ``store`` as ``dataset``; send only missing chunks.

    ``source`` may be a :class:`Fingerprint` already computed (then ``source_dir`` names the tree
    it describes). Chunks of the store's current snapshot are trusted to be present unless
    ``check_existing`` (then every chunk is looked up and missing ones are sent again). Raises
    :class:`InputError` when a file changed since it was fingerprinted. Holds a shared lock on
    ``store`` (:mod:`spotshift.sync.locks`) while it plans, sends and commits; waits up to
    ``lock_wait_s`` while a prune holds the store (then :class:`~spotshift.sync.locks.LockedError`).
    """
    t0 = time.perf_counter()
    check_dataset_name(dataset)
    store = _store(store)
    workers = _io_workers(workers, store)
    src_location = _location(src_location)
    dst_location = _location(dst_location, store.url)
    if isinstance(source, Fingerprint):
        if source_dir is None:
            raise ConfigError("push of a Fingerprint needs source_dir")
        fp, root_dir = source, Path(local_path(source_dir)).resolve()
    else:
        root_dir = Path(local_path(source)).resolve()
        fp = fingerprint(root_dir, params, prefetch_parquet=True, progress=progress)
    manifest = fp.manifest
    stats = TransferStats(
        dataset,
        src=str(root_dir),
        dst=store.url,
        src_location=src_location,
        dst_location=dst_location,
        bytes_scanned=fp.stats.bytes_read,
    )
    # shared store lock from the plan to the commit: a prune never deletes a chunk this push found
    # present (and so did not send) before the manifest naming it is committed
    with store_lock(store, "shared", f"sync push {dataset}", wait_s=lock_wait_s):
        d, old_locs = _plan(store, dataset, manifest, check_existing, stats)
        if d is None:
            return _finish(stats, manifest, t0)
        missing = d.missing_chunks()
        # where each missing chunk can be read, in file order so reads stay sequential
        located: dict[bytes, Located] = {}
        for e in d.changed_files:
            for off, length, dig in e.chunks():
                if dig in missing and dig not in located:
                    located[dig] = Located(e.path, off, length)
        plan = PackPlan((dig, loc.length) for dig, loc in located.items())
        total = sum(x.length for x in located.values())
        sender = SourceSender(root_dir, manifest.params, _chunk_writer(store), stats)
        sender.task = progress.task(f"push {dataset}", total=total, unit="bytes")
        with BoundedPool(workers, _budget(manifest.params, budget_bytes)) as pool:
            sender.pool = pool
            for dig, _ in plan.loose:
                pool.submit(located[dig].length, sender.send_loose, dig, located[dig])
            for pack_id, items in plan.packs:
                parts = [(dig, located[dig]) for dig, _ in items]
                pool.submit(sum(n for _, n in items), sender.send_pack, pack_id, parts)
        sender.writer.flush()  # every chunk and pack durable before the manifest that names it
        _commit(store, dataset, _pack_index(manifest, old_locs, plan.locations), None, stats)
        return _finish(stats, manifest, t0)


# ---- replicate -------------------------------------------------------------------------------------
def replicate(
    src_store: ChunkStore | str,
    dst_store: ChunkStore | str,
    dataset: str,
    *,
    root: str | None = None,
    workers: int | None = None,
    budget_bytes: int | None = None,
    src_location: str | None = None,
    dst_location: str | None = None,
    check_existing: bool = False,
    lock_wait_s: float = LOCK_WAIT_S,
    progress: Progress = NO_PROGRESS,
) -> TransferStats:
    """Copy ``dataset``'s snapshot (its latest, or ``root``) from one store to another, delta only.

    Every chunk read from the source is checked against its digest before it is written. With
    ``check_existing`` the target's current snapshot is not trusted: every chunk is looked up in
    the target and missing ones are copied again (repairs a damaged replica).
    """
    t0 = time.perf_counter()
    check_dataset_name(dataset)
    src, dst = _store(src_store), _store(dst_store)
    workers = _io_workers(workers, dst)
    src_location, dst_location = _location(src_location, src.url), _location(dst_location, dst.url)
    if root is None:
        _, ref = resolve_dataset(src, dataset)
        root = ref.root
    manifest, raw = load_manifest(src, root)
    stats = TransferStats(
        dataset,
        src=src.url,
        dst=dst.url,
        src_location=src_location,
        dst_location=dst_location,
        bytes_scanned=len(raw),
    )
    with store_lock(dst, "shared", f"sync replicate {dataset}", wait_s=lock_wait_s):
        d, old_locs = _plan(dst, dataset, manifest, check_existing, stats)
        if d is None:
            return _finish(stats, manifest, t0)
        missing = d.missing_chunks()
        hfn = digest_function(manifest.params.digest)
        plan = PackPlan(missing.items())
        writer = _chunk_writer(dst)
        task = progress.task(f"replicate {dataset}", total=sum(missing.values()), unit="bytes")

        def fetch(dig: bytes, length: int) -> bytes:
            data = read_chunk(src, dig, length, hfn, manifest.locations.get(dig))
            if data is None:
                raise IntegrityError(
                    f"chunk {dig.hex()} in {src.url} is missing or corrupt; run `spotshift sync verify --repair`"
                )
            return data

        def sent(chunks: int, nbytes: int) -> None:
            task.advance(nbytes)
            with pool.lock:
                stats.chunks_sent += chunks
                stats.bytes_sent += nbytes
                stats.bytes_changed += nbytes

        def copy(dig: bytes, length: int) -> None:
            if writer.has_chunk(dig.hex()):
                task.advance(length)
                return
            writer.put_chunk(dig.hex(), fetch(dig, length))
            sent(1, length)

        def copy_pack(pack_id: str, items: list[tuple[bytes, int]]) -> None:
            if has_pack(writer, pack_id, sum(n for _, n in items)):
                task.advance(sum(n for _, n in items))
                return
            buf = bytearray()
            for dig, length in items:
                buf += fetch(dig, length)
            write_pack(writer, pack_id, buf)
            sent(len(items), len(buf))

        with BoundedPool(workers, _budget(manifest.params, budget_bytes)) as pool:
            for dig, length in plan.loose:
                pool.submit(length, copy, dig, length)
            for pack_id, items in plan.packs:
                pool.submit(sum(n for _, n in items), copy_pack, pack_id, items)
        writer.flush()  # every chunk and pack durable before the manifest that names it
        target = _pack_index(manifest, old_locs, plan.locations)
        # the source's bytes describe the source's packs: rewrite them when either side has packs
        _commit(dst, dataset, target, raw if target is manifest else None, stats)
        return _finish(stats, manifest, t0)


def _hex_fn(params: ChunkParams) -> Any:
    fn = digest_function(params.digest)
    return lambda data: fn(data).hex()


# ---- pull ------------------------------------------------------------------------------------------
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
    store = _store(store)
    workers = _io_workers(workers, store)
    src_location, dst_location = _location(src_location, store.url), _location(dst_location)
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
    local: Manifest | None = None
    if reuse_local and dest_dir.is_dir() and any(dest_dir.iterdir()):
        fp = fingerprint(dest_dir, manifest.params, progress=progress)
        local = fp.manifest
        stats.bytes_scanned += fp.stats.bytes_read
    local_chunks: dict[bytes, tuple[str, int, int]] = {}
    if local is not None:
        for e in local.files():
            for off, length, dig in e.chunks():
                local_chunks.setdefault(dig, (str(dest_dir / e.path), off, length))
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
        with BoundedPool(workers, _budget(manifest.params, budget_bytes)) as pool:
            writer.pool = pool
            for e in manifest.files():
                if e.path in changed:
                    writer.start(e)
    finally:
        writer.cleanup()
    for e in sorted((e for e in manifest.entries if e.kind == DIR), key=lambda e: -e.path.count("/")):
        _restore_meta(dest_dir if e.path == ROOT_PATH else dest_dir / e.path, e, mode_mask)
    syncfs(dest_dir)
    return _finish(stats, manifest, t0)


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
@dataclass
class DatasetReport:
    """What verify found for one dataset's latest snapshot in one store."""

    dataset: str
    root: str = ""
    chunks_checked: int = 0
    bytes_checked: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    manifest_error: str | None = None
    manifest_repaired: bool = False

    @property
    def ok(self) -> bool:
        bad = set(self.missing) | set(self.corrupt)
        return (self.manifest_error is None or self.manifest_repaired) and bad <= set(self.repaired)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "root": self.root,
            "ok": self.ok,
            "chunks_checked": self.chunks_checked,
            "bytes_checked": self.bytes_checked,
            "missing": self.missing,
            "corrupt": self.corrupt,
            "repaired": self.repaired,
            "manifest_error": self.manifest_error,
            "manifest_repaired": self.manifest_repaired,
        }


@dataclass
class VerifyReport:
    store: str
    datasets: list[DatasetReport]
    seconds: float = 0.0
    full: bool = True
    #: temp files killed writers left in the store (paths), their bytes, and how many a repair removed
    leftover_temp_files: list[str] = field(default_factory=list)
    leftover_temp_bytes: int = 0
    leftovers_removed: int = 0

    @property
    def ok(self) -> bool:
        """Every snapshot is intact (leftover temp files cost space, not integrity)."""
        return all(d.ok for d in self.datasets)

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "ok": self.ok,
            "full": self.full,
            "seconds": self.seconds,
            "datasets": [d.to_dict() for d in self.datasets],
            "leftover_temp_files": self.leftover_temp_files,
            "leftover_temp_bytes": self.leftover_temp_bytes,
            "leftovers_removed": self.leftovers_removed,
        }


class _RepairSource:
    """Where good copies of chunks come from: another store, or the original directory re-chunked."""

    def __init__(self, spec: ChunkStore | str | os.PathLike[str]):
        self.store: ChunkStore | None = None
        self.dir: Path | None = None
        if isinstance(spec, ChunkStore):
            self.store = spec
        elif isinstance(spec, str) and "://" in spec and not spec.startswith("file://"):
            self.store = open_store(spec)
        else:
            p = Path(local_path(spec)).expanduser()
            if not p.is_dir():
                raise InputError(f"{p}: repair source is not a directory")
            # a directory holding a store (refs/ and chunks/) is a store, anything else is a source tree
            holds = (p / "chunks").is_dir() or (p / "packs").is_dir()
            self.store = LocalChunkStore(p) if holds and (p / "refs").is_dir() else None
            self.dir = None if self.store else p.resolve()
        self._index: dict[str, dict[bytes, tuple[str, int, int]]] = {}
        self._fps: dict[str, Manifest] = {}
        self._locations: dict[str, dict[bytes, Location]] = {}

    def describe(self) -> str:
        return self.store.url if self.store else str(self.dir)

    def _tree(self, params: ChunkParams) -> tuple[Manifest, dict[bytes, tuple[str, int, int]]]:
        assert self.dir is not None
        if params.key not in self._index:
            m = fingerprint(self.dir, params).manifest
            idx: dict[bytes, tuple[str, int, int]] = {}
            for e in m.files():
                for off, length, dig in e.chunks():
                    idx.setdefault(dig, (str(self.dir / e.path), off, length))
            self._index[params.key], self._fps[params.key] = idx, m
        return self._fps[params.key], self._index[params.key]

    def _store_locations(self, root: str) -> dict[bytes, Location]:
        """The pack index of snapshot ``root`` in the source store (empty when it has none)."""
        assert self.store is not None
        if root not in self._locations:
            try:
                self._locations[root] = load_manifest(self.store, root)[0].locations
            except (NotFoundError, IntegrityError):
                self._locations[root] = {}
        return self._locations[root]

    def chunk(self, hex_: str, length: int, params: ChunkParams, root: str) -> bytes | None:
        """A good copy of the chunk (checked against its digest), or None."""
        hexfn = _hex_fn(params)
        if self.store is not None:
            dig = bytes.fromhex(hex_)
            hfn = digest_function(params.digest)
            try:
                return read_chunk(self.store, dig, length, hfn, self._store_locations(root).get(dig))
            except (NotFoundError, IntegrityError):
                return None
        _, idx = self._tree(params)
        hit = idx.get(bytes.fromhex(hex_))
        if hit is None:
            return None
        with open(hit[0], "rb") as f:
            f.seek(hit[1])
            data = f.read(hit[2])
        return data if hexfn(data) == hex_ else None

    def manifest(self, root: str, params: ChunkParams | None) -> bytes | None:
        if self.store is not None:
            try:
                return load_manifest(self.store, root)[1]
            except (NotFoundError, IntegrityError):
                return None
        if params is None:
            return None
        m, _ = self._tree(params)
        return m.to_parquet_bytes() if m.root == root else None


def verify(
    store: ChunkStore | str,
    dataset: str | None = None,
    *,
    repair_from: ChunkStore | str | os.PathLike[str] | None = None,
    full: bool = True,
    workers: int | None = None,
    budget_bytes: int | None = None,
    lock_wait_s: float = LOCK_WAIT_S,
) -> VerifyReport:
    """Check every chunk of each dataset's latest snapshot in ``store`` (or of ``dataset`` only).

    ``full`` reads every chunk and checks its digest; otherwise only presence and size are checked.
    With ``repair_from`` (another store, or the original directory), missing or corrupt chunks and
    a missing or tampered manifest are rewritten from there, and re-checked. Temp files that killed
    writers left in the store are reported (and removed by a repair).
    """
    t0 = time.perf_counter()
    store = _store(store)
    workers = _io_workers(workers, store)
    names = [check_dataset_name(dataset)] if dataset else list_datasets(store)
    if dataset is None and not names:
        raise NotFoundError(f"{store.url} holds no dataset (no refs/<dataset>/latest)")
    source = _RepairSource(repair_from) if repair_from is not None else None
    with contextlib.ExitStack() as stack:
        if source is not None:  # a repair writes chunks: hold the store against a prune, like a push
            stack.enter_context(store_lock(store, "shared", "sync verify --repair", wait_s=lock_wait_s))
        return _verify(store, names, source, full, workers, budget_bytes, t0)


def _verify(
    store: ChunkStore,
    names: list[str],
    source: _RepairSource | None,
    full: bool,
    workers: int | None,
    budget_bytes: int | None,
    t0: float,
) -> VerifyReport:
    report = VerifyReport(store.url, [], full=full)
    leftovers = store.stale_temp_files()
    report.leftover_temp_files = [str(t.path) for t in leftovers]
    report.leftover_temp_bytes = sum(t.bytes for t in leftovers)
    if source is not None and leftovers:
        report.leftovers_removed = store.remove_stale_temp_files()
    checked: dict[str, str] = {}  # chunk hex -> "ok" | "missing" | "corrupt" (shared across datasets)
    for name in names:
        rep = DatasetReport(name)
        report.datasets.append(rep)
        try:
            ref = read_ref(store, name)
        except IntegrityError as exc:
            rep.manifest_error = str(exc)
            continue
        if ref is None:
            rep.manifest_error = f"dataset {name!r} has no snapshot in {store.url}"
            continue
        rep.root = ref.root
        manifest = _verified_manifest(store, ref, rep, source)
        if manifest is None:
            continue
        _check_chunks(store, manifest, rep, checked, full, workers, budget_bytes)
        if source is not None and (rep.missing or rep.corrupt):
            _repair_chunks(store, manifest, rep, source, checked)
    report.seconds = time.perf_counter() - t0
    return report


def _verified_manifest(
    store: ChunkStore, ref: Ref, rep: DatasetReport, source: _RepairSource | None
) -> Manifest | None:
    try:
        return load_manifest(store, ref.root)[0]
    except (NotFoundError, IntegrityError) as exc:
        rep.manifest_error = str(exc)
    if source is None:
        return None
    raw = source.manifest(ref.root, ref.chunk_params)
    if raw is None:
        return None
    store.put_bytes(manifest_key(ref.root), raw)  # replace the bad copy
    rep.manifest_repaired = True
    return load_manifest(store, ref.root)[0]


def _check_chunks(
    store: ChunkStore,
    manifest: Manifest,
    rep: DatasetReport,
    checked: dict[str, str],
    full: bool,
    workers: int | None,
    budget_bytes: int | None,
) -> None:
    hfn = digest_function(manifest.params.digest) if full else None
    pack_sizes: dict[str, int | None] = {}  # presence checks: one size lookup per pack

    def check(hex_: str, length: int) -> None:
        dig = bytes.fromhex(hex_)
        state = chunk_state(store, dig, length, hfn, manifest.locations.get(dig), pack_sizes)  # type: ignore[arg-type]
        with pool.lock:
            checked[hex_] = state

    todo = [(d.hex(), n) for d, n in manifest.unique_chunks().items()]
    with BoundedPool(workers, _budget(manifest.params, budget_bytes)) as pool:
        for hex_, length in todo:
            if hex_ not in checked:
                pool.submit(length if full else 1, check, hex_, length)
    for hex_, length in todo:
        rep.chunks_checked += 1
        rep.bytes_checked += length
        state = checked[hex_]
        if state == "missing":
            rep.missing.append(hex_)
        elif state == "corrupt":
            rep.corrupt.append(hex_)


def _repair_chunks(
    store: ChunkStore, manifest: Manifest, rep: DatasetReport, source: _RepairSource, checked: dict[str, str]
) -> None:
    hfn = digest_function(manifest.params.digest)
    lengths = manifest.unique_chunks()
    for hex_ in [*rep.missing, *rep.corrupt]:
        if checked.get(hex_) == "ok":  # repaired for an earlier dataset of this run
            rep.repaired.append(hex_)
            continue
        dig = bytes.fromhex(hex_)
        data = source.chunk(hex_, lengths[dig], manifest.params, manifest.root)
        if data is None:
            continue
        # a good copy as its own object: readers fall back to it when the packed copy is damaged
        # (packs are never rewritten in place)
        store.put_bytes(chunk_key(hex_), data)
        ok = chunk_state(store, dig, len(data), hfn, manifest.locations.get(dig)) == "ok"
        if ok:
            checked[hex_] = "ok"
            rep.repaired.append(hex_)
