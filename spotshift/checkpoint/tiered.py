"""Tiered checkpoint storage: local disk first, then the region's object store, then other regions.

* tier 0 — a local store under the trainer's working directory: a checkpoint is committed there
  synchronously at the step boundary (the only part that stalls training);
* tier 1 — the region's object store (``spotshift.home.region_store_url(location)`` by default):
  a background thread uploads committed local checkpoints in order;
* tier 2 — optional cross-region stores, copied after tier 1 (periodic checkpoints only: the seed's
  rule is that emergency checkpoints skip replication, speed matters more than durability then).

Every copy verifies the checkpoint first (as ``spotshift ckpt verify`` does: a local tier tampered
with between write and upload is refused, never uploaded) and follows the commit protocol of
:mod:`spotshift.checkpoint.format`: parts, metadata, ``COMMIT``, ``latest`` — so a store holds a
checkpoint completely or not at all. A trainer removes what killed trainers left in its stores.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from spotshift.checkpoint.format import (
    CheckpointPayload,
    CheckpointRef,
    StoredCheckpoint,
    checkpoint_prefix,
    commit_checkpoint,
    list_checkpoints,
    open_object,
    sweep_dead_writers,
    write_checkpoint,
)
from spotshift.checkpoint.keys import KeyProvider
from spotshift.checkpoint.streaming import can_stream, write_streaming
from spotshift.checkpoint.writer import same_filesystem
from spotshift.sync.store import ChunkStore, LocalChunkStore

log = logging.getLogger("spotshift.checkpoint")


def copy_object(src: ChunkStore, dst: ChunkStore, key: str) -> int:
    """Copy one object between stores (streamed through a file); returns its size."""
    if isinstance(src, LocalChunkStore):
        path = src.root / key
        dst.put_file(key, path)
        return path.stat().st_size
    with open_object(src, key) as f:
        dst.put_file(key, f.name)
        return src.size(key) or 0


def copy_checkpoint(
    src: ChunkStore,
    dst: ChunkStore,
    job: str,
    checkpoint_id: str,
    keys: KeyProvider,
    *,
    update_latest: bool = True,
    verify_alongside: bool = False,
) -> int:
    """Verify a committed checkpoint and copy it verbatim; returns the bytes sent (0 when ``dst`` has it).

    The source passes every check of ``spotshift ckpt verify`` (stored hashes, key, seal, commit
    MAC, content hash, every segment) before ``COMMIT`` is written at ``dst``, so a forged or
    corrupt checkpoint is never replicated and a wrong or missing key fails the copy. By default
    the verification comes first and nothing is sent for a refused checkpoint (migrations: egress
    costs money); ``verify_alongside`` runs it in a second thread while the parts upload and
    removes what was sent if it fails (a trainer's own uploads: the emergency window is short).
    The data key stays wrapped (any holder of the same KEK can read the copy); the copy's
    ``COMMIT`` gets a fresh MAC under it. Temp files that killed writers left in ``dst`` are removed.
    """
    from concurrent.futures import ThreadPoolExecutor

    prefix = checkpoint_prefix(job, checkpoint_id)
    if dst.exists(prefix + "COMMIT"):
        return 0
    ck = StoredCheckpoint(src, job, checkpoint_id)
    keys_sent = [prefix + ck.meta["parts"][part]["key"] for part in ck.part_names()]
    meta_key = str(ck.commit["meta_key"])
    with ThreadPoolExecutor(1, thread_name_prefix="checkpoint-verify") as pool:
        verifying = pool.submit(ck.verified_data_key, keys)
        if not verify_alongside:
            verifying.result()
        sweep_dead_writers(dst, job)
        sent = 0
        try:
            for key in keys_sent:
                sent += copy_object(src, dst, key)
            data_key = verifying.result()
        except BaseException:
            if verify_alongside:  # without COMMIT they never counted; do not leave them behind
                for key in keys_sent:
                    dst.delete(key)
            raise
    dst.put_bytes(prefix + meta_key, ck.meta_bytes)
    sent += len(ck.meta_bytes)
    commit_checkpoint(
        dst,
        job,
        checkpoint_id,
        meta_key,
        ck.meta_bytes,
        ck.step,
        ck.content_hash,
        data_key,
        update_latest=update_latest,
    )
    return sent


def delete_checkpoint(store: ChunkStore, job: str, checkpoint_id: str) -> None:
    """Remove a checkpoint: ``COMMIT`` first (it stops counting), then its other objects."""
    prefix = checkpoint_prefix(job, checkpoint_id)
    store.delete(prefix + "COMMIT")
    for key in list(store.list_keys(prefix)):
        store.delete(key)
    if isinstance(store, LocalChunkStore):
        with contextlib.suppress(OSError):
            (store.root / prefix).rmdir()


@dataclass
class UploadEvent:
    """One finished (or failed) upload of a checkpoint to a store."""

    ref: CheckpointRef  # in the destination store
    kind: str
    tier: str  # "region" | "replica"
    bytes: int
    seconds: float
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


class TieredCheckpointer:
    """Writes checkpoints to the local tier and uploads them (in the background or at once).

    ``on_upload`` is called from the uploading thread with each :class:`UploadEvent`.
    """

    def __init__(
        self,
        *,
        job: str,
        local_dir: Any,
        region_store: ChunkStore,
        keys: KeyProvider,
        replicas: list[ChunkStore] | None = None,
        keep_local: int = 2,
        on_upload: Callable[[UploadEvent], None] | None = None,
    ):
        self.job = job
        self.local = LocalChunkStore(local_dir)
        self.region = region_store
        self.replicas = list(replicas or [])
        self.keys = keys
        self.keep_local = max(1, keep_local)
        self.on_upload = on_upload
        self._queue: queue.Queue[tuple[CheckpointRef, str, dict[str, float]] | None] = queue.Queue()
        self._lock = threading.Lock()  # one upload at a time, in order
        self._thread = threading.Thread(target=self._run, name="checkpoint-upload", daemon=True)
        self._thread.start()
        for store in (self.local, self.region, *self.replicas):  # what killed trainers left behind
            sweep_dead_writers(store, job)

    # -- writing ----------------------------------------------------------------------------------------
    def save(
        self, payload: CheckpointPayload, *, sync: bool = False, timings: dict[str, float] | None = None
    ) -> tuple[CheckpointRef, UploadEvent | None]:
        """Commit ``payload`` on local disk; upload now (``sync``, no replication) or in the background.

        Returns the local ref and, when ``sync``, the region upload event (its ``error`` set if it
        failed: the checkpoint then exists only locally).
        """
        timings = timings if timings is not None else {}
        if sync and (isinstance(self.region, LocalChunkStore) or can_stream(self.region)):
            return self._save_streaming(payload, timings)
        local_ref = write_checkpoint(self.local, payload, self.keys, timings=timings)
        return local_ref, self.upload(local_ref, payload.kind, sync=sync, timings=timings)

    def upload(
        self,
        local_ref: CheckpointRef,
        kind: str,
        *,
        sync: bool = False,
        timings: dict[str, float] | None = None,
    ) -> UploadEvent | None:
        """Upload a checkpoint committed on the local tier (by :meth:`save`, or by the ranks of a sharded
        write): now (``sync``: no replication; the event, its ``error`` set on failure) or queued (None)."""
        timings = timings if timings is not None else {}
        if not sync:
            self._queue.put((local_ref, kind, dict(timings)))
            return None
        self._drop_pending()
        return self._upload(local_ref, kind, timings, replicate=False)

    def _save_streaming(
        self, payload: CheckpointPayload, timings: dict[str, float]
    ) -> tuple[CheckpointRef, UploadEvent]:
        """A synchronous save: one pass writes the encrypted parts to the local tier and the region
        store at once — on one filesystem the region's copy is written and committed first and the
        local tier gets hard links of its files (``write_checkpoint(linked=...)``: the bytes are
        written once), on two ``write_checkpoint(mirror=...)``; streaming uploads for S3 and GCS
        (:func:`~spotshift.checkpoint.streaming.write_streaming`)."""
        self._drop_pending()
        with self._lock:  # after the upload in flight, like any upload
            t0 = time.perf_counter()
            try:
                if isinstance(self.region, LocalChunkStore) and same_filesystem(self.local, self.region):
                    ref = write_checkpoint(
                        self.region, payload, self.keys, timings=timings, linked=self.local
                    )
                    local_ref = CheckpointRef(
                        self.local.url, ref.job, ref.checkpoint_id, ref.step, ref.content_hash
                    )
                elif isinstance(self.region, LocalChunkStore):
                    local_ref = write_checkpoint(
                        self.local, payload, self.keys, timings=timings, mirror=self.region
                    )
                else:
                    local_ref = write_streaming(self.local, self.region, payload, self.keys, timings=timings)
                ck = StoredCheckpoint(self.region, self.job, local_ref.checkpoint_id)
                ref = CheckpointRef(
                    self.region.url, self.job, local_ref.checkpoint_id, local_ref.step, local_ref.content_hash
                )
                timings["upload_s"] = timings.get("upload_wait_s", 0.0)  # streamed along the encryption
                event = UploadEvent(
                    ref,
                    payload.kind,
                    "region",
                    ck.stored_bytes,
                    time.perf_counter() - t0,
                    timings=dict(timings),
                )
            except Exception as exc:  # e.g. the region's disk is full: the local tier, then an upload
                log.error(
                    "streaming checkpoint of step %d to %s failed (%s): writing the local tier first",
                    payload.step,
                    self.region.url,
                    exc,
                )
                event = None
            if event is not None:
                self._prune_local()
        if event is None:
            local_ref = write_checkpoint(self.local, payload, self.keys, timings=timings)
            return local_ref, self._upload(local_ref, payload.kind, timings, replicate=False)
        if self.on_upload is not None:
            try:
                self.on_upload(event)
            except Exception:
                log.exception("on_upload callback failed")
        return local_ref, event

    def _drop_pending(self) -> None:
        # an emergency checkpoint supersedes queued periodic ones; the one in flight finishes first
        with contextlib.suppress(queue.Empty):
            while True:
                item = self._queue.get_nowait()
                self._queue.task_done()
                if item is None:
                    self._queue.put(None)
                    break

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                ref, kind, timings = item
                self._upload(ref, kind, timings, replicate=True)
            except Exception:  # never kill the uploader; the checkpoint stays on local disk
                log.exception("checkpoint upload failed")
            finally:
                self._queue.task_done()

    def _upload(
        self, local_ref: CheckpointRef, kind: str, timings: dict[str, float], *, replicate: bool
    ) -> UploadEvent:
        with self._lock:
            event = self._copy(local_ref, self.region, kind, "region", timings)
            if event.error is None:
                timings["upload_s"] = event.seconds
                if replicate:
                    for replica in self.replicas:
                        self._copy(local_ref, replica, kind, "replica", {})
                self._prune_local()
            return event

    def _copy(
        self, local_ref: CheckpointRef, store: ChunkStore, kind: str, tier: str, timings: dict[str, float]
    ) -> UploadEvent:
        t0 = time.perf_counter()
        ref = CheckpointRef(
            store.url, self.job, local_ref.checkpoint_id, local_ref.step, local_ref.content_hash
        )
        try:
            sent = copy_checkpoint(
                self.local, store, self.job, local_ref.checkpoint_id, self.keys, verify_alongside=True
            )
            event = UploadEvent(ref, kind, tier, sent, time.perf_counter() - t0, timings=dict(timings))
            event.timings["upload_s"] = event.seconds
            log.info(
                "checkpoint %s step %d uploaded to %s (%d bytes, %.3fs)",
                local_ref.checkpoint_id,
                local_ref.step,
                store.url,
                sent,
                event.seconds,
            )
        except Exception as exc:
            event = UploadEvent(
                ref, kind, tier, 0, time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}"
            )
            log.error(
                "checkpoint %s upload to %s failed: %s", local_ref.checkpoint_id, store.url, event.error
            )
        if self.on_upload is not None:
            try:
                self.on_upload(event)
            except Exception:
                log.exception("on_upload callback failed")
        return event

    def _prune_local(self) -> None:
        ids = list_checkpoints(self.local, self.job)
        for old in ids[: -self.keep_local]:
            if self.region.exists(checkpoint_prefix(self.job, old) + "COMMIT"):
                delete_checkpoint(self.local, self.job, old)

    # -- lifecycle ------------------------------------------------------------------------------------------
    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued upload is done; False on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout_s: float | None = None) -> bool:
        """Finish queued uploads and stop the thread."""
        done = self.flush(timeout_s)
        self._queue.put(None)
        self._thread.join(timeout=1.0 if not done else None)
        return done
