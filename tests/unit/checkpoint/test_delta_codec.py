"""Delta format 2: bitwise round trips for every dtype and transform (NaN payloads, ±inf, -0.0,
subnormals), format-1 deltas still decode, and a delta that rebuilds a wrong tensor is refused."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import zstandard

from spotshift.checkpoint.delta import FORMAT_VERSION, apply_delta, compute_delta
from spotshift.checkpoint.format import parse_safetensors, safetensors_header
from spotshift.checkpoint.tensor_codec import FLOATS, _forward, _options, contexts, decode_tensor
from spotshift.errors import IntegrityError

FIXTURES = Path(__file__).parent / "fixtures"
# (safetensors dtype, numpy dtype of the same width used to make bit patterns)
DTYPES = [
    ("F32", np.uint32),
    ("F16", np.uint16),
    ("BF16", np.uint16),
    ("F64", np.uint64),
    ("I64", np.uint64),
    ("I32", np.uint32),
    ("I16", np.uint16),
    ("I8", np.uint8),
    ("U8", np.uint8),
    ("BOOL", np.uint8),
    ("F8_E4M3", np.uint8),  # a dtype the codec has no width for: coded as bytes
]
# IEEE special bit patterns per width: ±0, ±inf, quiet and signalling NaNs with payloads, subnormals, max
SPECIAL = {
    4: [
        0x00000000,
        0x80000000,
        0x7F800000,
        0xFF800000,
        0x7FC00001,
        0xFFA5A5A5,
        0x7F800001,
        0x00000001,
        0x807FFFFF,
        0x7F7FFFFF,
    ],
    2: [0x0000, 0x8000, 0x7C00, 0xFC00, 0x7E01, 0xFD55, 0x7F80, 0xFFC1, 0x0001, 0x83FF],
    8: [
        0,
        1 << 63,
        0x7FF0 << 48,
        0xFFF0 << 48,
        0x7FF8_0000_0000_0123,
        0xFFF4_DEAD_BEEF_0001,
        1,
        0x7FEF_FFFF_FFFF_FFFF,
    ],
    1: [0x00, 0x80, 0x7F, 0xFF, 0x01, 0xFE],
}


def bit_patterns(uint: type, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(base, new) elements: random bits, near-identical values, and the special patterns in both
    directions (a NaN payload becoming -0.0 and back, +inf becoming -inf, ...)."""
    rng = np.random.default_rng(seed)
    width = np.dtype(uint).itemsize
    info = np.iinfo(uint)
    base = rng.integers(0, info.max, size=n, dtype=uint, endpoint=True)
    new = base.copy()
    new[: n // 2] = base[: n // 2] + rng.integers(0, 3, size=n // 2, dtype=uint)  # nearby values (wraps)
    new[n // 2 :] = rng.integers(0, info.max, size=n - n // 2, dtype=uint, endpoint=True)
    special = np.array(SPECIAL[width], dtype=uint)
    base[: len(special)] = special
    new[: len(special)] = special[::-1]
    new[len(special) : 2 * len(special)] = special
    return base, new


def part(tensors: dict[str, tuple[str, list[int], bytes]]) -> bytes:
    """A safetensors buffer from (dtype, shape, raw bytes), in name order."""
    names = sorted(tensors)
    header = safetensors_header([(k, tensors[k][0], tensors[k][1], len(tensors[k][2])) for k in names])
    return header + b"".join(tensors[k][2] for k in names)


@pytest.mark.parametrize(("dtype", "uint"), DTYPES)
def test_every_transform_round_trips_bitwise(dtype: str, uint: type) -> None:
    base, new = bit_patterns(uint, 3000, seed=sum(map(ord, dtype)))
    base_copy, new_copy = base.copy(), new.copy()
    width = np.dtype(uint).itemsize if dtype != "F8_E4M3" else 1
    cctx, dctx = contexts()
    for has_base in (True, False):
        for t in _options(dtype, has_base):
            planes = [cctx.compress(p.tobytes()) for p in _forward(t, new, base if has_base else None, dtype)]
            got = decode_tensor(
                t,
                [memoryview(p) for p in planes],
                base.view(np.uint8) if has_base else None,
                dtype,
                width,
                new.nbytes,
                dctx,
                what="t",
            )
            assert got.tobytes() == new.tobytes(), (dtype, t)
            assert np.array_equal(base, base_copy) and np.array_equal(new, new_copy)  # inputs untouched
    assert ("rot" in _options(dtype, False)) == (dtype in FLOATS)


def test_delta_round_trips_every_dtype_and_shape_change() -> None:
    base_t, new_t = {}, {}
    for dtype, uint in DTYPES:
        b, n = bit_patterns(uint, 500, seed=7)
        base_t[dtype] = (dtype, [500], b.tobytes())
        new_t[dtype] = (dtype, [500], n.tobytes())
    new_t["same"] = base_t["same"] = ("F32", [2], np.array([1.5, -0.0], np.float32).tobytes())
    base_t["reshaped"] = ("F32", [2, 3], np.ones(6, np.float32).tobytes())
    new_t["reshaped"] = ("F32", [6], np.full(6, -np.inf, np.float32).tobytes())
    base_t["retyped"] = ("F32", [4], np.ones(4, np.float32).tobytes())
    new_t["retyped"] = ("I32", [4], np.arange(4, dtype=np.int32).tobytes())
    base_t["resized"] = ("F16", [8], np.ones(8, np.float16).tobytes())
    new_t["resized"] = ("F16", [3], np.array([np.nan, 0, -0.0], np.float16).tobytes())
    new_t["empty"] = ("F32", [0], b"")
    new_t["fresh"] = ("BF16", [3], np.array([0x7FC1, 0x8000, 0x0001], np.uint16).tobytes())
    base = {"model": part(base_t), "gone": part({"x": ("F32", [1], b"\0\0\0\0")})}
    new = {"model": part(new_t), "optim": part({"exp_avg/x": ("F32", [1], b"\1\0\0\x80")})}
    plain, stats = compute_delta(new, base)
    assert apply_delta(plain, base, what="t") == new
    assert stats.tensors_total == len(new_t) + 1 and stats.tensors_sent == len(new_t)  # all but "same"
    index = json.loads(
        zstandard.ZstdDecompressor().decompress(plain[8 : 8 + struct.unpack("<Q", plain[:8])[0]])
    )
    assert index["version"] == FORMAT_VERSION == 2


def test_transform_follows_the_tensor_family() -> None:
    """Weights that moved a little code as ULP distances; a fresh optimizer moment (500 steps on,
    nothing left of the old one) codes without the base."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(20000, generator=g) * 0.05
    m_old, m_new = torch.randn(20000, generator=g) * 1e-4, torch.randn(20000, generator=g) * 1e-4

    def raw(t: torch.Tensor) -> tuple[str, list[int], bytes]:
        return ("F32", [t.numel()], t.numpy().tobytes())

    base = {"p": part({"w": raw(w), "m": raw(m_old)})}
    new = {"p": part({"w": raw(w + 1e-4 * torch.randn(20000, generator=g)), "m": raw(m_new)})}
    plain, stats = compute_delta(new, base)
    assert stats.transforms == {"ulp": 1, "rot": 1}
    assert apply_delta(plain, base, what="t") == new


def test_format_1_deltas_still_decode() -> None:
    """``fixtures/delta_v1``: a delta written by the format-1 codec (commit 7230e7e) over fp32, fp16,
    bf16, int64, NaN/±inf/-0.0/subnormals, an unchanged, a reshaped and a new tensor."""
    d = FIXTURES / "delta_v1"
    delta = (d / "delta.bin").read_bytes()
    n = struct.unpack("<Q", delta[:8])[0]
    assert json.loads(zstandard.ZstdDecompressor().decompress(delta[8 : 8 + n]))["version"] == 1
    out = apply_delta(delta, {"model": (d / "base.safetensors").read_bytes()}, what="old delta")
    assert out == {"model": (d / "new.safetensors").read_bytes()}
    with pytest.raises(
        IntegrityError, match=r"^old delta: part model: base has no tensor bf16 of 128 bytes$"
    ):
        apply_delta(delta, {"model": part({"i64": ("I64", [1], bytes(8))})}, what="old delta")


def tampered(plain: bytes, tensor: str) -> bytes:
    """``plain`` with one byte flipped inside ``tensor``'s least significant plane, stored raw by
    zstd (random bits), so the blob still decompresses to the right size, only to wrong bytes."""
    n = struct.unpack("<Q", plain[:8])[0]
    index = json.loads(zstandard.ZstdDecompressor().decompress(plain[8 : 8 + n]))
    pos = 8 + n
    for name, pinfo in sorted(index["parts"].items()):
        for entry in pinfo["tensors"]:
            if name + "/" + entry["name"] == tensor:
                out = bytearray(plain)
                out[pos + entry["z"][0] // 2] ^= 0x01
                return bytes(out)
            pos += sum(entry.get("z", []))
    raise AssertionError(tensor)


def test_a_tensor_that_does_not_match_its_digest_is_refused() -> None:
    rng = np.random.default_rng(5)
    noise = rng.integers(0, 2**32, size=4096, dtype=np.uint32)  # incompressible low planes
    base = {"model": part({"w": ("F32", [4096], noise.tobytes())})}
    step = rng.integers(0, 1 << 16, size=4096, dtype=np.uint32)  # random low ULP-distance bytes: stored raw
    new = {"model": part({"w": ("F32", [4096], (noise + step).tobytes())})}
    plain, _ = compute_delta(new, base)
    bad = tampered(plain, "model/w")
    with pytest.raises(IntegrityError) as err:
        apply_delta(bad, base, what="delta x")
    assert str(err.value) == "delta x: part model: tensor w: rebuilt tensor does not match its digest"
    assert apply_delta(plain, base, what="delta x") == new  # the untampered delta applies


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda ix: ix.update(version=3), r"delta format version 3 is not one this spotshift reads \(1, 2\)"),
        (
            lambda ix: ix["parts"]["model"]["tensors"][0].update(t="magic"),
            r"tensor w: unknown transform 'magic'",
        ),
        (
            lambda ix: ix["parts"]["model"]["tensors"][0].update(z=[1, 2]),
            r"tensor w: 2 byte planes for 4-byte",
        ),
        (
            lambda ix: ix["parts"]["model"]["tensors"][0].update(z=[10**9] * 4),
            r"blob size 1000000000 runs past",
        ),
        (lambda ix: ix["parts"]["model"]["tensors"][0].pop("digest"), r"delta index is malformed \(KeyError"),
        (lambda ix: ix["parts"]["model"]["tensors"][0].update(mode="xor9"), r"unknown delta mode 'xor9'"),
    ],
)
def test_malformed_index_is_refused_in_one_line(edit, message: str) -> None:  # noqa: ANN001
    base = {"model": part({"w": ("F32", [4], np.ones(4, np.float32).tobytes())})}
    new = {"model": part({"w": ("F32", [4], np.full(4, 2, np.float32).tobytes())})}
    plain, _ = compute_delta(new, base)
    n = struct.unpack("<Q", plain[:8])[0]
    index = json.loads(zstandard.ZstdDecompressor().decompress(plain[8 : 8 + n]))
    edit(index)
    ib = zstandard.ZstdCompressor().compress(json.dumps(index).encode())
    with pytest.raises(IntegrityError, match=message) as err:
        apply_delta(struct.pack("<Q", len(ib)) + ib + plain[8 + n :], base, what="d")
    assert "\n" not in str(err.value)


def test_header_of_new_part_is_kept() -> None:
    """The rebuilt part is the new safetensors buffer byte for byte, header included."""
    base = {"m": part({"a": ("F32", [1], b"\0\0\x80?")})}
    new = {"m": part({"a": ("F32", [1], b"\0\0\0@"), "b": ("I8", [2], b"\x01\xff")})}
    out = apply_delta(compute_delta(new, base)[0], base, what="t")
    assert out == new and parse_safetensors(out["m"], what="t")[0]["b"]["dtype"] == "I8"


def test_tampered_delta_object_is_refused_and_nothing_committed(spotshift_home: Path) -> None:
    """A delta object that authenticates but rebuilds a wrong tensor (a codec bug, a bad encoder)
    is refused at the target in one line naming the delta and the tensor; the base stays latest."""
    from spotshift.checkpoint.format import (
        CheckpointPayload,
        StoredCheckpoint,
        open_checkpoint,
        write_checkpoint,
    )
    from spotshift.checkpoint.keys import LocalKeyProvider
    from spotshift.checkpoint.migrate import _encrypt_delta, apply_delta_object, migrate_checkpoint
    from spotshift.home import region_store_url
    from spotshift.sync.store_url import open_store

    src, dst = open_store(region_store_url("gcp/us-central1")), open_store(region_store_url("aws/us-east-1"))
    keys = LocalKeyProvider(create=True)
    g = torch.Generator().manual_seed(9)
    w = torch.randint(-(2**31), 2**31 - 1, (8192,), generator=g, dtype=torch.int32).view(torch.float32)

    def payload(step: int, weights: torch.Tensor) -> CheckpointPayload:
        return CheckpointPayload(
            "ft", step, step, "periodic", "gcp/us-central1", {"step": step}, {"model": {"w": weights}}
        )

    write_checkpoint(src, payload(1, w), keys)
    migrate_checkpoint(src, "ft", dst, keys)
    base_id = open_checkpoint(dst, "ft").checkpoint_id
    step = torch.randint(0, 1 << 16, (8192,), generator=g, dtype=torch.int32)  # random low ULP-distance bytes
    new = write_checkpoint(src, payload(2, (w.view(torch.int32) + step).view(torch.float32)), keys)
    ck = StoredCheckpoint(src, "ft", new.checkpoint_id)
    plain, _ = compute_delta(ck.read_parts(keys), open_checkpoint(dst, "ft").read_parts(keys))
    key = "checkpoints/ft/incoming/1.x.delta"
    dst.put_bytes(key, _encrypt_delta("ft", ck, base_id, tampered(plain, "model/w"), keys))
    with pytest.raises(IntegrityError) as err:
        apply_delta_object(dst, key, keys)
    assert (
        str(err.value)
        == f"delta {key} in {dst.url}: part model: tensor w: rebuilt tensor does not match its digest"
    )
    assert open_checkpoint(dst, "ft").checkpoint_id == base_id and not dst.exists(key)
