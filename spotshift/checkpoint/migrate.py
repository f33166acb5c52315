"""Checkpoint migration between stores: an encrypted tensor delta when the target has an older
checkpoint of the same job, a verbatim copy otherwise (or when the delta is not smaller than
:data:`MAX_DELTA_RATIO` of the checkpoint).

The delta is computed on plaintext (both checkpoints decrypted and verified), encrypted under a
fresh data key, and shipped as one object::

    checkpoints/<job>/incoming/<pid>.<checkpoint_id>.<hex>.delta
      = MAGIC || u32 envelope length || envelope JSON || segmented AES-256-GCM stream

(named after the migrating process, so the next checkpoint writer into the store removes it if that
process was killed before applying it: :func:`~spotshift.checkpoint.format.sweep_dead_writers`).

The envelope carries the new checkpoint's metadata (without its encryption block), the base id
and the wrapped key, and is sealed with the data key. At the target the delta is applied to the
base held there (each rebuilt tensor checked against its digest in the delta:
:mod:`spotshift.checkpoint.delta`), every part's plaintext hash and the content hash are verified, and the result is
committed as an ordinary checkpoint (re-encrypted under a fresh key), then the delta object is
deleted. Only the delta object crossed regions: that is ``bytes_sent``.

Nothing unverified is committed at the target: the delta path decrypts and verifies the source and
the base; a full copy verifies the source like ``spotshift ckpt verify`` before copying
(:func:`~spotshift.checkpoint.tiered.copy_checkpoint`). A wrong or missing key fails either way.
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import shutil
import struct
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spotshift.checkpoint import crypto
from spotshift.checkpoint.delta import apply_delta, compute_delta
from spotshift.checkpoint.format import (
    INCOMING,
    CheckpointPayload,
    StoredCheckpoint,
    canonical_json,
    checkpoint_prefix,
    list_checkpoints,
    open_checkpoint,
    step_of,
    write_checkpoint,
)
from spotshift.checkpoint.keys import KeyProvider
from spotshift.checkpoint.tiered import copy_checkpoint
from spotshift.clock import parse_utc, virtual_now
from spotshift.errors import ConfigError, IntegrityError
from spotshift.home import cache_dir, location_of_store
from spotshift.sync.store import ChunkStore, LocalChunkStore
from spotshift.sync.transfer import TransferStats

DELTA_MAGIC = b"SSCKDLT1"
DELTA_FORMAT = "spotshift-delta/1"
#: ship the delta only when it is at most this fraction of the full checkpoint: applying it costs the
#: target a base decryption and a rebuild, and ties the copy to the base; a few percent saved is not worth it
MAX_DELTA_RATIO = 0.9


@dataclass
class MigrationReport:
    """Outcome of one checkpoint migration (the ``--json`` of ``spotshift ckpt migrate``)."""

    job: str
    checkpoint_id: str
    step: int
    content_hash: str
    method: str  # tensor_delta | full | present
    src_store: str
    dst_store: str
    src_location: str | None
    dst_location: str | None
    bytes_full: int
    bytes_sent: int
    seconds: float
    base: str | None = None
    bytes_changed: int = 0
    bytes_scanned: int = 0
    tensors_total: int = 0
    tensors_sent: int = 0
    delta_plain_bytes: int = 0
    started_at: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """bytes_sent / bytes_full."""
        return self.bytes_sent / self.bytes_full if self.bytes_full else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio"] = round(self.ratio, 6)
        d["seconds"] = round(self.seconds, 4)
        return d

    def transfer_stats(self) -> TransferStats:
        """This migration as a transfer (kind ``checkpoint``, tensors counted as chunks, the content
        hash as its root), priced by the egress table when both locations are known."""
        stats = TransferStats(
            dataset=self.job,
            src=self.src_store,
            dst=self.dst_store,
            root=self.content_hash,
            kind="checkpoint",
            method=self.method,
            src_location=self.src_location,
            dst_location=self.dst_location,
            seconds=self.seconds,
            bytes_scanned=self.bytes_scanned,
            bytes_changed=self.bytes_changed,
            bytes_full=self.bytes_full,
            chunks_total=self.tensors_total,
            chunks_sent=self.tensors_sent,
            bytes_sent=self.bytes_sent,
        )
        if self.started_at:
            stats.started_at = parse_utc(self.started_at)
        stats.price()
        return stats

    def transfer_row(self, run_id: str | None = None) -> dict[str, Any]:
        """The ``raw.transfers`` row of this migration (:meth:`TransferStats.to_row`, the one builder)."""
        return self.transfer_stats().to_row(run_id)


def choose_base(dst: ChunkStore, job: str, step: int, exclude: str) -> str | None:
    """The newest committed checkpoint of ``job`` in ``dst`` older than ``step`` (the delta base)."""
    older = [c for c in list_checkpoints(dst, job) if c != exclude and step_of(c) <= step]
    return older[-1] if older else None


def _encrypt_delta(job: str, ckpt: StoredCheckpoint, base_id: str, plain: bytes, keys: KeyProvider) -> bytes:
    data_key = secrets.token_bytes(32)
    ctx = secrets.token_hex(8)
    wrapped = keys.wrap(data_key, {"spotshift:job": job, "spotshift:ctx": ctx})
    target_meta = {k: v for k, v in ckpt.meta.items() if k != "encryption"}
    envelope: dict[str, Any] = {
        "format": DELTA_FORMAT,
        "job": job,
        "checkpoint_id": ckpt.checkpoint_id,
        "base_id": base_id,
        "meta": target_meta,
        "plain_bytes": len(plain),
        "encryption": {
            "segment_bytes": crypto.DEFAULT_SEGMENT_BYTES,
            "kek_id": keys.key_id,
            "key_provider": keys.kind,
            "ctx": ctx,
            "wrapped_key": base64.b64encode(wrapped).decode(),
        },
    }
    envelope["encryption"]["meta_tag"] = base64.b64encode(crypto.seal(data_key, _sealed(envelope))).decode()
    sink = io.BytesIO()
    w = crypto.EncryptingWriter(sink, data_key, part_index=0, part_name="delta")
    w.write(plain)
    w.close()
    env_bytes = canonical_json(envelope)
    return DELTA_MAGIC + struct.pack("<I", len(env_bytes)) + env_bytes + sink.getvalue()


def _sealed(envelope: dict[str, Any]) -> bytes:
    doc = json.loads(json.dumps(envelope))
    doc["encryption"].pop("meta_tag", None)
    return canonical_json(doc)


def delta_envelope(obj: bytes, *, what: str) -> tuple[dict[str, Any], int]:
    """The plaintext envelope of a delta object (job, checkpoint_id, base_id, ...) and the offset of
    its encrypted payload; no key needed. :class:`IntegrityError` when it is not a readable delta."""
    if not obj.startswith(DELTA_MAGIC) or len(obj) < len(DELTA_MAGIC) + 4:
        raise IntegrityError(f"{what}: not a spotshift checkpoint delta")
    (n,) = struct.unpack("<I", obj[len(DELTA_MAGIC) : len(DELTA_MAGIC) + 4])
    start = len(DELTA_MAGIC) + 4
    try:
        envelope = json.loads(obj[start : start + n])
        if not isinstance(envelope.get("base_id"), str):
            raise TypeError("no base_id")
    except (ValueError, TypeError, AttributeError):
        raise IntegrityError(f"{what}: delta envelope is malformed") from None
    if envelope.get("format") != DELTA_FORMAT:
        raise IntegrityError(f"{what}: unknown delta format {envelope.get('format')!r}")
    return envelope, start + n


def _open_delta(obj: bytes, keys: KeyProvider, *, what: str) -> tuple[dict[str, Any], bytes]:
    envelope, payload_at = delta_envelope(obj, what=what)
    try:
        enc = envelope["encryption"]
        wrapped = base64.b64decode(enc["wrapped_key"], validate=True)
        tag = base64.b64decode(enc["meta_tag"], validate=True)
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(f"{what}: delta envelope is malformed") from None
    if enc.get("kek_id") != keys.key_id:
        raise IntegrityError(
            f"{what}: encrypted under key {enc.get('kek_id')}, provider has {keys.key_id} (wrong key)"
        )
    data_key = keys.unwrap(
        wrapped, {"spotshift:job": envelope["job"], "spotshift:ctx": enc["ctx"]}, what=what
    )
    crypto.check_seal(data_key, _sealed(envelope), tag, what=what)
    stream = io.BytesIO(obj[payload_at:])
    plain = b"".join(
        crypto.iter_decrypt(
            stream,
            data_key,
            part_index=0,
            part_name="delta",
            segment_bytes=int(enc["segment_bytes"]),
            plain_bytes=int(envelope["plain_bytes"]),
            what=what,
        )
    )
    return envelope, plain


def write_plain_checkpoint(
    dst: ChunkStore, meta: dict[str, Any], plain_parts: dict[str, bytes], keys: KeyProvider
) -> StoredCheckpoint:
    """Commit verified plaintext parts as a checkpoint in ``dst`` with the identity ``meta`` describes.

    Refuses (before writing anything) parts whose plaintext hashes differ from ``meta``.
    """
    import blake3

    label = f"checkpoint {meta['job']}/{meta['checkpoint_id']}"
    if set(plain_parts) != set(meta["parts"]):
        raise IntegrityError(
            f"{label}: rebuilt parts {sorted(plain_parts)} differ from {sorted(meta['parts'])}"
        )
    for part, buf in plain_parts.items():
        if (
            blake3.blake3(buf, max_threads=blake3.blake3.AUTO).hexdigest()
            != meta["parts"][part]["plain_hash"]
        ):
            raise IntegrityError(f"{label}: rebuilt part {part} does not match its hash")
    payload = CheckpointPayload(
        job=meta["job"],
        step=int(meta["step"]),
        tokens=int(meta["tokens"]),
        kind=meta["kind"],
        location=meta["location"],
        state=meta["state"],
        parts=dict(plain_parts),
        versions=meta.get("versions") or {},
        created_at=meta.get("created_at"),
    )
    if isinstance(dst, LocalChunkStore):
        ref = write_checkpoint(dst, payload, keys)
    else:
        cache_dir().mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="ckpt-apply-", dir=cache_dir()))
        try:
            tier = LocalChunkStore(tmp)
            ref = write_checkpoint(tier, payload, keys)
            copy_checkpoint(tier, dst, ref.job, ref.checkpoint_id, keys)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if ref.checkpoint_id != meta["checkpoint_id"]:
        raise IntegrityError(f"{label}: rebuilt checkpoint has content hash {ref.content_hash[:16]}")
    return StoredCheckpoint(dst, ref.job, ref.checkpoint_id)


def apply_delta_object(dst: ChunkStore, key: str, keys: KeyProvider) -> StoredCheckpoint:
    """Apply a shipped delta object at the target: verify, rebuild, commit; the object is then deleted."""
    what = f"delta {key} in {dst.url}"
    try:
        envelope, plain = _open_delta(dst.get_bytes(key), keys, what=what)
        job = envelope["job"]
        base = StoredCheckpoint(dst, job, envelope["base_id"])
        rebuilt = apply_delta(plain, base.read_parts(keys), what=what)
        return write_plain_checkpoint(dst, envelope["meta"], rebuilt, keys)
    finally:  # applied or refused, the delta is of no further use
        dst.delete(key)


def migrate_checkpoint(
    src: ChunkStore,
    job: str,
    dst: ChunkStore,
    keys: KeyProvider,
    *,
    checkpoint_id: str | None = None,
    base: str | None = None,
    full: bool = False,
    src_location: str | None = None,
    dst_location: str | None = None,
    max_delta_ratio: float = MAX_DELTA_RATIO,
) -> MigrationReport:
    """Make ``dst`` hold the checkpoint (default: the newest in ``src``), by delta when it pays.

    ``base`` names a committed checkpoint of ``job`` in ``dst`` to delta against (default: the
    newest older one there). ``full`` forces a verbatim copy, and so does a delta larger than
    ``max_delta_ratio`` of the full checkpoint. Locations default to the region of a local region
    store (``None`` for other URLs).
    """
    t0 = time.perf_counter()
    started = virtual_now().isoformat()
    ckpt = open_checkpoint(src, job, checkpoint_id)
    report = MigrationReport(
        job=job,
        checkpoint_id=ckpt.checkpoint_id,
        step=ckpt.step,
        content_hash=ckpt.content_hash,
        method="present",
        src_store=src.url,
        dst_store=dst.url,
        src_location=src_location or location_of_store(src.url),
        dst_location=dst_location or location_of_store(dst.url),
        bytes_full=ckpt.stored_bytes,
        bytes_sent=0,
        seconds=0.0,
        started_at=started,
    )
    if src.url == dst.url:
        raise ConfigError(f"migrate {job}/{ckpt.checkpoint_id}: source and target are the same store")
    prefix = checkpoint_prefix(job, ckpt.checkpoint_id)
    if dst.exists(prefix + "COMMIT"):
        report.notes.append("target already holds this checkpoint")
        report.seconds = time.perf_counter() - t0
        return report
    if base is not None and not dst.exists(checkpoint_prefix(job, base) + "COMMIT"):
        raise ConfigError(f"base checkpoint {job}/{base} is not committed in {dst.url}")
    base_id = None if full else (base or choose_base(dst, job, ckpt.step, ckpt.checkpoint_id))
    if base_id is not None and _send_delta(src, dst, ckpt, base_id, keys, report, max_delta_ratio):
        report.seconds = time.perf_counter() - t0
        return report
    report.bytes_sent = copy_checkpoint(src, dst, job, ckpt.checkpoint_id, keys)
    report.method = "full"
    report.bytes_scanned = report.bytes_scanned or ckpt.stored_bytes
    report.bytes_changed = ckpt.plain_bytes
    report.tensors_total = report.tensors_total or sum(int(p["tensors"]) for p in ckpt.meta["parts"].values())
    report.tensors_sent = report.tensors_total
    report.seconds = time.perf_counter() - t0
    return report


def _send_delta(
    src: ChunkStore,
    dst: ChunkStore,
    ckpt: StoredCheckpoint,
    base_id: str,
    keys: KeyProvider,
    report: MigrationReport,
    max_delta_ratio: float,
) -> bool:
    """Ship ``ckpt`` to ``dst`` as an encrypted tensor delta against ``base_id`` and apply it there,
    filling ``report``; ``False`` (with a note) when the delta is larger than ``max_delta_ratio`` of
    the full checkpoint, so the caller copies it whole."""
    job = ckpt.job
    new_plain = ckpt.read_parts(keys)
    base_src = src if src.exists(checkpoint_prefix(job, base_id) + "COMMIT") else dst
    base_plain = StoredCheckpoint(base_src, job, base_id).read_parts(keys)
    plain, stats = compute_delta(new_plain, base_plain)
    obj = _encrypt_delta(job, ckpt, base_id, plain, keys)
    report.bytes_scanned = ckpt.stored_bytes + sum(len(b) for b in base_plain.values())
    report.tensors_total = stats.tensors_total
    if len(obj) > max_delta_ratio * report.bytes_full:
        report.notes.append(
            f"delta ({len(obj)} bytes) not smaller than {max_delta_ratio:.0%} of the checkpoint: full copy"
        )
        return False
    key = f"checkpoints/{job}/{INCOMING}/{os.getpid()}.{ckpt.checkpoint_id}.{secrets.token_hex(4)}.delta"
    dst.put_bytes(key, obj)
    apply_delta_object(dst, key, keys)
    report.method = "tensor_delta"
    report.base = base_id
    report.bytes_sent = len(obj)
    report.bytes_changed = stats.bytes_changed
    report.tensors_sent = stats.tensors_sent
    report.delta_plain_bytes = stats.plain_bytes
    return True
