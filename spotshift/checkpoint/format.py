"""The checkpoint format: encrypted safetensors parts, sealed JSON metadata, a commit marker.

Layout in any :class:`~spotshift.sync.store.ChunkStore` (the local tier is a store too)::

    checkpoints/<job>/<checkpoint_id>/<part>-<ctx>.enc   one encrypted safetensors file per part
    checkpoints/<job>/<checkpoint_id>/meta-<ctx>.json    metadata (plaintext, sealed)
    checkpoints/<job>/<checkpoint_id>/COMMIT             written last, names and authenticates the metadata
    checkpoints/<job>/latest                             pointer to the newest committed checkpoint
    checkpoints/<job>/incoming/<pid>.<id>.<hex>.delta    a migration's tensor delta, until applied
    .tmp/<pid>.<...>                                     a writer's temp files (local stores)

``checkpoint_id`` is ``s<step:010d>-<first 16 hex of the content hash>``: the same training state
has the same id wherever and however often it is written. ``<ctx>`` names one encryption of it
(its fresh data key), so two writers of the same id never mix their parts: ``COMMIT`` is
write-once and names the metadata that won; the loser's objects are garbage, never a broken
checkpoint. Parts are plain safetensors files once decrypted (``safetensors.torch.load`` reads
them); usually ``model`` (weights) and ``optim`` (optimizer moments).

The content hash (BLAKE3) covers the job, step, tokens, the JSON training state (RNG states, data
position, configs) and the plaintext hash of every part; timestamps, location and encryption do
not enter it. Metadata fields: see :func:`build_meta`.

``COMMIT`` names the metadata object and carries ``mac``: keyed BLAKE3 over the marker's fields and
the metadata bytes, under a key derived from the checkpoint's data key (so only a holder of the KEK
can write a marker that verifies; nothing in it is an unkeyed hash a forger could recompute).
Markers written before the MAC (``meta_hash``, an unkeyed BLAKE3) are still read: their metadata
seal, checked on every verification, is what authenticates them; a copy gets a keyed marker.

Verification order (:meth:`StoredCheckpoint.verify`): stored sizes (truncation) and stored BLAKE3
hashes (flipped bytes, swapped files) before any decryption; then the data key unwraps under the
expected KEK, the metadata seal, the commit MAC, the content hash against the sealed part hashes,
every segment's GCM tag, and finally the plaintext hashes. Nothing commits a checkpoint it has not
verified this way: writers produce it, :func:`~spotshift.checkpoint.tiered.copy_checkpoint`
verifies before copying, migration deltas verify both ends (:mod:`spotshift.checkpoint.migrate`),
and a resume takes the newest checkpoint that verifies (:func:`open_newest_verified`).

Garbage of killed writers (temp files, undelivered deltas) is named after the writer's pid; every
checkpoint writer removes what dead writers left in the store it writes to (:func:`sweep_dead_writers`)
and ``spotshift ckpt list`` reports it (:func:`leftovers`).
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import logging
import os
import secrets
import struct
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import blake3

from spotshift.atomic import fsync_dir
from spotshift.checkpoint import crypto
from spotshift.checkpoint.keys import KeyProvider
from spotshift.errors import ConfigError, IntegrityError, NotFoundError
from spotshift.sync.store import ChunkStore, LocalChunkStore

FORMAT = "spotshift-checkpoint/1"
HASH_ALG = "blake3"
#: the commit marker's MAC: keyed BLAKE3 under a key derived (BLAKE3 derive_key) from the data key
COMMIT_MAC_ALG = "blake3-keyed"
_COMMIT_MAC_CONTEXT = "spotshift checkpoint COMMIT marker v1"
INCOMING = "incoming"

log = logging.getLogger("spotshift.checkpoint")
KINDS = ("periodic", "emergency", "final")

_SAFETENSORS_DTYPES = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float64": "F64",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}
DTYPE_BYTES = {
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F64": 8,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}


def canonical_json(obj: Any) -> bytes:
    """Sorted, compact JSON: the bytes that are hashed and sealed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def checkpoint_id_for(step: int, content_hash: str) -> str:
    """``s<step:010d>-<16 hex>``: sortable by step, unique by content."""
    return f"s{step:010d}-{content_hash[:16]}"


def step_of(checkpoint_id: str) -> int:
    """The step encoded in a checkpoint id; :class:`ConfigError` for something else."""
    if len(checkpoint_id) < 12 or checkpoint_id[0] != "s" or not checkpoint_id[1:11].isdigit():
        raise ConfigError(f"{checkpoint_id!r} is not a checkpoint id (s<step>-<hash>)")
    return int(checkpoint_id[1:11])


def job_prefix(job: str) -> str:
    return f"checkpoints/{job}/"


def checkpoint_prefix(job: str, checkpoint_id: str) -> str:
    return f"checkpoints/{job}/{checkpoint_id}/"


def latest_key(job: str) -> str:
    return f"checkpoints/{job}/latest"


# ---- tensors as bytes ------------------------------------------------------------------------------


def tensor_view(t: Any) -> tuple[str, list[int], memoryview]:
    """(safetensors dtype, shape, raw little-endian bytes) of a torch tensor or numpy array, zero-copy on CPU."""
    mod = type(t).__module__
    if mod.startswith("torch"):
        import torch

        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        dtype = str(t.dtype).removeprefix("torch.")
        shape = list(t.shape)
        flat = t.reshape(-1)
        raw = flat.view(torch.uint8).numpy() if flat.numel() else b""
    else:
        import numpy as np

        arr = np.ascontiguousarray(t)
        dtype = "bool" if arr.dtype == np.bool_ else str(arr.dtype)
        shape = list(arr.shape)
        raw = arr.reshape(-1).view(np.uint8)
    if dtype not in _SAFETENSORS_DTYPES:
        raise ConfigError(f"tensor dtype {dtype} cannot be checkpointed")
    return _SAFETENSORS_DTYPES[dtype], shape, memoryview(raw).cast("B")


def safetensors_header(entries: list[tuple[str, str, list[int], int]]) -> bytes:
    """The 8-byte length + JSON header of a safetensors file for (name, dtype, shape, nbytes) in order."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape, nbytes in entries:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    body = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    body += b" " * (-len(body) % 8)  # safetensors aligns the data section to 8 bytes
    return struct.pack("<Q", len(body)) + body


def parse_safetensors(buf: bytes | memoryview, *, what: str) -> tuple[dict[str, Any], int]:
    """(tensor entries without ``__metadata__``, offset of the data section) of a safetensors buffer."""
    mv = memoryview(buf)
    if len(mv) < 8:
        raise IntegrityError(f"{what}: not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", mv[:8])
    if n > len(mv) - 8:
        raise IntegrityError(f"{what}: safetensors header runs past the end")
    try:
        header = json.loads(bytes(mv[8 : 8 + n]))
    except ValueError:
        raise IntegrityError(f"{what}: safetensors header is not JSON") from None
    header.pop("__metadata__", None)
    return header, 8 + n


def part_layout(tensors: Mapping[str, Any]) -> tuple[bytes, list[tuple[str, memoryview]]]:
    """Header bytes and the (name, bytes) stream of one part, tensors ordered by name."""
    entries, views = [], []
    for name in sorted(tensors):
        dtype, shape, raw = tensor_view(tensors[name])
        entries.append((name, dtype, shape, len(raw)))
        views.append((name, raw))
    return safetensors_header(entries), views


# ---- metadata ----------------------------------------------------------------------------------------


@dataclass
class CheckpointPayload:
    """What a trainer hands to the checkpoint writer at a step boundary."""

    job: str
    step: int
    tokens: int
    kind: str
    location: str
    state: dict[str, Any]  # JSON: rng states, data position, model/train config, optimizer hyperparameters
    parts: dict[str, Any]  # part -> {tensor name -> torch tensor / numpy array}, or safetensors bytes
    versions: dict[str, str] = field(default_factory=dict)
    created_at: str | None = None  # ISO UTC; None: now (virtual clock). Copies keep the original's.

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"checkpoint kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if not self.parts:
            raise ConfigError("a checkpoint needs at least one part")


def content_hash_of(job: str, step: int, tokens: int, state: Any, plain_hashes: Mapping[str, str]) -> str:
    """BLAKE3 over everything that makes two checkpoints the same training state."""
    doc = {"format": FORMAT, "job": job, "step": step, "tokens": tokens, "state": state}
    doc["parts"] = dict(sorted(plain_hashes.items()))
    return blake3.blake3(canonical_json(doc)).hexdigest()


def runtime_versions() -> dict[str, str]:
    """torch / python / spotshift versions (and CUDA / NCCL where torch has them) recorded with each
    checkpoint (not part of its identity)."""
    import platform

    from spotshift import __version__

    out = {"python": platform.python_version(), "spotshift": __version__}
    try:
        import torch

        out["torch"] = torch.__version__
        if torch.version.cuda:
            out["cuda"] = str(torch.version.cuda)
        if torch.cuda.is_available() and hasattr(torch.cuda, "nccl"):
            with contextlib.suppress(Exception):
                out["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return out


def _utc_now_iso() -> str:
    from spotshift.clock import virtual_now

    return virtual_now().isoformat()


def sealed_bytes(meta: Mapping[str, Any]) -> bytes:
    """The metadata minus its seal: what the seal authenticates."""
    doc = json.loads(json.dumps(meta))
    doc.get("encryption", {}).pop("meta_tag", None)
    return canonical_json(doc)


# ---- writing -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointRef:
    """A committed checkpoint in a store."""

    store_url: str
    job: str
    checkpoint_id: str
    step: int
    content_hash: str

    @property
    def url(self) -> str:
        """``<store url>/checkpoints/<job>/<id>`` — what ``spotshift ckpt`` commands accept."""
        return f"{self.store_url.rstrip('/')}/{checkpoint_prefix(self.job, self.checkpoint_id).rstrip('/')}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "store_url": self.store_url,
            "job": self.job,
            "checkpoint_id": self.checkpoint_id,
            "step": self.step,
            "content_hash": self.content_hash,
            "url": self.url,
        }


def _fsync_close(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()


class _Tee:
    """A binary sink writing every chunk to several files (the stored bytes, once encrypted)."""

    def __init__(self, files: list[BinaryIO]):
        self.files = files

    def write(self, data: Any) -> int:
        for f in self.files:
            f.write(data)
        return len(data)


def write_checkpoint(
    tier: LocalChunkStore,
    payload: CheckpointPayload,
    keys: KeyProvider,
    *,
    segment_bytes: int = crypto.DEFAULT_SEGMENT_BYTES,
    timings: dict[str, float] | None = None,
    mirror: LocalChunkStore | None = None,
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
    """
    timings = timings if timings is not None else {}
    for k in ("serialize_s", "encrypt_s", "write_s"):
        timings.setdefault(k, 0.0)
    t_start = time.perf_counter()
    sweep_dead_writers(tier, payload.job)
    data_key = secrets.token_bytes(32)
    ctx = secrets.token_hex(8)
    context = {"spotshift:job": payload.job, "spotshift:ctx": ctx}
    t0 = time.perf_counter()
    wrapped = keys.wrap(data_key, context)
    timings["wrap_s"] = time.perf_counter() - t0

    # staging files live in the store's temp dir, named so remove_stale_temp_files() clears a dead writer's
    stores = [tier] if mirror is None else [tier, mirror]
    stagings = [st.root / ".tmp" for st in stores]
    for staging in stagings:
        staging.mkdir(parents=True, exist_ok=True)
    stage_prefix = f"{os.getpid()}.{ctx}."
    parts_meta: dict[str, dict[str, Any]] = {}
    try:
        for index, part in enumerate(sorted(payload.parts)):
            t0 = time.perf_counter()
            chunks, n_tensors = _part_chunks(payload.parts[part], what=f"part {part}")
            timings["serialize_s"] += time.perf_counter() - t0
            key_name = f"{part}-{ctx}.enc"
            outs = [open(staging / (stage_prefix + key_name), "wb") for staging in stagings]  # noqa: SIM115
            try:
                w = crypto.EncryptingWriter(
                    outs[0] if len(outs) == 1 else _Tee(outs),
                    data_key,
                    part_index=index,
                    part_name=part,
                    segment_bytes=segment_bytes,
                    timings=timings,
                )
                for chunk in chunks:
                    w.write(chunk)
                w.close()
                t0 = time.perf_counter()
                for out in outs:
                    out.flush()
                    if os.fstat(out.fileno()).st_size != w.stored_bytes:  # a short write never commits
                        raise IntegrityError(
                            f"part {part}: {out.name} is not the {w.stored_bytes} bytes written"
                        )
                    _fsync_close(out)
                timings["write_s"] += time.perf_counter() - t0
            except BaseException:
                for out in outs:
                    out.close()
                raise
            parts_meta[part] = {
                "index": index,
                "key": key_name,
                "tensors": n_tensors,
                "plain_bytes": w.plain_bytes,
                "plain_hash": w.plain_hash.hexdigest(),
                "stored_bytes": w.stored_bytes,
                "stored_hash": w.stored_hash.hexdigest(),
            }
        content_hash = content_hash_of(
            payload.job,
            payload.step,
            payload.tokens,
            payload.state,
            {p: m["plain_hash"] for p, m in parts_meta.items()},
        )
        ckpt_id = checkpoint_id_for(payload.step, content_hash)
        meta = build_meta(payload, ckpt_id, content_hash, parts_meta, keys, wrapped, ctx, segment_bytes)
        meta["encryption"]["meta_tag"] = base64.b64encode(crypto.seal(data_key, sealed_bytes(meta))).decode()
        meta_bytes = json.dumps(meta, indent=1, sort_keys=True).encode()
        meta_key = f"meta-{ctx}.json"
        t0 = time.perf_counter()
        for st, staging in zip(stores, stagings, strict=True):
            with open(staging / (stage_prefix + meta_key), "wb") as mf:
                mf.write(meta_bytes)
                mf.flush()
                os.fsync(mf.fileno())
            final_dir = st.root / checkpoint_prefix(payload.job, ckpt_id)
            final_dir.mkdir(parents=True, exist_ok=True)
            for name in [*(p["key"] for p in parts_meta.values()), meta_key]:
                os.replace(staging / (stage_prefix + name), final_dir / name)
            fsync_dir(final_dir)
        timings["write_s"] += time.perf_counter() - t0
    finally:
        for staging in stagings:
            for leftover in staging.glob(stage_prefix + "*"):
                leftover.unlink(missing_ok=True)
    t0 = time.perf_counter()
    for st in stores:
        commit_checkpoint(
            st, payload.job, ckpt_id, meta_key, meta_bytes, payload.step, content_hash, data_key
        )
    timings["write_s"] += time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    return CheckpointRef(tier.url, payload.job, ckpt_id, payload.step, content_hash)


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
        "created_at": payload.created_at or _utc_now_iso(),
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
        "committed_at": _utc_now_iso(),
        "mac_alg": COMMIT_MAC_ALG,
    }
    commit["mac"] = commit_mac(data_key, commit, meta_bytes)
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


def commit_mac(data_key: bytes, commit: Mapping[str, Any], meta_bytes: bytes) -> str:
    """Keyed BLAKE3 of a commit marker's fields (all but ``mac``) and the metadata bytes it names."""
    mac_key = blake3.blake3(data_key, derive_key_context=_COMMIT_MAC_CONTEXT).digest()
    fields = {k: v for k, v in commit.items() if k != "mac"}
    fields["meta_blake3"] = blake3.blake3(meta_bytes).hexdigest()
    return blake3.blake3(canonical_json(fields), key=mac_key).hexdigest()


def read_latest_pointer(store: ChunkStore, job: str) -> dict[str, Any] | None:
    """The ``latest`` pointer document, or None when absent or unreadable."""
    try:
        doc = json.loads(store.get_bytes(latest_key(job)))
    except (NotFoundError, ValueError):
        return None
    return doc if isinstance(doc, dict) and "checkpoint_id" in doc else None


# ---- reading --------------------------------------------------------------------------------------------


def list_checkpoints(store: ChunkStore, job: str) -> list[str]:
    """Ids of the committed checkpoints of ``job`` in ``store``, oldest step first."""
    ids = []
    for key in store.list_keys(job_prefix(job)):
        rest = key[len(job_prefix(job)) :]
        ckpt, _, name = rest.partition("/")
        if name == "COMMIT":
            with contextlib.suppress(ConfigError):
                step_of(ckpt)
                ids.append(ckpt)
    return sorted(ids)


def latest_checkpoint(store: ChunkStore, job: str) -> str | None:
    """The newest committed checkpoint id: the ``latest`` pointer when it names a committed one, else a scan."""
    pointer = read_latest_pointer(store, job)
    if pointer and store.exists(checkpoint_prefix(job, pointer["checkpoint_id"]) + "COMMIT"):
        committed = list_checkpoints(store, job)
        # the pointer only moves forward, but a scan catches a commit whose pointer write was lost
        if committed and step_of(committed[-1]) > int(pointer.get("step", -1)):
            return committed[-1]
        return str(pointer["checkpoint_id"])
    committed = list_checkpoints(store, job)
    return committed[-1] if committed else None


@contextlib.contextmanager
def open_object(store: ChunkStore, key: str) -> Iterator[BinaryIO]:
    """A readable binary file of one stored object (the file itself for local stores, else a temp copy)."""
    if isinstance(store, LocalChunkStore):
        try:
            f = open(store.root / key, "rb")  # noqa: SIM115
        except FileNotFoundError:
            raise NotFoundError(f"{key} not found in {store.url}") from None
        with f:
            yield f
        return
    from spotshift.atomic import remove_stale_temp_files
    from spotshift.home import cache_dir

    tmpdir = cache_dir() / "ckpt-download"
    tmpdir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(tmpdir, owned=True)  # downloads of killed readers
    fd, tmp = tempfile.mkstemp(dir=tmpdir, prefix=f"{os.getpid()}.")
    os.close(fd)
    try:
        store.get_file(key, tmp)
        with open(tmp, "rb") as f:
            yield f
    finally:
        Path(tmp).unlink(missing_ok=True)


class StoredCheckpoint:
    """A committed checkpoint in a store: metadata available at once, tensors after verification."""

    def __init__(self, store: ChunkStore, job: str, checkpoint_id: str):
        self.store = store
        self.job = job
        self.checkpoint_id = checkpoint_id
        self.label = checkpoint_label(store, job, checkpoint_id)
        self.prefix = checkpoint_prefix(job, checkpoint_id)
        try:
            self.commit = json.loads(store.get_bytes(self.prefix + "COMMIT"))
        except NotFoundError:
            if any(True for _ in store.list_keys(self.prefix)):
                raise IntegrityError(f"{self.label}: not committed (no COMMIT marker)") from None
            raise NotFoundError(f"{self.label}: not found") from None
        except ValueError:
            raise IntegrityError(f"{self.label}: COMMIT marker is not JSON") from None
        if not isinstance(self.commit, dict):
            raise IntegrityError(f"{self.label}: COMMIT marker is not a JSON object")
        meta_key = str(self.commit.get("meta_key", ""))
        if not meta_key.startswith("meta-") or "/" in meta_key:
            raise IntegrityError(f"{self.label}: COMMIT marker names no metadata object")
        try:
            self.meta_bytes = store.get_bytes(self.prefix + meta_key)
        except NotFoundError:
            raise IntegrityError(f"{self.label}: metadata {meta_key} is missing") from None
        if "mac" in self.commit:  # keyed: checked with the data key (data_key())
            if self.commit.get("mac_alg") != COMMIT_MAC_ALG:
                raise IntegrityError(
                    f"{self.label}: COMMIT marker uses unknown MAC {self.commit.get('mac_alg')!r}"
                )
        elif "meta_hash" in self.commit:
            # a marker from before the keyed MAC: a consistency check only; the metadata seal,
            # checked by every verification, is what authenticates such a checkpoint
            if blake3.blake3(self.meta_bytes).hexdigest() != self.commit.get("meta_hash"):
                raise IntegrityError(f"{self.label}: metadata does not match the hash in COMMIT")
        else:
            raise IntegrityError(f"{self.label}: COMMIT marker carries no MAC")
        try:
            self.meta: dict[str, Any] = json.loads(self.meta_bytes)
        except ValueError:
            raise IntegrityError(f"{self.label}: metadata is not JSON") from None
        if not isinstance(self.meta, dict):
            raise IntegrityError(f"{self.label}: metadata is not a JSON object")
        if self.meta.get("format") != FORMAT:
            raise IntegrityError(f"{self.label}: unknown format {self.meta.get('format')!r}")
        if self.meta.get("checkpoint_id") != checkpoint_id or self.meta.get("job") != job:
            raise IntegrityError(f"{self.label}: metadata belongs to another checkpoint (swapped file?)")
        self._check_shape()

    def _check_shape(self) -> None:
        """Refuse metadata whose fields have the wrong types (one line, never a KeyError later)."""
        m = self.meta

        def well_formed() -> bool:
            enc, parts = m["encryption"], m["parts"]
            fields = ("ctx", "wrapped_key", "kek_id", "alg", "key_provider")
            sizes = ("index", "tensors", "plain_bytes", "stored_bytes")
            return (
                isinstance(m["state"], dict)
                and min(int(m["step"]), int(m["tokens"])) >= 0
                and isinstance(m["content_hash"], str)
                and int(enc["segment_bytes"]) > 0
                and all(isinstance(enc[k], str) for k in fields)
                and isinstance(parts, dict)
                and bool(parts)
                and all(
                    isinstance(pm["key"], str)  # a plain object name inside the checkpoint's prefix
                    and "/" not in pm["key"]
                    and not pm["key"].startswith(".")
                    and min(int(pm[k]) for k in sizes) >= 0
                    and isinstance(pm["plain_hash"], str)
                    and isinstance(pm["stored_hash"], str)
                    for pm in parts.values()
                )
            )

        try:
            ok = well_formed()
        except (KeyError, TypeError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise IntegrityError(f"{self.label}: metadata is malformed")

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def content_hash(self) -> str:
        return str(self.meta["content_hash"])

    @property
    def stored_bytes(self) -> int:
        """Bytes of the stored checkpoint: parts + metadata + commit marker."""
        return sum(int(p["stored_bytes"]) for p in self.meta["parts"].values()) + len(self.meta_bytes)

    @property
    def plain_bytes(self) -> int:
        return sum(int(p["plain_bytes"]) for p in self.meta["parts"].values())

    def ref(self) -> CheckpointRef:
        return CheckpointRef(self.store.url, self.job, self.checkpoint_id, self.step, self.content_hash)

    def part_names(self) -> list[str]:
        return sorted(self.meta["parts"], key=lambda p: self.meta["parts"][p]["index"])

    # -- checks that need no key ------------------------------------------------------------------------
    def stored_damage(self) -> list[str]:
        """Parts that are missing or not the size the metadata says (``stat`` only: no hashing, no key)."""
        seg = int(self.meta["encryption"]["segment_bytes"])
        damage = []
        for part in self.part_names():
            pm = self.meta["parts"][part]
            size = self.store.size(self.prefix + pm["key"])
            expected = int(pm["stored_bytes"])
            if size is None:
                damage.append(f"part {part} is missing")
            elif expected != crypto.stored_size(int(pm["plain_bytes"]), seg):
                damage.append(f"part {part} sizes in the metadata disagree")
            elif size != expected:
                what = "truncated" if size < expected else "has extra bytes"
                damage.append(f"part {part} {what} ({size} of {expected} bytes)")
        return damage

    def check_stored(self) -> None:
        """Sizes and BLAKE3 hashes of every stored part (truncation, flipped bytes, swapped files)."""
        damage = self.stored_damage()
        if damage:
            raise IntegrityError(f"{self.label}: {damage[0]}")
        for part in self.part_names():
            pm = self.meta["parts"][part]
            h = blake3.blake3(max_threads=blake3.blake3.AUTO)
            with open_object(self.store, self.prefix + pm["key"]) as f:
                while chunk := f.read(8 << 20):
                    h.update(chunk)
            if h.hexdigest() != pm["stored_hash"]:
                raise IntegrityError(
                    f"{self.label}: part {part} does not match its hash (corrupt or swapped)"
                )

    # -- checks that need the key ------------------------------------------------------------------------
    def data_key(self, keys: KeyProvider) -> bytes:
        """Unwrap the data key with ``keys`` and check the metadata seal."""
        enc = self.meta["encryption"]
        if enc.get("kek_id") != keys.key_id:
            raise IntegrityError(
                f"{self.label}: encrypted under key {enc.get('kek_id')}, but the key provider has {keys.key_id} "
                "(wrong key)"
            )
        context = {"spotshift:job": self.job, "spotshift:ctx": str(enc["ctx"])}
        try:
            wrapped = base64.b64decode(enc["wrapped_key"], validate=True)
            tag = base64.b64decode(enc["meta_tag"], validate=True)
        except (KeyError, ValueError):
            raise IntegrityError(f"{self.label}: encryption envelope is malformed") from None
        key = keys.unwrap(wrapped, context, what=self.label)
        crypto.check_seal(key, sealed_bytes(self.meta), tag, what=self.label)
        if "mac" in self.commit and not hmac.compare_digest(
            commit_mac(key, self.commit, self.meta_bytes), str(self.commit["mac"])
        ):
            raise IntegrityError(
                f"{self.label}: commit marker does not authenticate (forged, or not this checkpoint's)"
            )
        return key

    def iter_part(self, part: str, data_key: bytes) -> Iterator[bytes]:
        """Plaintext segments of one part (authenticated; the plaintext hash is checked at the end)."""
        pm = self.meta["parts"][part]
        h = blake3.blake3(max_threads=blake3.blake3.AUTO)
        with open_object(self.store, self.prefix + pm["key"]) as f:
            for plain in crypto.iter_decrypt(
                f,
                data_key,
                part_index=int(pm["index"]),
                part_name=part,
                segment_bytes=int(self.meta["encryption"]["segment_bytes"]),
                plain_bytes=int(pm["plain_bytes"]),
                what=f"{self.label}: part {part}",
            ):
                h.update(plain)
                yield plain
        if h.hexdigest() != pm["plain_hash"]:
            raise IntegrityError(f"{self.label}: part {part} plaintext does not match its hash")

    def read_parts(self, keys: KeyProvider, *, check_stored: bool = True) -> dict[str, bytes]:
        """Every part's plaintext safetensors bytes, fully verified (stored hashes first, content hash last)."""
        if check_stored:
            self.check_stored()
        key = self.data_key(keys)
        out: dict[str, bytes] = {}
        for part in self.part_names():
            buf = bytearray()
            for seg in self.iter_part(part, key):
                buf += seg
            out[part] = bytes(buf)
        self._check_content_hash({p: self.meta["parts"][p]["plain_hash"] for p in out})
        return out

    def _check_content_hash(self, plain_hashes: Mapping[str, str]) -> None:
        m = self.meta
        if (
            content_hash_of(self.job, int(m["step"]), int(m["tokens"]), m["state"], plain_hashes)
            != m["content_hash"]
        ):
            raise IntegrityError(f"{self.label}: content hash does not match")
        if checkpoint_id_for(int(m["step"]), m["content_hash"]) != self.checkpoint_id:
            raise IntegrityError(f"{self.label}: id does not match its content hash")

    def verified_data_key(self, keys: KeyProvider) -> bytes:
        """Every check (stored sizes and hashes, key, seal, commit MAC, content hash, every segment and
        plaintext hash), decrypting in a stream; returns the data key (a copy re-keys its marker with it)."""
        self.check_stored()
        key = self.data_key(keys)
        self._check_content_hash({p: self.meta["parts"][p]["plain_hash"] for p in self.part_names()})
        for part in self.part_names():
            for _ in self.iter_part(part, key):
                pass
        return key

    def verify(self, keys: KeyProvider) -> dict[str, Any]:
        """Every check (:meth:`verified_data_key`); the report ``spotshift ckpt verify --json`` prints."""
        t0 = time.perf_counter()
        self.verified_data_key(keys)
        return {
            "checkpoint": f"{self.job}/{self.checkpoint_id}",
            "store": self.store.url,
            "ok": True,
            "step": self.step,
            "content_hash": self.content_hash,
            "parts": len(self.part_names()),
            "stored_bytes": self.stored_bytes,
            "seconds": round(time.perf_counter() - t0, 4),
        }

    def load_tensors(self, keys: KeyProvider) -> dict[str, dict[str, Any]]:
        """Every part as torch tensors (after full verification)."""
        return tensors_of(self.read_parts(keys))

    def summary(self) -> dict[str, Any]:
        """What ``spotshift ckpt inspect`` shows: no key needed, nothing decrypted.

        ``damage`` lists parts missing or of the wrong size (``stat`` against the metadata) and
        ``ok`` is False when there is any; hashes, seal and MAC need ``verify`` (and the key).
        """
        m = self.meta
        state = m.get("state", {})
        damage = self.stored_damage()
        sizes = {p: self.store.size(self.prefix + pm["key"]) for p, pm in m["parts"].items()}
        return {
            "ok": not damage,
            "damage": damage,
            "checkpoint": f"{self.job}/{self.checkpoint_id}",
            "store": self.store.url,
            "job": self.job,
            "step": self.step,
            "tokens": m.get("tokens"),
            "kind": m.get("kind"),
            "location": m.get("location"),
            "created_at": m.get("created_at"),
            "committed_at": self.commit.get("committed_at"),
            "content_hash": self.content_hash,
            "stored_bytes": self.stored_bytes,
            "plain_bytes": self.plain_bytes,
            "parts": {
                p: {
                    **{k: pm[k] for k in ("tensors", "plain_bytes", "stored_bytes")},
                    "found_bytes": sizes[p],
                }
                for p, pm in m["parts"].items()
            },
            "model": state.get("model_config"),
            "train": state.get("train_config"),
            "data_position": state.get("data_position"),
            "num_threads": state.get("num_threads"),
            "versions": m.get("versions"),
            "encryption": {k: m["encryption"][k] for k in ("alg", "key_provider", "kek_id", "segment_bytes")},
        }


def checkpoint_label(store: ChunkStore, job: str, checkpoint_id: str) -> str:
    """How errors and logs name a checkpoint: ``checkpoint <job>/<id> in <store url>``."""
    return f"checkpoint {job}/{checkpoint_id} in {store.url}"


def tensors_of(parts: Mapping[str, bytes]) -> dict[str, dict[str, Any]]:
    """Verified plaintext parts (safetensors bytes) as torch tensors."""
    from safetensors.torch import load

    return {part: load(buf) for part, buf in parts.items()}


@dataclass
class VerifiedCheckpoint:
    """A checkpoint that passed every check, its plaintext parts, and the newer ones passed over."""

    checkpoint: StoredCheckpoint
    parts: dict[str, bytes]
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"checkpoint_id", "reason"}, newest first


def open_newest_verified(store: ChunkStore, job: str, keys: KeyProvider) -> VerifiedCheckpoint | None:
    """The newest committed checkpoint of ``job`` in ``store`` that verifies, fully read (a resume).

    Checkpoints that fail verification (tampered, truncated, wrong key...) are passed over, newest
    first, each with a warning naming it and why; they are listed in ``skipped``. None when the store
    holds no committed checkpoint of the job; :class:`IntegrityError` when it holds some and none
    verifies (never silently start over). Problems that are not a checkpoint's (a missing key file,
    refused credentials) propagate at once.
    """
    committed = list_checkpoints(store, job)
    newest = latest_checkpoint(store, job)
    order = ([newest] if newest else []) + [c for c in reversed(committed) if c != newest]
    skipped: list[dict[str, str]] = []
    for ckpt_id in order:
        label = checkpoint_label(store, job, ckpt_id)
        try:
            ck = StoredCheckpoint(store, job, ckpt_id)
            parts = ck.read_parts(keys)
        except (IntegrityError, NotFoundError) as exc:
            reason = str(exc).removeprefix(label + ": ")
            log.warning("skipped checkpoint %s/%s in %s: %s", job, ckpt_id, store.url, reason)
            skipped.append({"checkpoint_id": ckpt_id, "reason": reason})
            continue
        return VerifiedCheckpoint(ck, parts, skipped)
    if skipped:
        first = skipped[0]
        raise IntegrityError(
            f"no checkpoint of job {job!r} in {store.url} verifies ({len(skipped)} committed; newest "
            f"{first['checkpoint_id']}: {first['reason']})"
        )
    return None


def sweep_dead_writers(store: ChunkStore, job: str | None = None) -> int:
    """Remove what killed writers left in ``store``: its temp files and (for ``job``) undelivered deltas.

    Uses the store's one rule for dead writers (pid-named files whose pid has exited,
    :func:`spotshift.atomic.stale_temp_files`), so it applies to local stores, where that pid
    means something; object stores are left alone. Returns how many files were removed.
    """
    from spotshift.atomic import remove_stale_temp_files

    if not isinstance(store, LocalChunkStore):
        return 0
    removed = store.remove_stale_temp_files()
    if job is not None:
        removed += remove_stale_temp_files(store.root / job_prefix(job) / INCOMING, owned=True)
    return removed


def leftovers(store: ChunkStore, job: str) -> dict[str, Any]:
    """What killed writers left that :func:`sweep_dead_writers` would remove, and uncommitted checkpoints.

    ``temp_files``/``temp_bytes`` (the store's temp files of dead writers), ``incoming``/
    ``incoming_bytes`` (undelivered deltas of ``job`` from dead writers) and ``uncommitted`` (ids
    with objects but no ``COMMIT``: a copy or write cut short, or one still in progress; the next
    complete write of the same id reuses them).
    """
    from spotshift.atomic import TempFile, stale_temp_files

    temp: list[TempFile] = []
    incoming: list[TempFile] = []
    if isinstance(store, LocalChunkStore):
        temp = store.stale_temp_files()
        incoming = stale_temp_files(store.root / job_prefix(job) / INCOMING, owned=True)
    committed = set(list_checkpoints(store, job))
    dirs = set()
    for key in store.list_keys(job_prefix(job)):
        ckpt, _, name = key[len(job_prefix(job)) :].partition("/")
        if name and ckpt != INCOMING and ckpt not in committed:
            dirs.add(ckpt)
    return {
        "temp_files": len(temp),
        "temp_bytes": sum(t.bytes for t in temp),
        "incoming": len(incoming),
        "incoming_bytes": sum(t.bytes for t in incoming),
        "uncommitted": sorted(dirs),
    }


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except FileNotFoundError:
        return 0


def open_checkpoint(store: ChunkStore, job: str, checkpoint_id: str | None = None) -> StoredCheckpoint:
    """A committed checkpoint by id, or the latest one when ``checkpoint_id`` is None or ``latest``."""
    if checkpoint_id in (None, "latest"):
        found = latest_checkpoint(store, job)
        if found is None:
            raise NotFoundError(f"no committed checkpoint of job {job!r} in {store.url}")
        checkpoint_id = found
    return StoredCheckpoint(store, job, checkpoint_id)


def parse_checkpoint_path(path: str) -> tuple[str, str, str | None]:
    """``(store url, job, checkpoint id or None for latest)`` of a checkpoint path or URL.

    Accepts ``<store>/checkpoints/<job>/<id>``, ``<store>/checkpoints/<job>[/latest]`` (newest), for
    ``file://``, ``s3://``, ``gs://`` URLs and plain local paths.
    """
    from spotshift.cloud_errors import redact_url

    shown = redact_url(path)  # errors name the path without the user-info a URL may carry
    text = path.strip().rstrip("/")
    if "://" not in text:
        text = Path(text).expanduser().resolve().as_uri()
    marker = "/checkpoints/"
    i = text.rfind(marker)
    if i < 0:
        raise ConfigError(f"{shown!r} is not a checkpoint path (expected <store>/checkpoints/<job>[/<id>])")
    store_url, rest = text[:i], text[i + len(marker) :]
    segs = [s for s in rest.split("/") if s]
    if not segs or len(segs) > 2:
        raise ConfigError(f"{shown!r} is not a checkpoint path (expected <store>/checkpoints/<job>[/<id>])")
    if store_url.endswith(":/") or store_url.endswith(":"):
        raise ConfigError(f"{shown!r}: the store part of the path is empty")
    ckpt = segs[1] if len(segs) == 2 and segs[1] != "latest" else None
    if ckpt is not None:
        step_of(ckpt)
    return store_url, segs[0], ckpt
