"""Lossless coding of one tensor against its base: bit transforms, byte planes, one zstd frame per plane.

Delta format 2 (:mod:`spotshift.checkpoint.delta`) codes every changed tensor as
``transform -> byte planes -> zstd per plane``. A transform is a bijection on the tensor's
elements seen as unsigned integers of the element width, so any bit pattern (NaN payloads, ±inf,
-0.0, subnormals) round-trips. Which transform wins depends on the tensor family; the encoder
estimates each candidate's size from the order-0 entropy of its byte planes and compresses only
the winner:

``ulp``
    the distance, in representable values, from the base element to the new one (floats mapped to
    integers in value order, then subtracted, then zigzag-coded): small for weights that moved a
    little, whose XOR would flip every mantissa bit below the first changed one.
``rot``
    the new bits rotated left by one (for floats: the exponent becomes the top byte, the sign the
    lowest bit), no base: optimizer moments 500 steps apart share nothing with their base but a
    low-entropy exponent; one plane per field keeps zstd's entropy coder on the exponent alone.
``rotsub``
    ``rot`` whose exponent plane is the difference to the base's exponent plane: an element's
    second moment keeps its order of magnitude between checkpoints.
``xor``
    the bits XOR the base's (format 1's only transform), tried for integers next to ``ulp``.
``bits``
    the new bits unchanged (integers without a base).

Planes are stored least significant byte first, each its own zstd frame (one entropy table per
field instead of one per 128 KiB block of mixed fields); a tensor smaller than :data:`SPLIT` keeps
its planes in one frame (``z`` then lists one size), where frame headers would cost more.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spotshift.errors import IntegrityError

ZSTD_LEVEL = 1
FLOATS = frozenset({"F16", "BF16", "F32", "F64"})
SIGNED = frozenset({"I8", "I16", "I32", "I64"})
TRANSFORMS = ("ulp", "rot", "rotsub", "xor", "bits")
#: elements the transform is chosen on (an evenly strided sample of larger tensors)
SAMPLE = 1 << 12
#: tensors smaller than this (bytes) take the first option (``ulp`` with a base) without a trial
TRIAL_MIN = 1 << 10
#: tensors smaller than this (bytes) keep all their planes in one zstd frame
SPLIT = 1 << 14
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def contexts() -> tuple[Any, Any]:
    """A zstd compressor and decompressor for one delta (reused across its tensors; not thread-safe)."""
    import zstandard

    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1), zstandard.ZstdDecompressor()


def _ordered(u: np.ndarray, dtype: str) -> np.ndarray:
    """Bits -> unsigned integers in the order of the values they encode (a bijection): floats flip
    all bits when negative and the sign bit otherwise, signed integers flip the sign bit. Always a
    new array (callers modify it in place)."""
    shift = 8 * u.dtype.itemsize - 1
    top = u.dtype.type(1 << shift)
    if dtype in FLOATS:
        mask = u.dtype.type(0) - (u >> shift)
        mask |= top
        mask ^= u
        return mask
    return u ^ top if dtype in SIGNED else u.copy()


def _unordered(o: np.ndarray, dtype: str) -> np.ndarray:
    """Inverse of :func:`_ordered`, in place on ``o``."""
    shift = 8 * o.dtype.itemsize - 1
    top = o.dtype.type(1 << shift)
    if dtype in FLOATS:
        mask = o >> shift
        mask -= o.dtype.type(1)
        mask |= top
        o ^= mask
    elif dtype in SIGNED:
        o ^= top
    return o


def _zigzag(d: np.ndarray) -> np.ndarray:
    """Two's complement -> 0, -1, 1, -2, ... as 0, 1, 2, 3, ... (in place on ``d``)."""
    s = d.view(d.dtype.str.replace("u", "i"))
    sign = s >> (8 * d.dtype.itemsize - 1)
    s <<= 1
    s ^= sign
    return d


def _unzigzag(z: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_zigzag`, in place on ``z``."""
    sign = z & 1
    np.negative(sign, out=sign)  # 1 -> all ones (unsigned wrap-around)
    z >>= 1
    z ^= sign
    return z


def _rotl(u: np.ndarray) -> np.ndarray:
    return (u << 1) | (u >> (8 * u.dtype.itemsize - 1))


def _rotr(u: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_rotl`, in place on ``u``."""
    low = u << (8 * u.dtype.itemsize - 1)
    u >>= 1
    u |= low
    return u


def _planes(u: np.ndarray) -> np.ndarray:
    """``(itemsize, n)`` byte planes of ``u``, least significant first."""
    return np.ascontiguousarray(u.view(np.uint8).reshape(-1, u.dtype.itemsize).T)


def _unplanes(planes: np.ndarray, uint: Any) -> np.ndarray:
    return planes.T.copy(order="C").view(uint).reshape(-1)  # always a new, writable array


def _entropy_bytes(plane: np.ndarray) -> float:
    """Order-0 entropy of a byte plane, in bytes (what zstd's entropy stage approaches)."""
    return float(_plane_entropies(plane[None, :])[0])


def _plane_entropies(planes: np.ndarray) -> np.ndarray:
    """Order-0 entropy of each row of ``planes`` (``(k, m)`` bytes), in bytes, in one pass."""
    k, m = planes.shape
    keys = planes.astype(np.intp)
    keys += np.arange(k, dtype=np.intp)[:, None] * 256
    p = np.bincount(keys.ravel(), minlength=k * 256).reshape(k, 256) / max(m, 1)
    logs = np.log2(p, out=np.zeros_like(p), where=p > 0)
    return -(p * logs).sum(axis=1) * m / 8


def _options(dtype: str, has_base: bool) -> tuple[str, ...]:
    if not has_base:
        return ("rot",) if dtype in FLOATS else ("bits",)
    return ("ulp", "rot", "rotsub") if dtype in FLOATS else ("ulp", "xor")


def _top_byte(u: np.ndarray) -> np.ndarray:
    return u.view(np.uint8).reshape(-1, u.dtype.itemsize)[:, -1]


def _forward(transform: str, u: np.ndarray, b: np.ndarray | None, dtype: str) -> np.ndarray:
    """The byte planes of ``u`` under ``transform`` (``b``: the base elements, when it uses them)."""
    if transform == "bits":
        return _planes(u)
    if transform == "xor":
        return _planes(u ^ b)
    if transform == "ulp":
        d = _ordered(u, dtype)
        d -= _ordered(b, dtype)  # type: ignore[arg-type]
        return _planes(_zigzag(d))
    planes = _planes(_rotl(u))
    if transform == "rotsub":
        planes[-1] -= _top_byte(_rotl(b))  # type: ignore[arg-type]
    return planes


def element_view(raw: np.ndarray, dtype: str, itemsize: int) -> np.ndarray:
    """The tensor bytes ``raw`` (uint8) as unsigned integers of the element width (bytes if odd)."""
    if itemsize not in _UINT or raw.size % itemsize:
        return raw
    return raw.view(_UINT[itemsize])


def encode_tensor(
    raw: np.ndarray, base: np.ndarray | None, dtype: str, itemsize: int, cctx: Any
) -> tuple[str, list[bytes]]:
    """Code tensor bytes ``raw`` against ``base`` (same size, or ``None``): ``(transform, planes)``.

    The transform is chosen on an evenly strided sample of at most :data:`SAMPLE` elements (by the
    order-0 entropy of the two most significant planes; the others are near-random in every
    candidate), for tensors of at least :data:`TRIAL_MIN` bytes."""
    u = element_view(raw, dtype, itemsize)
    b = None if base is None else element_view(base, dtype, itemsize)
    options = _options(dtype, b is not None)
    if len(options) == 1 or raw.size < TRIAL_MIN:
        best, planes = options[0], _forward(options[0], u, b, dtype)
    else:
        step = max(1, u.size // SAMPLE)
        su = u if step == 1 else np.ascontiguousarray(u[::step])
        sb = b if step == 1 or b is None else np.ascontiguousarray(b[::step])
        trial = [_forward(t, su, sb, dtype) for t in options]
        tops = np.concatenate([p[-2:] for p in trial])  # the two most significant planes of each
        pick = int(np.argmin(_plane_entropies(tops).reshape(len(options), -1).sum(axis=1)))
        best = options[pick]
        planes = trial[pick] if step == 1 else _forward(best, u, b, dtype)  # whole tensor tried: reuse
    if raw.size < SPLIT:  # one frame: per-plane frames would cost more in headers than they save
        return best, [cctx.compress(planes.tobytes())]
    return best, [cctx.compress(p.tobytes()) for p in planes]


def decompress(dctx: Any, blob: bytes | memoryview, size: int, what: str) -> np.ndarray:
    """``blob`` decompressed to exactly ``size`` bytes (uint8); :class:`IntegrityError` otherwise."""
    import zstandard

    try:
        out = dctx.decompress(blob, max_output_size=size)
    except zstandard.ZstdError:
        raise IntegrityError(f"{what}: delta blob does not decompress") from None
    if len(out) != size:
        raise IntegrityError(f"{what}: delta blob decompresses to {len(out)} bytes, expected {size}")
    return np.frombuffer(out, dtype=np.uint8)


def decode_tensor(
    transform: str,
    blobs: list[memoryview],
    base: np.ndarray | None,
    dtype: str,
    itemsize: int,
    size: int,
    dctx: Any,
    *,
    what: str,
) -> np.ndarray:
    """Invert :func:`encode_tensor`: the tensor's ``size`` bytes (uint8). :class:`IntegrityError` when
    the blobs do not decode to that size or the transform needs a base that is missing."""
    width = itemsize if itemsize in _UINT and size % itemsize == 0 else 1
    if transform not in TRANSFORMS:
        raise IntegrityError(f"{what}: unknown transform {transform!r}")
    if len(blobs) not in (1, width):
        raise IntegrityError(f"{what}: {len(blobs)} byte planes for {width}-byte elements")
    if transform in ("ulp", "rotsub", "xor") and base is None:
        raise IntegrityError(f"{what}: transform {transform} needs a base tensor")
    n = size // width
    if len(blobs) == 1:
        planes = decompress(dctx, blobs[0], size, what).reshape(width, n)
    else:
        planes = np.empty((width, n), dtype=np.uint8)
        for i, blob in enumerate(blobs):
            planes[i] = decompress(dctx, blob, n, what)
    uint = _UINT[width]
    b = None if base is None else element_view(base, dtype, width)
    v = _unplanes(planes, uint)  # a new array: the steps below work in place
    if transform == "rotsub":
        _top_byte(v)[:] += _top_byte(_rotl(b))  # type: ignore[arg-type]
    if transform in ("rot", "rotsub"):
        _rotr(v)
    elif transform == "ulp":
        _unzigzag(v)
        v += _ordered(b, dtype)  # type: ignore[arg-type]
        _unordered(v, dtype)
    elif transform == "xor":
        v ^= b
    return v.view(np.uint8)
