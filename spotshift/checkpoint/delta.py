"""Tensor-aligned checkpoint deltas: each tensor coded against the base tensor of the same name.

Why not content-defined chunking: an optimizer step touches every trained weight, so byte ranges
of a new checkpoint almost never repeat those of the old one (and encrypted parts never repeat at
all). What does repeat is the *upper bits* of each float: sign, exponent and leading mantissa bits
move little between nearby steps, and frozen tensors not at all. Each changed tensor goes through
the bit transform that suits its family (:mod:`spotshift.checkpoint.tensor_codec`: ULP distance
for weights, exponent-aligned fields for optimizer moments, ...), is split into byte planes and
each plane is zstd-compressed on its own.

Deltas are computed on plaintext (ciphertext under a fresh key has no similarity), and the delta
itself travels encrypted (:mod:`spotshift.checkpoint.migrate`).

Plaintext delta layout: ``u64 index length || zstd(index JSON) || blobs``. The index lists, per
part, the safetensors header of the new part and, per tensor in blob order:

- format 2 (written): ``mode`` ``same`` (the base tensor) or ``planes`` with the transform ``t``,
  the compressed size of each byte plane ``z`` and ``digest``, BLAKE3-128 of the rebuilt tensor,
  checked before the tensor is used;
- format 1 (still read): ``mode`` ``same`` | ``xor`` | ``raw``, ``zbytes`` and ``itemsize``: the
  XOR with the base (or the new bytes) as byte planes in one zstd frame, no per-tensor digest.

Either way the caller verifies every rebuilt part against the checkpoint's plaintext hashes before
committing it.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spotshift.checkpoint.format import DTYPE_BYTES, parse_safetensors
from spotshift.checkpoint.tensor_codec import contexts, decode_tensor, decompress, encode_tensor
from spotshift.errors import IntegrityError

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


@dataclass
class DeltaStats:
    """What a delta contains, for the transfer record."""

    tensors_total: int = 0
    tensors_sent: int = 0  # not "same"
    bytes_changed: int = 0  # plaintext bytes of tensors that differ from the base
    plain_bytes: int = 0  # size of the plaintext delta
    transforms: Counter[str] = field(default_factory=Counter)  # transform -> tensors coded with it


def _digest(raw: np.ndarray | bytes) -> str:
    import blake3

    return blake3.blake3(raw).hexdigest(length=16)


def _tensors(buf: bytes | None, what: str) -> tuple[dict[str, Any], np.ndarray | None, int]:
    if not buf:
        return {}, None, 0
    header, off = parse_safetensors(buf, what=what)
    return header, np.frombuffer(buf, dtype=np.uint8), off


def _same_layout(a: Mapping[str, Any], b: Mapping[str, Any] | None) -> bool:
    return b is not None and a["dtype"] == b["dtype"] and a["shape"] == b["shape"]


def compute_delta(
    new_parts: Mapping[str, bytes], base_parts: Mapping[str, bytes]
) -> tuple[bytes, DeltaStats]:
    """The plaintext delta (format 2) turning ``base_parts`` into ``new_parts`` (both: part ->
    safetensors bytes). Tensors absent from the base, or of another dtype or shape, are coded alone."""
    cctx, _ = contexts()
    stats = DeltaStats()
    index: dict[str, Any] = {"version": FORMAT_VERSION, "parts": {}}
    blobs: list[bytes] = []
    for part, new_buf in sorted(new_parts.items()):
        new_header, new_np, new_off = _tensors(new_buf, f"part {part}")
        base_header, base_np, base_off = _tensors(base_parts.get(part), f"base part {part}")
        entries = []
        for name in sorted(new_header):
            info = new_header[name]
            b, e = info["data_offsets"]
            cur = new_np[new_off + b : new_off + e]  # type: ignore[index]
            binfo = base_header.get(name)
            base_t = None
            if base_np is not None and _same_layout(info, binfo):
                bb, be = binfo["data_offsets"]
                base_t = base_np[base_off + bb : base_off + be]
            stats.tensors_total += 1
            if base_t is not None and np.array_equal(cur, base_t):
                entries.append({"name": name, "mode": "same"})
                continue
            transform, planes = encode_tensor(
                cur, base_t, info["dtype"], DTYPE_BYTES.get(info["dtype"], 1), cctx
            )
            entries.append(
                {
                    "name": name,
                    "mode": "planes",
                    "t": transform,
                    "z": [len(p) for p in planes],
                    "digest": _digest(cur),
                }
            )
            blobs.extend(planes)
            stats.tensors_sent += 1
            stats.bytes_changed += int(e - b)
            stats.transforms[transform] += 1
        index["parts"][part] = {
            "header": bytes(new_buf[:new_off]).decode("latin-1"),
            "size": len(new_buf),
            "tensors": entries,
        }
    index_bytes = cctx.compress(json.dumps(index, separators=(",", ":")).encode())
    out = b"".join([struct.pack("<Q", len(index_bytes)), index_bytes, *blobs])
    stats.plain_bytes = len(out)
    return out, stats


def _read_index(mv: memoryview, what: str) -> tuple[dict[str, Any], int]:
    import zstandard

    if len(mv) < 8:
        raise IntegrityError(f"{what}: delta too short")
    (n,) = struct.unpack("<Q", mv[:8])
    try:
        index = json.loads(
            zstandard.ZstdDecompressor().decompress(bytes(mv[8 : 8 + n]), max_output_size=1 << 30)
        )
    except (ValueError, zstandard.ZstdError):
        raise IntegrityError(f"{what}: delta index is not zstd-compressed JSON") from None
    if not isinstance(index, dict) or index.get("version") not in READABLE_VERSIONS:
        version = index.get("version") if isinstance(index, dict) else None
        raise IntegrityError(
            f"{what}: delta format version {version!r} is not one this spotshift reads {READABLE_VERSIONS}"
        )
    return index, 8 + n


class _Reader:
    """The blobs of one plaintext delta, read in index order."""

    def __init__(self, delta: bytes, version: int, pos: int) -> None:
        self.mv, self.version, self.pos = memoryview(delta), version, pos
        self.dctx = contexts()[1]

    def take(self, n: Any, what: str) -> memoryview:
        if not isinstance(n, int) or n < 0 or self.pos + n > len(self.mv):
            raise IntegrityError(f"{what}: blob size {n!r} runs past the end of the delta")
        self.pos += n
        return self.mv[self.pos - n : self.pos]

    def v1_tensor(
        self, entry: Mapping[str, Any], base_t: np.ndarray | None, size: int, what: str
    ) -> np.ndarray:
        """Format 1: the XOR with the base (``xor``) or the new bytes (``raw``), byte-shuffled, one frame."""
        if entry["mode"] not in ("xor", "raw"):
            raise IntegrityError(f"{what}: unknown delta mode {entry['mode']!r}")
        out = decompress(self.dctx, self.take(entry["zbytes"], what), size, what)
        itemsize = int(entry["itemsize"])
        if itemsize > 1 and size % itemsize == 0:
            out = np.ascontiguousarray(out.reshape(itemsize, -1).T).reshape(-1)
        return np.bitwise_xor(out, base_t) if entry["mode"] == "xor" else out

    def v2_tensor(
        self, entry: Mapping[str, Any], base_t: np.ndarray | None, info: Mapping[str, Any], what: str
    ) -> np.ndarray:
        """Format 2: byte planes under a transform; the rebuilt tensor must match its digest."""
        if entry["mode"] != "planes":
            raise IntegrityError(f"{what}: unknown delta mode {entry['mode']!r}")
        if not isinstance(entry["z"], list):
            raise IntegrityError(f"{what}: byte plane sizes are not a list")
        blobs = [self.take(z, what) for z in entry["z"]]
        b, e = info["data_offsets"]
        dtype = info["dtype"]
        raw = decode_tensor(
            entry["t"], blobs, base_t, dtype, DTYPE_BYTES.get(dtype, 1), e - b, self.dctx, what=what
        )
        if _digest(raw) != entry["digest"]:
            raise IntegrityError(f"{what}: rebuilt tensor does not match its digest")
        return raw

    def part(self, pinfo: Mapping[str, Any], base_buf: bytes | None, what: str) -> bytes:
        """One rebuilt part: its header from the index, each tensor from the base and/or its blobs."""
        header_bytes = pinfo["header"].encode("latin-1")
        header, data_off = parse_safetensors(header_bytes + b"\0" * 8, what=what)
        buf = bytearray(int(pinfo["size"]))
        buf[:data_off] = header_bytes
        base_header, base_np, base_off = _tensors(base_buf, f"{what}: base")
        target = np.frombuffer(buf, dtype=np.uint8)
        for entry in pinfo["tensors"]:
            name = entry["name"]
            if name not in header:
                raise IntegrityError(f"{what}: tensor {name} is not in the part header")
            b, e = header[name]["data_offsets"]
            binfo = base_header.get(name)
            base_t = None
            if base_np is not None and binfo is not None:
                bb, be = binfo["data_offsets"]
                base_t = base_np[base_off + bb : base_off + be] if be - bb == e - b else None
            if entry["mode"] in ("same", "xor") and base_t is None:
                raise IntegrityError(f"{what}: base has no tensor {name} of {e - b} bytes")
            dst = target[data_off + b : data_off + e]
            if entry["mode"] == "same":
                dst[:] = base_t
            elif self.version == 1:
                dst[:] = self.v1_tensor(entry, base_t, e - b, f"{what}: tensor {name}")
            else:
                dst[:] = self.v2_tensor(entry, base_t, header[name], f"{what}: tensor {name}")
        return bytes(buf)


def apply_delta(delta: bytes, base_parts: Mapping[str, bytes], *, what: str) -> dict[str, bytes]:
    """Rebuild the new parts from ``base_parts`` and a plaintext delta (format 1 or 2).

    :class:`IntegrityError` (one line naming ``what``, the part and the tensor) when the delta is
    malformed, needs a base tensor that is missing, or a rebuilt tensor does not match its digest."""
    index, pos = _read_index(memoryview(delta), what)
    reader = _Reader(delta, index["version"], pos)
    out: dict[str, bytes] = {}
    try:
        for part, pinfo in sorted(index["parts"].items()):
            out[part] = reader.part(pinfo, base_parts.get(part), f"{what}: part {part}")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise IntegrityError(f"{what}: delta index is malformed ({type(exc).__name__}: {exc})") from None
    if reader.pos != len(reader.mv):
        raise IntegrityError(f"{what}: delta has {len(reader.mv) - reader.pos} trailing bytes")
    return out
