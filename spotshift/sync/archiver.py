"""``push``: snapshot a directory into a store, sending only the chunks the store lacks
(the archiver; the shared plan/commit steps are in :mod:`spotshift.sync.delta`)."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from spotshift.errors import ConfigError
from spotshift.progress import NO_PROGRESS, Progress
from spotshift.sync.chunking import ChunkParams
from spotshift.sync.delta import (
    LOCK_WAIT_S,
    as_store,
    bytes_in_flight,
    chunk_writer,
    commit,
    finish,
    io_workers,
    plan_transfer,
    target_snapshot,
    transfer_location,
    trusted_chunks,
    with_pack_index,
)
from spotshift.sync.diff import Diff
from spotshift.sync.fingerprint import Fingerprint, fingerprint, local_path
from spotshift.sync.inline import InlineWriter
from spotshift.sync.locks import store_lock
from spotshift.sync.manifest import Manifest
from spotshift.sync.packs import Location, PackPlan
from spotshift.sync.refs import check_dataset_name
from spotshift.sync.sender import Located, SourceSender
from spotshift.sync.store import ChunkStore, LocalChunkStore
from spotshift.sync.transfer import BoundedPool, TransferStats


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
    it describes). On a local store the chunks the store lacks are written while the tree is
    fingerprinted (:mod:`spotshift.sync.inline`: each file read and hashed once); what that did
    not write (files the files cache knew) is sent afterwards. Chunks of the store's current snapshot are trusted to be present unless
    ``check_existing`` (then every chunk is looked up and missing ones are sent again). Raises
    :class:`InputError` when a file changed since it was fingerprinted. Holds a shared lock on
    ``store`` (:mod:`spotshift.sync.locks`) while it plans, sends and commits; waits up to
    ``lock_wait_s`` while a prune holds the store (then :class:`~spotshift.sync.locks.LockedError`).
    """
    t0 = time.perf_counter()
    check_dataset_name(dataset)
    store = as_store(store)
    workers = io_workers(workers, store)
    src_location = transfer_location(src_location)
    dst_location = transfer_location(dst_location, store.url)
    if isinstance(source, Fingerprint) and source_dir is None:
        raise ConfigError("push of a Fingerprint needs source_dir")
    root_dir = Path(local_path(source_dir if isinstance(source, Fingerprint) else source)).resolve()
    stats = TransferStats(
        dataset, src=str(root_dir), dst=store.url, src_location=src_location, dst_location=dst_location
    )
    # shared store lock from the plan to the commit: a prune never deletes a chunk this push found
    # present (and so did not send) before the manifest naming it is committed
    with store_lock(store, "shared", f"sync push {dataset}", wait_s=lock_wait_s):
        writer = chunk_writer(store)
        inline: InlineWriter | None = None
        snapshot = None  # the target's current snapshot, when read before fingerprinting
        if isinstance(source, Fingerprint):
            fp = source
        else:
            params = params or ChunkParams()
            if isinstance(writer, LocalChunkStore):  # write new chunks as they are cut: one read
                snapshot = target_snapshot(store, dataset, params)
                inline = InlineWriter(
                    writer, params.digest, trusted_chunks(store, snapshot[0], check_existing)
                )
                inline.task = progress.task(f"push {dataset}", unit="bytes")  # total known at the end
            try:
                fp = fingerprint(
                    root_dir, params, prefetch_parquet=True, progress=progress, digest_with=inline
                )
            except BaseException:
                if inline is not None:  # no write may outlive the push (nor its store lock)
                    with contextlib.suppress(Exception):
                        inline.wait()
                raise
            if inline is not None:
                inline.close()
        manifest = fp.manifest
        stats.bytes_scanned += fp.stats.bytes_read
        d, old_locs = plan_transfer(store, dataset, manifest, check_existing, stats, snapshot)
        if d is None:
            return finish(stats, manifest, t0)
        new_locs = _send_rest(
            d, root_dir, manifest, writer, stats, inline, workers, budget_bytes, progress, dataset
        )
        writer.flush()  # every chunk and pack durable before the manifest that names it
        commit(store, dataset, with_pack_index(manifest, old_locs, new_locs), None, stats)
        return finish(stats, manifest, t0)


def _send_rest(  # noqa: PLR0913 - the push's state, passed once
    d: Diff,
    root_dir: Path,
    manifest: Manifest,
    writer: ChunkStore,
    stats: TransferStats,
    inline: InlineWriter | None,
    workers: int,
    budget_bytes: int | None,
    progress: Progress,
    dataset: str,
) -> dict[bytes, Location]:
    """Send the missing chunks the inline writer did not (files the files cache knew, or every chunk
    of a pushed :class:`Fingerprint`); returns the pack index of the packs written."""
    missing = d.missing_chunks()
    new_locs: dict[bytes, Location] = {}
    done: set[bytes] = set()
    if inline is not None:
        stats.chunks_sent += inline.chunks_written
        stats.bytes_sent += inline.bytes_written
        stats.bytes_changed += inline.bytes_written
        done = inline.present
        new_locs = {dig: loc for dig, loc in inline.locations.items() if dig in missing}
    # where each missing chunk can be read, in file order so reads stay sequential
    located: dict[bytes, Located] = {}
    for e in d.changed_files:
        for off, length, dig in e.chunks():
            if dig in missing and dig not in done and dig not in located:
                located[dig] = Located(e.path, off, length)
    # one progress line for the push: what the inline writer stored, then the rest
    rest = sum(x.length for x in located.values())
    if inline is not None:
        task = inline.task
        task.update(total=inline.bytes_written + rest)
    else:
        task = progress.task(f"push {dataset}", total=rest, unit="bytes")
    if not located:
        return new_locs
    plan = PackPlan((dig, loc.length) for dig, loc in located.items())
    sender = SourceSender(root_dir, manifest.params, writer, stats)
    sender.task = task
    with BoundedPool(workers, bytes_in_flight(manifest.params, budget_bytes)) as pool:
        sender.pool = pool
        for dig, _ in plan.loose:
            pool.submit(located[dig].length, sender.send_loose, dig, located[dig])
        for pack_id, items in plan.packs:
            parts = [(dig, located[dig]) for dig, _ in items]
            pool.submit(sum(n for _, n in items), sender.send_pack, pack_id, parts)
    new_locs.update(plan.locations)
    return new_locs


# ---- replicate -------------------------------------------------------------------------------------
