"""``replicate``: copy a snapshot from one store to another, delta only, every chunk checked
against its digest as it arrives (the shared plan/commit steps are in :mod:`spotshift.sync.delta`)."""

from __future__ import annotations

import time
from typing import Any

from spotshift.errors import IntegrityError
from spotshift.progress import NO_PROGRESS, Progress
from spotshift.sync.chunking import digest_function
from spotshift.sync.delta import (
    LOCK_WAIT_S,
    as_store,
    bytes_in_flight,
    chunk_writer,
    commit,
    finish,
    io_workers,
    plan_transfer,
    transfer_location,
    with_pack_index,
)
from spotshift.sync.locks import store_lock
from spotshift.sync.manifest import Manifest
from spotshift.sync.packs import PackPlan, has_pack, read_chunk, write_pack
from spotshift.sync.refs import check_dataset_name, load_manifest, resolve_dataset
from spotshift.sync.store import ChunkStore
from spotshift.sync.transfer import BoundedPool, TransferStats


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
    src, dst = as_store(src_store), as_store(dst_store)
    workers = io_workers(workers, dst)
    src_location, dst_location = (
        transfer_location(src_location, src.url),
        transfer_location(dst_location, dst.url),
    )
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
        d, old_locs = plan_transfer(dst, dataset, manifest, check_existing, stats)
        if d is None:
            return finish(stats, manifest, t0)
        missing = d.missing_chunks()
        plan = PackPlan(missing.items())
        task = progress.task(f"replicate {dataset}", total=sum(missing.values()), unit="bytes")
        copier = _Copier(src, chunk_writer(dst), manifest, stats, task)
        with BoundedPool(workers, bytes_in_flight(manifest.params, budget_bytes)) as pool:
            copier.pool = pool
            for dig, length in plan.loose:
                pool.submit(length, copier.copy, dig, length)
            for pack_id, items in plan.packs:
                pool.submit(sum(n for _, n in items), copier.copy_pack, pack_id, items)
        copier.writer.flush()  # every chunk and pack durable before the manifest that names it
        target = with_pack_index(manifest, old_locs, plan.locations)
        # the source's bytes describe the source's packs: rewrite them when either side has packs
        commit(dst, dataset, target, raw if target is manifest else None, stats)
        return finish(stats, manifest, t0)


class _Copier:
    """Copies loose chunks and packs from ``src`` into ``writer``; every chunk read from the source
    is checked against its digest (:func:`~spotshift.sync.packs.read_chunk`) before it is written."""

    def __init__(
        self, src: ChunkStore, writer: ChunkStore, manifest: Manifest, stats: TransferStats, task: Any
    ):
        self.src, self.writer, self.manifest, self.stats, self.task = src, writer, manifest, stats, task
        self.hfn = digest_function(manifest.params.digest)
        self.pool: BoundedPool | None = None

    def fetch(self, dig: bytes, length: int) -> bytes:
        """The chunk's bytes from the source, checked against its digest."""
        data = read_chunk(self.src, dig, length, self.hfn, self.manifest.locations.get(dig))
        if data is None:
            raise IntegrityError(
                f"chunk {dig.hex()} in {self.src.url} is missing or corrupt; run `spotshift sync verify --repair`"
            )
        return data

    def _sent(self, chunks: int, nbytes: int) -> None:
        self.task.advance(nbytes)
        assert self.pool is not None
        with self.pool.lock:
            self.stats.chunks_sent += chunks
            self.stats.bytes_sent += nbytes
            self.stats.bytes_changed += nbytes

    def copy(self, dig: bytes, length: int) -> None:
        """Copy one loose chunk unless the target has it."""
        if self.writer.has_chunk(dig.hex()):
            self.task.advance(length)
            return
        self.writer.put_chunk(dig.hex(), self.fetch(dig, length))
        self._sent(1, length)

    def copy_pack(self, pack_id: str, items: list[tuple[bytes, int]]) -> None:
        """Copy one pack (its chunks fetched and checked one by one) unless the target has it whole."""
        if has_pack(self.writer, pack_id, sum(n for _, n in items)):
            self.task.advance(sum(n for _, n in items))
            return
        buf = bytearray()
        for dig, length in items:
            buf += self.fetch(dig, length)
        write_pack(self.writer, pack_id, buf)
        self._sent(len(items), len(buf))
