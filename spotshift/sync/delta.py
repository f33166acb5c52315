"""Delta sync, the algorithm every verb shares: plan what the target lacks, send it, commit.

Every operation moves only chunks the other side lacks:

1. diff the source snapshot against the target's current snapshot of the dataset (Merkle
   subtrees with equal hashes are skipped whole) — :func:`plan_transfer`,
2. ask the target whether each remaining chunk is already there (a killed earlier run, another
   dataset), and send the rest on a thread pool with a bounded number of bytes in flight
   (:func:`bytes_in_flight`), checking every chunk's digest before it is written,
3. commit: write the manifest (once, named by its root), then the dataset's pointer —
   :func:`commit`.

A kill at any moment leaves at worst unreferenced chunks (and a stale temp file, which the next
writer of a local store removes); a rerun sends only what is still missing. No pointer ever names
a manifest whose chunks are not all present.

The verbs, one module each (as restic splits archiver, restorer and checker):
:mod:`spotshift.sync.archiver` (``push`` a directory into a store),
:mod:`spotshift.sync.replicator` (``replicate`` a snapshot between stores),
:mod:`spotshift.sync.restorer` (``pull`` a snapshot into a directory) and
:mod:`spotshift.sync.checker` (``verify`` a store, with repair).
"""

from __future__ import annotations

import time

from spotshift.errors import ConfigError, IntegrityError, NotFoundError
from spotshift.home import location_of_store
from spotshift.pricing.regions import check_location
from spotshift.sync.chunking import ChunkParams
from spotshift.sync.diff import Diff, diff
from spotshift.sync.manifest import Manifest
from spotshift.sync.packs import Location, present_in_packs
from spotshift.sync.refs import Ref, load_manifest, read_ref, record_snapshot, store_manifest, write_ref
from spotshift.sync.store import ChunkStore, LocalChunkStore
from spotshift.sync.store_url import open_store
from spotshift.sync.transfer import TransferStats, check_workers

#: default bytes of chunk payload in flight per operation (the memory bound of a transfer)
DEFAULT_BUDGET_BYTES = 64 * 1024 * 1024
#: how long a writer waits for a running prune to release the store before it gives up
LOCK_WAIT_S = 60.0


def as_store(store: ChunkStore | str) -> ChunkStore:
    return open_store(store) if isinstance(store, str) else store


def default_io_workers(store: ChunkStore) -> int:
    """Local disks saturate with a few writers; object stores want many requests in flight."""
    return 4 if isinstance(store, LocalChunkStore) else 16


def io_workers(workers: int | None, store: ChunkStore) -> int:
    return check_workers(workers, default_io_workers(store))


def transfer_location(explicit: str | None, store_url: str | None = None) -> str | None:
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


def bytes_in_flight(params: ChunkParams, budget_bytes: int | None) -> int:
    return budget_bytes or max(DEFAULT_BUDGET_BYTES, 2 * params.max_size)


def _prepare_target(store: ChunkStore) -> None:
    store.remove_stale_temp_files()  # what killed writers left behind


def chunk_writer(store: ChunkStore) -> ChunkStore:
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


def target_snapshot(store: ChunkStore, dataset: str, params: ChunkParams) -> tuple[Manifest | None, int]:
    """The target's current snapshot of ``dataset`` when comparable (same chunking) and the bytes
    read for it, after removing the temp files killed writers left: read once per transfer."""
    _prepare_target(store)
    return _target_manifest(store, dataset, params)


def trusted_chunks(store: ChunkStore, old: Manifest | None, check_existing: bool) -> set[bytes]:
    """Chunks a push need not write: those of the target's snapshot ``old``, or with
    ``check_existing`` only those its pack index places in a pack that is there and long enough
    (as :func:`plan_transfer` decides)."""
    if old is None:
        return set()
    if check_existing:
        return set(present_in_packs(store, old.unique_chunks(), old.locations))
    return set(old.unique_chunks())


def plan_transfer(  # noqa: PLR0913 - the transfer's state, passed once
    target: ChunkStore,
    dataset: str,
    manifest: Manifest,
    check_existing: bool,
    stats: TransferStats,
    snapshot: tuple[Manifest | None, int] | None = None,
) -> tuple[Diff | None, dict[bytes, Location]]:
    """What ``manifest`` has that the target's current snapshot lacks (None when the target is at
    it), and where the target already has chunks (its snapshot's pack index). ``snapshot``: the
    :func:`target_snapshot` the caller already read (else it is read here).

    With ``check_existing`` that snapshot is not trusted: every chunk counts as missing except
    those its pack index places in a pack that is there and long enough (loose chunks are looked
    up one by one when they are sent).
    """
    old, read = snapshot if snapshot is not None else target_snapshot(target, dataset, manifest.params)
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


def with_pack_index(manifest: Manifest, old: dict[bytes, Location], new: dict[bytes, Location]) -> Manifest:
    """``manifest`` with the target's pack index: new packs, else where the target already had them."""
    if not old and not new:
        return manifest.with_locations({}) if manifest.locations else manifest
    locs = {d: old[d] for d in manifest.unique_chunks() if d in old} if old else {}
    locs.update(new)
    return manifest.with_locations(locs)


def commit(
    store: ChunkStore, dataset: str, manifest: Manifest, raw: bytes | None, stats: TransferStats
) -> None:
    written = store_manifest(store, manifest, raw)
    ref = Ref.for_manifest(dataset, manifest)
    written += record_snapshot(store, ref)  # the dataset's history, before the pointer
    ref_bytes = write_ref(store, ref)
    stats.metadata_bytes_sent += written + ref_bytes
    stats.bytes_sent += written + ref_bytes


def finish(stats: TransferStats, manifest: Manifest, t0: float) -> TransferStats:
    uniq = manifest.unique_chunks()
    stats.root = manifest.root
    stats.bytes_full = manifest.total_bytes
    stats.chunks_total = len(uniq)
    stats.files_total = manifest.file_count
    stats.price()
    stats.seconds = time.perf_counter() - t0
    return stats
