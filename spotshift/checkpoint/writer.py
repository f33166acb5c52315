"""Writing a checkpoint: serialize, encrypt and hash in one pass, place the files, then commit.

Order (what makes a half-written checkpoint harmless): parts stream into staging files in the
store's temp dir (named after the writer's pid, so a killed writer's are swept); once the content
hash (and so the id) is known they are renamed into the checkpoint's directory, then the sealed
metadata, then ``COMMIT`` (write-once), then ``latest``. :class:`Staging` and :class:`Envelope`
are the steps of :func:`write_checkpoint`, public so other writers commit the same way.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from typing import Any, BinaryIO

from spotshift.atomic import fsync_dir, start_writeback
from spotshift.checkpoint import crypto, fence
from spotshift.checkpoint.catalog import read_latest_pointer, sweep_dead_writers
from spotshift.checkpoint.codec import (
    COMMIT_MAC_ALG,
    FORMAT,
    HASH_ALG,
    CheckpointPayload,
    CheckpointRef,
    canonical_json,
    checkpoint_id_for,
    checkpoint_prefix,
    commit_mac,
    content_hash_of,
    latest_key,
    parse_safetensors,
    part_layout,
    runtime_versions,
    sealed_bytes,
    utc_now_iso,
)
from spotshift.checkpoint.keys import KeyProvider
from spotshift.errors import IntegrityError
from spotshift.sync.store import ChunkStore, LocalChunkStore


def _fsync_close(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()


class _Tee:
    """A binary sink writing every chunk to several files (the stored bytes, once encrypted), and
    the object store's stream ``also``. Every ``kick_bytes`` it starts the write-back of what the
    files got since the last kick (:func:`~spotshift.atomic.start_writeback`), so the disk works
    from the first segment on and the final fsync finds little left to write."""

    def __init__(self, files: list[BinaryIO], also: Any = None, kick_bytes: int = 32 << 20):
        self.files, self.also, self.kick_bytes = files, also, kick_bytes
        self.written = self.kicked = 0

    def write(self, data: Any) -> int:
        for f in self.files:
            f.write(data)
        if self.also is not None:
            self.also.write(data)
        self.written += len(data)
        if self.written - self.kicked >= self.kick_bytes:
            for f in self.files:
                f.flush()
                start_writeback(f.fileno(), self.kicked, self.written - self.kicked)
            self.kicked = self.written
        return len(data)


@dataclass(frozen=True)
class Envelope:
    """One encryption of a checkpoint: a fresh data key, the context naming it, the key wrapped by the KEK."""

    data_key: bytes
    ctx: str
    wrapped: bytes

    @staticmethod
    def new(keys: KeyProvider, job: str, timings: dict[str, float] | None = None) -> Envelope:
        """A fresh data key and context for ``job``, wrapped under ``keys`` (``wrap_s`` into ``timings``)."""
        data_key = secrets.token_bytes(32)
        ctx = secrets.token_hex(8)
        t0 = time.perf_counter()
        wrapped = keys.wrap(data_key, {"spotshift:job": job, "spotshift:ctx": ctx})
        if timings is not None:
            timings["wrap_s"] = time.perf_counter() - t0
        return Envelope(data_key, ctx, wrapped)

    @staticmethod
    def unwrap(keys: KeyProvider, job: str, ctx: str, wrapped: bytes) -> Envelope:
        """The envelope another writer made (a sharded checkpoint's ranks share rank 0's)."""
        context = {"spotshift:job": job, "spotshift:ctx": ctx}
        return Envelope(keys.unwrap(wrapped, context, what=f"job {job} checkpoint envelope"), ctx, wrapped)


class Staging:
    """A writer's staging files in the temp dirs of ``stores`` (local filesystems), one name prefix per
    writer (pid + ctx: :func:`~spotshift.atomic.remove_stale_temp_files` clears a dead writer's).

    Every file is written to all stores in the same pass (the same encrypted bytes), checked for
    its full size and fsynced; :meth:`place` renames them into a checkpoint's directory;
    :meth:`discard` (in a ``finally``) removes whatever was not placed.
    """

    def __init__(self, stores: list[LocalChunkStore], ctx: str):
        self.stores = stores
        self.dirs = [st.root / ".tmp" for st in stores]
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)
        self.prefix = f"{os.getpid()}.{ctx}."

    def encrypt_part(
        self,
        part: str,
        index: int,
        data: Any,
        env: Envelope,
        *,
        segment_bytes: int,
        timings: dict[str, float],
        also: Any = None,
    ) -> dict[str, Any]:
        """Serialize and encrypt one part into staging; its metadata entry (sizes, hashes, key).
        ``also``: one more sink of the same encrypted bytes (an object store's streaming upload; the
        caller closes it)."""
        t0 = time.perf_counter()
        chunks, n_tensors = _part_chunks(data, what=f"part {part}")
        timings["serialize_s"] += time.perf_counter() - t0
        key_name = f"{part}-{env.ctx}.enc"
        outs = [open(d / (self.prefix + key_name), "wb") for d in self.dirs]  # noqa: SIM115
        w = None
        try:
            w = crypto.EncryptingWriter(
                _Tee(outs, also),
                env.data_key,
                part_index=index,
                part_name=part,
                segment_bytes=segment_bytes,
                timings=timings,
                pipelined=also is None,  # an object store's upload stays on the caller's thread
            )
            for chunk in chunks:
                w.write(chunk)
            w.close()
            t0 = time.perf_counter()
            for out in outs:
                out.flush()
                if os.fstat(out.fileno()).st_size != w.stored_bytes:  # a short write never commits
                    raise IntegrityError(f"part {part}: {out.name} is not the {w.stored_bytes} bytes written")
                _fsync_close(out)
            timings["write_s"] += time.perf_counter() - t0
        except BaseException:
            if w is not None:
                w.abort()
            for out in outs:
                out.close()
            raise
        return {
            "index": index,
            "key": key_name,
            "tensors": n_tensors,
            "plain_bytes": w.plain_bytes,
            "plain_hash": w.plain_hash.hexdigest(),
            "stored_bytes": w.stored_bytes,
            "stored_hash": w.stored_hash.hexdigest(),
        }

    def put(self, name: str, data: bytes) -> None:
        """Stage a small file (the metadata) in every store, fsynced."""
        for d in self.dirs:
            with open(d / (self.prefix + name), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())

    def place(self, job: str, ckpt_id: str, names: list[str]) -> None:
        """Rename staged ``names`` into the checkpoint's directory of every store (fsynced)."""
        for st, d in zip(self.stores, self.dirs, strict=True):
            final_dir = st.root / checkpoint_prefix(job, ckpt_id)
            final_dir.mkdir(parents=True, exist_ok=True)
            for name in names:
                os.replace(d / (self.prefix + name), final_dir / name)
            fsync_dir(final_dir)

    def discard(self) -> None:
        """Remove this writer's staging files that were not placed."""
        for d in self.dirs:
            for leftover in d.glob(self.prefix + "*"):
                leftover.unlink(missing_ok=True)


def sealed_meta(meta: dict[str, Any], data_key: bytes) -> bytes:
    """``meta`` with its seal (``encryption.meta_tag``), as the bytes stored in ``meta-<ctx>.json``."""
    meta["encryption"]["meta_tag"] = base64.b64encode(crypto.seal(data_key, sealed_bytes(meta))).decode()
    return json.dumps(meta, indent=1, sort_keys=True).encode()


def write_checkpoint(
    tier: LocalChunkStore,
    payload: CheckpointPayload,
    keys: KeyProvider,
    *,
    segment_bytes: int = crypto.DEFAULT_SEGMENT_BYTES,
    timings: dict[str, float] | None = None,
    mirror: LocalChunkStore | None = None,
    linked: LocalChunkStore | None = None,
) -> CheckpointRef:
    """Serialize, encrypt and commit ``payload`` into a local store (the local disk tier).

    One pass over the tensors: each part streams through BLAKE3 (plaintext), AES-256-GCM and
    BLAKE3 (stored bytes) into a staging file; files are renamed into place once the content hash
    (and so the id) is known, then the sealed metadata, then ``COMMIT``, then ``latest``.
    ``timings`` receives ``serialize_s``, ``encrypt_s``, ``write_s``, ``wrap_s``, ``total_s``.

    ``mirror`` (a second local-filesystem store: the region's store when it is a directory) gets
    the same encrypted bytes in the same pass, staged, renamed and committed the same way after
    ``tier`` (an emergency checkpoint: no second read, no second encryption, no window in which
    the local copy could be altered before it is copied). Both commits carry the same marker.

    ``linked`` (a store on the same filesystem as ``tier``: the local tier when the region's store
    is a directory beside it) gets hard links of ``tier``'s files only after ``tier``'s ``COMMIT``
    and ``latest`` (the bytes are durable by then), then its own ``COMMIT`` and ``latest``: the
    bytes are written once, and the commit a deadline waits for is ``tier``'s.
    """
    timings = timings if timings is not None else {}
    for k in ("serialize_s", "encrypt_s", "write_s"):
        timings.setdefault(k, 0.0)
    t_start = time.perf_counter()
    sweep_dead_writers(tier, payload.job)
    env = Envelope.new(keys, payload.job, timings)
    if mirror is not None and linked is not None:
        raise ValueError("write_checkpoint: give a mirror or a linked store, not both")
    stores = [tier] if mirror is None else [tier, mirror]
    staging = Staging(stores, env.ctx)
    try:
        parts_meta = {
            part: staging.encrypt_part(
                part, i, payload.parts[part], env, segment_bytes=segment_bytes, timings=timings
            )
            for i, part in enumerate(sorted(payload.parts))
        }
        parts_names = [m["key"] for m in parts_meta.values()]
        plain_hashes = {p: m["plain_hash"] for p, m in parts_meta.items()}
        content_hash = content_hash_of(payload.job, payload.step, payload.tokens, payload.state, plain_hashes)
        ckpt_id = checkpoint_id_for(payload.step, content_hash)
        meta = build_meta(
            payload, ckpt_id, content_hash, parts_meta, keys, env.wrapped, env.ctx, segment_bytes
        )
        meta_bytes = sealed_meta(meta, env.data_key)
        meta_key = f"meta-{env.ctx}.json"
        t0 = time.perf_counter()
        staging.put(meta_key, meta_bytes)
        staging.place(payload.job, ckpt_id, [*(p["key"] for p in parts_meta.values()), meta_key])
        timings["write_s"] += time.perf_counter() - t0
    finally:
        staging.discard()
    t0 = time.perf_counter()
    for st in stores:
        commit_checkpoint(
            st, payload.job, ckpt_id, meta_key, meta_bytes, payload.step, content_hash, env.data_key
        )
    timings["write_s"] += time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    if linked is not None:  # after tier's COMMIT: never a link to bytes that are not durable
        t0 = time.perf_counter()
        link_files(tier, linked, checkpoint_prefix(payload.job, ckpt_id), [*parts_names, meta_key])
        commit_checkpoint(
            linked, payload.job, ckpt_id, meta_key, meta_bytes, payload.step, content_hash, env.data_key
        )
        timings["link_s"] = time.perf_counter() - t0
    return CheckpointRef(tier.url, payload.job, ckpt_id, payload.step, content_hash)


def link_files(src: LocalChunkStore, dst: LocalChunkStore, prefix: str, names: list[str]) -> None:
    """Hard-link ``prefix + name`` of committed, durable files from ``src`` into ``dst`` (a copy,
    fsynced, where the filesystem refuses links), then fsync ``dst``'s directory once."""
    src_dir, dst_dir = src.root / prefix, dst.root / prefix
    dst_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = dst_dir / name
        target.unlink(missing_ok=True)  # a cut-short earlier write of the same id
        try:
            os.link(src_dir / name, target)
        except OSError:
            shutil.copyfile(src_dir / name, target)
            with open(target, "rb+") as f:
                os.fsync(f.fileno())
    fsync_dir(dst_dir)


def same_filesystem(a: LocalChunkStore, b: LocalChunkStore) -> bool:
    """Whether two local stores live on one filesystem (so :func:`link_files` links)."""
    for st in (a, b):
        st.root.mkdir(parents=True, exist_ok=True)
    return os.stat(a.root).st_dev == os.stat(b.root).st_dev


def _part_chunks(part: Any, *, what: str) -> tuple[list[Any], int]:
    """The plaintext byte chunks of one part and its tensor count (tensors, or safetensors bytes as is)."""
    if isinstance(part, bytes | bytearray | memoryview):
        header, _ = parse_safetensors(part, what=what)
        return [part], len(header)
    header, views = part_layout(part)
    return [header, *(raw for _, raw in views)], len(views)


def build_meta(
    payload: CheckpointPayload,
    ckpt_id: str,
    content_hash: str,
    parts_meta: dict[str, dict[str, Any]],
    keys: KeyProvider,
    wrapped: bytes,
    ctx: str,
    segment_bytes: int,
) -> dict[str, Any]:
    """The metadata document of a checkpoint (everything but the seal)."""
    return {
        "format": FORMAT,
        "hash_alg": HASH_ALG,
        "checkpoint_id": ckpt_id,
        "content_hash": content_hash,
        "job": payload.job,
        "step": payload.step,
        "tokens": payload.tokens,
        "kind": payload.kind,
        "location": payload.location,
        "created_at": payload.created_at or utc_now_iso(),
        "versions": payload.versions or runtime_versions(),
        "state": payload.state,
        "parts": parts_meta,
        "encryption": {
            "alg": "AES-256-GCM segmented",
            "segment_bytes": segment_bytes,
            "key_provider": keys.kind,
            "kek_id": keys.key_id,
            "ctx": ctx,
            "wrapped_key": base64.b64encode(wrapped).decode(),
        },
    }


def commit_checkpoint(
    store: ChunkStore,
    job: str,
    ckpt_id: str,
    meta_key: str,
    meta_bytes: bytes,
    step: int,
    content_hash: str,
    data_key: bytes,
    *,
    update_latest: bool = True,
) -> bool:
    """Write ``COMMIT`` (write-once) and then the ``latest`` pointer; False if it was already committed.

    Callers hold ``data_key`` because they wrote the checkpoint or verified it (the marker's MAC
    is keyed by it). The pointer only moves forward (to a step >= the one it names), so a slow
    upload of an older checkpoint never hides a newer one.
    """
    prefix = checkpoint_prefix(job, ckpt_id)
    commit: dict[str, Any] = {
        "checkpoint_id": ckpt_id,
        "meta_key": meta_key,
        "step": step,
        "committed_at": utc_now_iso(),
        "mac_alg": COMMIT_MAC_ALG,
    }
    commit["mac"] = commit_mac(data_key, commit, meta_bytes)
    fence.check(job)  # a writer that lost its run-level lock never commits (checkpoint.fence)
    created = store.put_bytes(prefix + "COMMIT", canonical_json(commit), if_absent=True)
    if update_latest:
        current = read_latest_pointer(store, job)
        if current is None or current.get("step", -1) <= step:
            pointer = {
                "checkpoint_id": ckpt_id,
                "step": step,
                "content_hash": content_hash,
                "updated_at": commit["committed_at"],
            }
            store.put_bytes(latest_key(job), canonical_json(pointer))
    return created
