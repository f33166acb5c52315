"""Snapshot history and garbage collection of a store: ``spotshift sync snapshots`` and ``sync prune``.

:func:`list_snapshots` reads the history records (``snapshots/<dataset>/...``, one per commit),
marks the one each dataset's ``latest`` pointer names, and lists manifests no record names
(``untracked``: written by a push that died before recording it, or before stores kept history).

:func:`prune` is a mark-and-sweep collector designed like restic's ``prune``:

1. **lock** — take the store's exclusive lock (:mod:`spotshift.sync.locks`). Every push,
   replicate and repair holds a shared lock from its plan to its commit, so none is in flight
   while prune decides what is garbage; a prune that finds one refuses (exit 2) and deletes
   nothing. Stale locks of dead writers are removed.
2. **forget** — per dataset keep the ``keep`` newest snapshots, and always the one ``latest``
   names; delete the other history records.
3. **mark** — read and verify every manifest still referenced (kept records, every ``latest``,
   untracked manifests unless ``forget_untracked``); a referenced manifest that is missing or
   corrupt stops the prune before anything is deleted.
4. **sweep** — delete manifests nothing references, then chunks no referenced manifest names,
   then pack files no referenced manifest's pack index names. A pack is deleted only when no
   kept snapshot references any chunk in it; one that is partly referenced is kept whole (no
   repacking: a live object is never rewritten, its dead bytes wait until the whole pack is).
   Objects younger than ``grace_s`` are never deleted: a writer that does not take locks (an
   older spotshift, another tool) or a push that died mid-way and will be rerun keep their fresh
   chunks, and clock skew between hosts stays harmless.

Deleting in this order (records, manifests, chunks) means a prune killed at any point leaves
garbage for the next one, never a snapshot that names a missing chunk.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from spotshift.errors import ConfigError, IntegrityError, NotFoundError
from spotshift.sync.locks import store_lock
from spotshift.sync.packs import PACKS_PREFIX, referenced_packs
from spotshift.sync.refs import (
    MANIFESTS_PREFIX,
    Ref,
    list_datasets,
    load_manifest,
    manifest_key,
    read_ref,
    read_snapshots,
)
from spotshift.sync.store import CHUNK_PREFIX, ChunkStore, LocalChunkStore

#: default grace period: unreferenced objects younger than this survive a prune
DEFAULT_GRACE_S = 24 * 3600.0


@dataclass
class SnapshotInfo:
    """One snapshot of a store: a history record, a ``latest`` pointer, or an untracked manifest."""

    dataset: str | None  # None for an untracked manifest
    root: str
    committed_at: str | None
    files: int | None
    bytes: int | None  # logical size of the dataset at that snapshot
    chunks: int | None
    manifest_bytes: int | None  # size of the manifest object (None: missing)
    latest: bool
    record: str | None  # key of the history record (None: latest pointer or manifest only)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_snapshots(store: ChunkStore, dataset: str | None = None) -> list[SnapshotInfo]:
    """Every snapshot of ``store`` (of ``dataset`` only when given), per dataset newest first, then
    the untracked manifests. Sizes come from the records; ``manifest_bytes`` from the listing."""
    manifests = {
        info.key[len(MANIFESTS_PREFIX) : -len(".parquet")]: info.size
        for info in store.list_objects(MANIFESTS_PREFIX)
        if info.key.endswith(".parquet")
    }
    latest = {name: read_ref(store, name) for name in list_datasets(store)}
    out: list[SnapshotInfo] = []
    named: set[str] = set()
    records = read_snapshots(store)
    for name in sorted({r.dataset for _, r in records} | set(latest)):
        if dataset is not None and name != dataset:
            continue
        ref = latest.get(name)
        mine = [(k, r) for k, r in records if r.dataset == name]
        if ref is not None and all(r.root != ref.root for _, r in mine):
            mine.append((None, ref))  # a latest pointer written before the store kept history
        mine.sort(key=lambda kr: datetime.fromisoformat(kr[1].committed_at), reverse=True)
        for key, r in mine:
            out.append(_info(r, key, manifests, ref))
    for _, r in records:
        named.add(r.root)
    named |= {r.root for r in latest.values() if r is not None}
    if dataset is None:
        for root, size in sorted(manifests.items()):
            if root not in named:
                out.append(SnapshotInfo(None, root, None, None, None, None, size, False, None))
    return out


def _info(r: Ref, key: str | None, manifests: dict[str, int], latest: Ref | None) -> SnapshotInfo:
    return SnapshotInfo(
        r.dataset,
        r.root,
        r.committed_at,
        r.files,
        r.bytes,
        r.chunks,
        manifests.get(r.root),
        latest is not None and latest.root == r.root,
        key,
    )


@dataclass
class PruneReport:
    """What a prune forgot and deleted (or, with ``dry_run``, would have)."""

    store: str
    keep: int
    dry_run: bool
    grace_s: float
    forgotten: list[dict[str, Any]] = field(default_factory=list)  # {dataset, root, committed_at}
    kept_snapshots: int = 0
    untracked_kept: list[str] = field(default_factory=list)
    manifests_deleted: list[str] = field(default_factory=list)
    chunks_deleted: int = 0
    bytes_freed: int = 0
    chunks_kept: int = 0
    packs_deleted: int = 0
    packs_kept: int = 0
    young_kept: int = 0  # unreferenced objects inside the grace period
    stale_locks_removed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prune(
    store: ChunkStore,
    *,
    keep: int,
    dataset: str | None = None,
    grace_s: float = DEFAULT_GRACE_S,
    forget_untracked: bool = False,
    dry_run: bool = False,
    lock_wait_s: float = 0.0,
    now: float | None = None,
) -> PruneReport:
    """Keep the ``keep`` newest snapshots of each dataset (only of ``dataset`` when given) and
    delete every manifest and chunk nothing kept references (see the module docstring).

    :class:`~spotshift.sync.locks.LockedError` when a writer holds the store;
    :class:`IntegrityError` (nothing deleted) when a kept snapshot's manifest is missing or corrupt.
    """
    if keep < 1:
        raise ConfigError(f"--keep must be >= 1 (the latest snapshot is always kept), got {keep}")
    if grace_s < 0:
        raise ConfigError(f"grace period must be >= 0 seconds, got {grace_s}")
    t0 = time.perf_counter()
    report = PruneReport(store.url, keep, dry_run, grace_s)
    now = now if now is not None else time.time()
    if dry_run:  # reads only: no lock, so it neither waits for nor blocks a push (an estimate then)
        _prune_locked(store, report, dataset, forget_untracked, now)
    else:
        with store_lock(store, "exclusive", "sync prune", wait_s=lock_wait_s) as lock:
            report.stale_locks_removed = lock.stale_removed
            _prune_locked(store, report, dataset, forget_untracked, now)
    report.seconds = time.perf_counter() - t0
    return report


def _prune_locked(
    store: ChunkStore, report: PruneReport, dataset: str | None, forget_untracked: bool, now: float
) -> None:
    cutoff = datetime.fromtimestamp(now - report.grace_s, UTC)
    snaps = list_snapshots(store)
    # 1. forget: per dataset the newest `keep`, plus whatever `latest` names
    forget: list[SnapshotInfo] = []
    by_dataset: dict[str, list[SnapshotInfo]] = {}
    for s in snaps:
        if s.dataset is not None:
            by_dataset.setdefault(s.dataset, []).append(s)  # newest first
    for name, items in by_dataset.items():
        if dataset is not None and name != dataset:
            continue
        forget += [s for i, s in enumerate(items) if i >= report.keep and not s.latest]
    forgotten = {id(s) for s in forget}
    kept_roots = {s.root for s in snaps if s.dataset is not None and id(s) not in forgotten}
    untracked = [s for s in snaps if s.dataset is None]
    if not forget_untracked:
        kept_roots |= {s.root for s in untracked}
        report.untracked_kept = [s.root for s in untracked]
    report.kept_snapshots = sum(1 for s in snaps if s.dataset is not None) - len(forget)
    report.forgotten = [
        {"dataset": s.dataset, "root": s.root, "committed_at": s.committed_at} for s in forget
    ]
    # 2. mark: every chunk a kept manifest names (verified; a broken kept snapshot stops us here)
    marked: set[str] = set()
    packs: set[str] = set()
    for root in sorted(kept_roots):
        try:
            manifest, _ = load_manifest(store, root)
        except (NotFoundError, IntegrityError) as exc:
            raise IntegrityError(
                f"prune of {store.url} stopped before deleting anything: kept snapshot {root}: {exc} "
                "(repair it with `spotshift sync verify --repair`)"
            ) from None
        marked.update(d.hex() for d in manifest.unique_chunks())
        packs |= referenced_packs(manifest.locations.values())
    report.chunks_kept = len(marked)
    report.packs_kept = len(packs)
    # 3. sweep, in an order that never leaves a reference to something deleted
    apply = not report.dry_run
    for s in forget:
        if s.record is not None and apply:
            store.delete(s.record)
    forgotten_roots = {s.root for s in forget} - kept_roots
    for info in store.list_objects(MANIFESTS_PREFIX):
        root = info.key[len(MANIFESTS_PREFIX) :].removesuffix(".parquet")
        if root in kept_roots:
            continue
        # a forgotten snapshot's manifest is committed history, not a write in flight: it goes now
        # (its chunks wait for the grace period like every unreferenced chunk); one no record
        # names (a manifest written after we listed, or untracked with --forget-untracked) only
        # once it is older than the grace period
        if root not in forgotten_roots and info.modified > cutoff:
            report.young_kept += 1
            continue
        if root not in forgotten_roots and not forget_untracked:
            report.untracked_kept.append(root)
            continue
        report.manifests_deleted.append(root)
        if apply:
            store.delete(manifest_key(root))
    report.chunks_deleted = _sweep(store, CHUNK_PREFIX, marked, cutoff, report)
    report.packs_deleted = _sweep(store, PACKS_PREFIX, packs, cutoff, report)
    if isinstance(store, LocalChunkStore) and apply:
        store.remove_stale_temp_files()


def _sweep(store: ChunkStore, prefix: str, marked: set[str], cutoff: datetime, report: PruneReport) -> int:
    """Delete the objects under ``prefix`` whose name is not marked and that are older than the grace
    period (only counted on a dry run); returns how many."""
    deleted = 0
    for info in store.list_objects(prefix):
        if info.key.rsplit("/", 1)[-1] in marked:
            continue
        if info.modified > cutoff:
            report.young_kept += 1
            continue
        deleted += 1
        report.bytes_freed += info.size
        if not report.dry_run:
            store.delete(info.key)
    return deleted
