"""The checkpoint format's vocabulary: names, ids, tensors as safetensors bytes, hashes, the payload.

Everything here is pure (no store, no key provider): what a writer (:mod:`.writer`) produces and
a reader (:mod:`.reader`) checks is defined in these functions, so the two cannot drift apart.
The layout and the verification order are described in :mod:`spotshift.checkpoint.format`.
"""

from __future__ import annotations

import contextlib
import json
import platform
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import blake3

from spotshift import __version__
from spotshift.clock import virtual_now
from spotshift.errors import ConfigError, IntegrityError
from spotshift.sync.store import ChunkStore

FORMAT = "spotshift-checkpoint/1"
HASH_ALG = "blake3"
#: the commit marker's MAC: keyed BLAKE3 under a key derived (BLAKE3 derive_key) from the data key
COMMIT_MAC_ALG = "blake3-keyed"
_COMMIT_MAC_CONTEXT = "spotshift checkpoint COMMIT marker v1"
INCOMING = "incoming"

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


def tensors_of(parts: Mapping[str, bytes]) -> dict[str, dict[str, Any]]:
    """Verified plaintext parts (safetensors bytes) as torch tensors."""
    from safetensors.torch import load

    return {part: load(buf) for part, buf in parts.items()}


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


def utc_now_iso() -> str:
    """Now on the virtual clock, ISO UTC: the timestamps of metadata, markers and pointers."""
    return virtual_now().isoformat()


def sealed_bytes(meta: Mapping[str, Any]) -> bytes:
    """The metadata minus its seal: what the seal authenticates."""
    doc = json.loads(json.dumps(meta))
    doc.get("encryption", {}).pop("meta_tag", None)
    return canonical_json(doc)


def commit_mac(data_key: bytes, commit: Mapping[str, Any], meta_bytes: bytes) -> str:
    """Keyed BLAKE3 of a commit marker's fields (all but ``mac``) and the metadata bytes it names."""
    mac_key = blake3.blake3(data_key, derive_key_context=_COMMIT_MAC_CONTEXT).digest()
    fields = {k: v for k, v in commit.items() if k != "mac"}
    fields["meta_blake3"] = blake3.blake3(meta_bytes).hexdigest()
    return blake3.blake3(canonical_json(fields), key=mac_key).hexdigest()


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


def checkpoint_label(store: ChunkStore, job: str, checkpoint_id: str) -> str:
    """How errors and logs name a checkpoint: ``checkpoint <job>/<id> in <store url>``."""
    return f"checkpoint {job}/{checkpoint_id} in {store.url}"
