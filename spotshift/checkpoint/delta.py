"""Tensor-aligned checkpoint deltas: XOR of the raw bits against the base tensor, byte planes, zstd.

Why not content-defined chunking: an optimizer step touches every trained weight, so byte ranges
of a new checkpoint almost never repeat those of the old one (and encrypted parts never repeat at
all). What does repeat is the *upper bits* of each float: sign, exponent and leading mantissa bits
move little between nearby steps. XOR-ing a tensor with the base tensor of the same name zeroes
those bits (and whole frozen tensors), splitting the result into byte planes (all most-significant
bytes, then the next, ...) gathers the zeros, and zstd squeezes them.

Deltas are computed on plaintext (ciphertext under a fresh key has no similarity), and the delta
itself travels encrypted (:mod:`spotshift.checkpoint.migrate`).

Plaintext delta layout: ``u64 index length || zstd(index JSON) || blobs``. The index lists, per
part, the safetensors header of the new part and, per tensor, ``mode`` (``same`` | ``xor`` |
``raw``), ``zbytes`` and the item size used for the byte planes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from spotshift.checkpoint.format import DTYPE_BYTES, parse_safetensors
from spotshift.errors import IntegrityError

ZSTD_LEVEL = 3


@dataclass
class DeltaStats:
    """What a delta contains, for the transfer record."""

    tensors_total: int = 0
    tensors_sent: int = 0  # xor or raw
    bytes_changed: int = 0  # plaintext bytes of tensors that differ from the base
    plain_bytes: int = 0  # size of the plaintext delta


def _shuffle(buf: np.ndarray, itemsize: int) -> np.ndarray:
    if itemsize <= 1 or buf.size % itemsize:
        return buf
    return np.ascontiguousarray(buf.reshape(-1, itemsize).T).reshape(-1)


def _unshuffle(buf: np.ndarray, itemsize: int) -> np.ndarray:
    if itemsize <= 1 or buf.size % itemsize:
        return buf
    return np.ascontiguousarray(buf.reshape(itemsize, -1).T).reshape(-1)


def _compressor():  # noqa: ANN202
    import zstandard

    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1)


def _decompress(blob: bytes, size: int, what: str) -> np.ndarray:
    import zstandard

    try:
        out = zstandard.ZstdDecompressor().decompress(blob, max_output_size=size)
    except zstandard.ZstdError:
        raise IntegrityError(f"{what}: delta blob does not decompress") from None
    if len(out) != size:
        raise IntegrityError(f"{what}: delta blob decompresses to {len(out)} bytes, expected {size}")
    return np.frombuffer(out, dtype=np.uint8)


def compute_delta(
    new_parts: Mapping[str, bytes], base_parts: Mapping[str, bytes]
) -> tuple[bytes, DeltaStats]:
    """The plaintext delta turning ``base_parts`` into ``new_parts`` (both: part -> safetensors bytes)."""
    cctx = _compressor()
    stats = DeltaStats()
    index: dict[str, Any] = {"version": 1, "parts": {}}
    blobs: list[bytes] = []
    for part, new_buf in sorted(new_parts.items()):
        new_header, new_off = parse_safetensors(new_buf, what=f"part {part}")
        base_buf = base_parts.get(part)
        base_header, base_off = parse_safetensors(base_buf, what=f"base part {part}") if base_buf else ({}, 0)
        new_np = np.frombuffer(new_buf, dtype=np.uint8)
        base_np = np.frombuffer(base_buf, dtype=np.uint8) if base_buf else None
        entries = []
        for name in sorted(new_header):
            info = new_header[name]
            b, e = info["data_offsets"]
            cur = new_np[new_off + b : new_off + e]
            itemsize = DTYPE_BYTES.get(info["dtype"], 1)
            binfo = base_header.get(name)
            stats.tensors_total += 1
            mode, blob = "raw", None
            if (
                base_np is not None
                and binfo is not None
                and binfo["dtype"] == info["dtype"]
                and binfo["shape"] == info["shape"]
            ):
                bb, be = binfo["data_offsets"]
                x = np.bitwise_xor(cur, base_np[base_off + bb : base_off + be])
                if not x.any():
                    mode, blob = "same", b""
                else:
                    mode, blob = "xor", cctx.compress(_shuffle(x, itemsize).tobytes())
            if mode == "raw":
                blob = cctx.compress(_shuffle(cur, itemsize).tobytes())
            if mode != "same":
                stats.tensors_sent += 1
                stats.bytes_changed += int(e - b)
            entries.append({"name": name, "mode": mode, "zbytes": len(blob), "itemsize": itemsize})
            blobs.append(blob)
        index["parts"][part] = {
            "header": bytes(new_buf[:new_off]).decode("latin-1"),
            "size": len(new_buf),
            "tensors": entries,
        }
    index_bytes = cctx.compress(json.dumps(index, separators=(",", ":")).encode())
    out = b"".join([struct.pack("<Q", len(index_bytes)), index_bytes, *blobs])
    stats.plain_bytes = len(out)
    return out, stats


def apply_delta(delta: bytes, base_parts: Mapping[str, bytes], *, what: str) -> dict[str, bytes]:
    """Rebuild the new parts from ``base_parts`` and a plaintext delta; :class:`IntegrityError` if malformed."""
    mv = memoryview(delta)
    if len(mv) < 8:
        raise IntegrityError(f"{what}: delta too short")
    (n,) = struct.unpack("<Q", mv[:8])
    import zstandard

    try:
        index = json.loads(
            zstandard.ZstdDecompressor().decompress(bytes(mv[8 : 8 + n]), max_output_size=1 << 30)
        )
    except (ValueError, zstandard.ZstdError):
        raise IntegrityError(f"{what}: delta index is not zstd-compressed JSON") from None
    pos = 8 + n
    out: dict[str, bytes] = {}
    for part, pinfo in sorted(index["parts"].items()):
        header_bytes = pinfo["header"].encode("latin-1")
        header, data_off = parse_safetensors(header_bytes + b"\0" * 8, what=f"{what}: part {part}")
        buf = bytearray(int(pinfo["size"]))
        buf[:data_off] = header_bytes
        base_buf = base_parts.get(part)
        base_header, base_off = parse_safetensors(base_buf, what=f"base part {part}") if base_buf else ({}, 0)
        base_np = np.frombuffer(base_buf, dtype=np.uint8) if base_buf else None
        target = np.frombuffer(buf, dtype=np.uint8)
        for entry in pinfo["tensors"]:
            name = entry["name"]
            if name not in header:
                raise IntegrityError(f"{what}: tensor {name} is not in the part header")
            b, e = header[name]["data_offsets"]
            size = e - b
            blob = bytes(mv[pos : pos + entry["zbytes"]])
            pos += entry["zbytes"]
            if entry["mode"] in ("same", "xor"):
                binfo = base_header.get(name)
                if base_np is None or binfo is None:
                    raise IntegrityError(f"{what}: base has no tensor {part}/{name}")
                bb, be = binfo["data_offsets"]
                base_t = base_np[base_off + bb : base_off + be]
                if be - bb != size:
                    raise IntegrityError(f"{what}: base tensor {part}/{name} has another size")
            if entry["mode"] == "same":
                target[data_off + b : data_off + e] = base_t
            elif entry["mode"] == "xor":
                x = _unshuffle(_decompress(blob, size, what), entry["itemsize"])
                target[data_off + b : data_off + e] = np.bitwise_xor(x, base_t)
            elif entry["mode"] == "raw":
                target[data_off + b : data_off + e] = _unshuffle(
                    _decompress(blob, size, what), entry["itemsize"]
                )
            else:
                raise IntegrityError(f"{what}: unknown delta mode {entry['mode']!r}")
        out[part] = bytes(buf)
    if pos != len(mv):
        raise IntegrityError(f"{what}: delta has {len(mv) - pos} trailing bytes")
    return out
