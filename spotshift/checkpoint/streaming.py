"""Emergency checkpoints streamed to the local tier and an object store (S3, GCS) in one pass.

The deadline of a preemption notice (30 s on GCP and Azure) waits for the committed copy in the
region's store. Writing the local tier and then uploading it reads and sends every byte after the
local commit; here each part is encrypted once and the same encrypted bytes go, as they are
produced, to the local tier's staging file and to a streaming upload of the part's final object
(S3 multipart, GCS resumable: :meth:`open_upload` of the store), so the upload runs alongside the
encryption and ends moments after it.

An object's name includes the checkpoint id, which depends on the plaintext hash of every part; so
a first pass hashes the plaintext (BLAKE3, all cores) to fix the id, and the encrypting pass checks
that every part still hashes the same (a tensor changed in between is refused, never committed).

Commit order, the format's (:mod:`spotshift.checkpoint.format`): every part object finished (the
store acknowledged it whole: S3 checks each part's CRC32, GCS the CRC32C), then the sealed metadata,
then ``COMMIT`` (write-once) and ``latest`` in the region store, then the local tier's rename and
commit. A writer killed at any point leaves no ``COMMIT``: an unfinished multipart upload or
resumable session is no object at all, and finished part objects without ``COMMIT`` are not a
checkpoint (a failed writer deletes them; ``spotshift ckpt list`` reports a killed one's).
"""

from __future__ import annotations

import contextlib
import time

import blake3

from spotshift.checkpoint import crypto
from spotshift.checkpoint.format import (
    CheckpointPayload,
    CheckpointRef,
    build_meta,
    checkpoint_id_for,
    checkpoint_prefix,
    commit_checkpoint,
    content_hash_of,
    sweep_dead_writers,
)
from spotshift.checkpoint.keys import KeyProvider
from spotshift.checkpoint.writer import Envelope, Staging, _part_chunks, sealed_meta
from spotshift.errors import IntegrityError
from spotshift.sync.store import ChunkStore, LocalChunkStore


def can_stream(store: ChunkStore) -> bool:
    """Whether ``store`` takes streaming uploads (S3 and GCS stores do)."""
    return callable(getattr(store, "open_upload", None))


def plain_hashes(payload: CheckpointPayload) -> dict[str, str]:
    """The plaintext BLAKE3 of every part (what the content hash and so the id are made of)."""
    out = {}
    for part in sorted(payload.parts):
        h = blake3.blake3(max_threads=blake3.blake3.AUTO)
        for chunk in _part_chunks(payload.parts[part], what=f"part {part}")[0]:
            h.update(chunk)
        out[part] = h.hexdigest()
    return out


def write_streaming(
    tier: LocalChunkStore,
    region: ChunkStore,
    payload: CheckpointPayload,
    keys: KeyProvider,
    *,
    segment_bytes: int = crypto.DEFAULT_SEGMENT_BYTES,
    timings: dict[str, float] | None = None,
) -> CheckpointRef:
    """Commit ``payload`` in ``region`` (an object store with ``open_upload``) and in the local tier,
    encrypting once and uploading while encrypting (see the module doc); returns the local ref.
    ``timings`` gets ``hash_s`` (the first pass), ``serialize_s``, ``encrypt_s``, ``write_s``,
    ``upload_wait_s`` (waiting for the store after the last byte), ``wrap_s``, ``total_s``."""
    timings = timings if timings is not None else {}
    for k in ("serialize_s", "encrypt_s", "write_s", "upload_wait_s"):
        timings.setdefault(k, 0.0)
    t_start = time.perf_counter()
    sweep_dead_writers(tier, payload.job)
    hashes = plain_hashes(payload)
    timings["hash_s"] = time.perf_counter() - t_start
    content_hash = content_hash_of(payload.job, payload.step, payload.tokens, payload.state, hashes)
    ckpt_id = checkpoint_id_for(payload.step, content_hash)
    prefix = checkpoint_prefix(payload.job, ckpt_id)
    env = Envelope.new(keys, payload.job, timings)
    staging, sent = Staging([tier], env.ctx), []
    try:
        parts_meta = {}
        for index, part in enumerate(sorted(payload.parts)):
            upload = region.open_upload(prefix + f"{part}-{env.ctx}.enc")  # type: ignore[attr-defined]
            sent.append(prefix + f"{part}-{env.ctx}.enc")
            try:
                m = staging.encrypt_part(
                    part, index, payload.parts[part], env,
                    segment_bytes=segment_bytes, timings=timings, also=upload,
                )  # fmt: skip
                t0 = time.perf_counter()
                upload.close(expect_bytes=m["stored_bytes"])  # the store has the whole object now
                if region.size(sent[-1]) != m["stored_bytes"]:  # and says so
                    raise IntegrityError(
                        f"{sent[-1]} in {region.url}: not the {m['stored_bytes']} bytes sent"
                    )
                timings["upload_wait_s"] += time.perf_counter() - t0
            except BaseException:
                upload.abort()
                raise
            if m["plain_hash"] != hashes[part]:
                raise IntegrityError(
                    f"checkpoint {payload.job} step {payload.step}: part {part} changed while written"
                )
            parts_meta[part] = m
        meta = build_meta(
            payload, ckpt_id, content_hash, parts_meta, keys, env.wrapped, env.ctx, segment_bytes
        )
        meta_bytes, meta_key = sealed_meta(meta, env.data_key), f"meta-{env.ctx}.json"
        region.put_bytes(prefix + meta_key, meta_bytes)
        sent.append(prefix + meta_key)
        commit_checkpoint(
            region, payload.job, ckpt_id, meta_key, meta_bytes, payload.step, content_hash, env.data_key
        )
    except BaseException:
        for key in sent:  # not committed: never a checkpoint, and not left behind either
            with contextlib.suppress(Exception):
                region.delete(key)
        staging.discard()
        raise
    try:
        t0 = time.perf_counter()
        staging.put(meta_key, meta_bytes)
        staging.place(payload.job, ckpt_id, [*(m["key"] for m in parts_meta.values()), meta_key])
        commit_checkpoint(
            tier, payload.job, ckpt_id, meta_key, meta_bytes, payload.step, content_hash, env.data_key
        )
        timings["write_s"] += time.perf_counter() - t0
    finally:
        staging.discard()
    timings["total_s"] = time.perf_counter() - t_start
    return CheckpointRef(tier.url, payload.job, ckpt_id, payload.step, content_hash)
