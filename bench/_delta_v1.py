"""The format-1 delta encoder (spotshift up to issue 20), kept only as the benchmark's baseline.

Each tensor XOR-ed with the base tensor of the same name (or, without one, its own bytes), split
into byte planes, the planes concatenated into one zstd frame (level 3). The library no longer
writes this format; it still reads it (``spotshift.checkpoint.delta.apply_delta``), which is how
the benchmark decodes these deltas.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from spotshift.checkpoint.format import DTYPE_BYTES, parse_safetensors


def _shuffle(buf: np.ndarray, itemsize: int) -> np.ndarray:
    if itemsize <= 1 or buf.size % itemsize:
        return buf
    return np.ascontiguousarray(buf.reshape(-1, itemsize).T).reshape(-1)


def encode_tensor_v1(cctx: Any, cur: np.ndarray, base: np.ndarray | None, itemsize: int) -> tuple[str, bytes]:
    """(mode, blob) of one tensor in format 1."""
    if base is None:
        return "raw", cctx.compress(_shuffle(cur, itemsize).tobytes())
    x = np.bitwise_xor(cur, base)
    if not x.any():
        return "same", b""
    return "xor", cctx.compress(_shuffle(x, itemsize).tobytes())


def compute_delta_v1(new_parts: Mapping[str, bytes], base_parts: Mapping[str, bytes]) -> bytes:
    """A format-1 plaintext delta turning ``base_parts`` into ``new_parts``."""
    import zstandard

    cctx = zstandard.ZstdCompressor(level=3, threads=-1)
    index: dict[str, Any] = {"version": 1, "parts": {}}
    blobs: list[bytes] = []
    for part, new_buf in sorted(new_parts.items()):
        new_header, new_off = parse_safetensors(new_buf, what=part)
        base_buf = base_parts.get(part)
        base_header, base_off = parse_safetensors(base_buf, what=part) if base_buf else ({}, 0)
        new_np = np.frombuffer(new_buf, dtype=np.uint8)
        base_np = np.frombuffer(base_buf, dtype=np.uint8) if base_buf else None
        entries = []
        for name in sorted(new_header):
            info = new_header[name]
            b, e = info["data_offsets"]
            itemsize = DTYPE_BYTES.get(info["dtype"], 1)
            binfo = base_header.get(name)
            base_t = None
            if (
                base_np is not None
                and binfo
                and (binfo["dtype"], binfo["shape"]) == (info["dtype"], info["shape"])
            ):
                base_t = base_np[base_off + binfo["data_offsets"][0] : base_off + binfo["data_offsets"][1]]
            mode, blob = encode_tensor_v1(cctx, new_np[new_off + b : new_off + e], base_t, itemsize)
            entries.append({"name": name, "mode": mode, "zbytes": len(blob), "itemsize": itemsize})
            blobs.append(blob)
        index["parts"][part] = {
            "header": bytes(new_buf[:new_off]).decode("latin-1"),
            "size": len(new_buf),
            "tensors": entries,
        }
    index_bytes = cctx.compress(json.dumps(index, separators=(",", ":")).encode())
    return b"".join([struct.pack("<Q", len(index_bytes)), index_bytes, *blobs])
