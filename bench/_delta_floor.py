"""What a context-modelling lossless coder could reach on a full fine-tune delta (issue 20 item 3).

For each fp32 tensor family (weights, ``exp_avg``, ``exp_avg_sq``) of two checkpoints, the code
length of an adaptive coder — per byte plane, a Krichevsky-Trofimov (Dirichlet 1/2) estimate per
context, which is what an arithmetic coder learning the statistics as it goes pays, model cost
included (closed form, so the order of the elements does not matter) — under the best of these
context models:

``ulp``
    the zigzag ULP distance to the old value (format 2's weight transform); its top plane given the
    old value's exponent, the next plane given the top plane and that exponent, each lower plane
    given the plane above it.
``rot``
    the new value's exponent given the old value's exponent (for ``exp_avg`` also the new
    ``exp_avg_sq``'s exponent of the same element, decoded first), the top mantissa byte given the
    exponent, each lower plane given the plane above it (sign in the lowest plane).

Each plane takes the cheapest of: no context, each listed context alone, all of them together.

Elements equal to their old value (the moments of embedding rows no token reaches, exactly zero
in both) count as free, so the figure is a floor for such coders rather than a size. The trainer's
AdamW betas are (0.9, 0.95): 500 steps decay the old moments by 0.9**500 ~ 1e-23 and
0.95**500 ~ 7e-12, so no part of a new moment is predictable from the old one; only the order of
magnitude of the second moment carries over (its exponent). ``low_planes_bits`` is the measured
cost, per changed value, of its two low ``rot`` planes: the 15 low mantissa bits and the sign, out
of 16 (15 where the sign is always +, as in ``exp_avg_sq``); ``mantissa_sign_bits`` the same for
all 23 mantissa bits and the sign, and ``ratio_if_exponent_free`` what the family would cost if
its exponents cost nothing.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from spotshift.checkpoint.format import parse_safetensors
from spotshift.checkpoint.tensor_codec import _forward

KT = 0.5  # Dirichlet parameter of the Krichevsky-Trofimov estimator


def _lgamma_sum(counts: np.ndarray) -> float:
    """sum(lgamma(c + KT) - lgamma(KT)) over ``counts`` (zero counts add nothing)."""
    vals, mult = np.unique(counts[counts > 0], return_counts=True)
    return float(sum(m * (math.lgamma(v + KT) - math.lgamma(KT)) for v, m in zip(vals, mult, strict=True)))


def adaptive_bits(sym: np.ndarray, ctx: np.ndarray | None = None) -> float:
    """Bits an adaptive (KT) coder spends on the bytes ``sym`` with one model per value of ``ctx``."""
    if sym.size == 0:
        return 0.0
    c = np.zeros(sym.size, np.int64) if ctx is None else np.unique(ctx, return_inverse=True)[1].ravel()
    counts = np.bincount(c * 256 + sym.astype(np.int64), minlength=(int(c.max()) + 1) * 256)
    totals = counts.reshape(-1, 256).sum(axis=1)
    ln = sum(math.lgamma(t + 256 * KT) - math.lgamma(256 * KT) for t in totals) - _lgamma_sum(counts)
    return ln / math.log(2)


def best_bits(sym: np.ndarray, *ctx: np.ndarray) -> float:
    """The cheapest of :func:`adaptive_bits` without context, with each of ``ctx`` and with all of them
    (a coder picks its context per plane; a rich context on random bytes only adds model cost)."""
    options = [None, *ctx] + ([_join(*ctx)] if len(ctx) > 1 else [])
    return min(adaptive_bits(sym, c) for c in options)


def _join(*ctx: np.ndarray) -> np.ndarray:
    out = np.zeros(ctx[0].size, np.int64)
    for c in ctx:
        out = out * 256 + c
    return out


def family_arrays(new: dict[str, bytes], base: dict[str, bytes]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per family, the new and old fp32 elements (uint32) of all its tensors, in the same order."""
    acc: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for part in sorted(new):
        header, off = parse_safetensors(new[part], what=part)
        bheader, boff = parse_safetensors(base[part], what=part)
        for name, info in header.items():
            if info["dtype"] != "F32" or name not in bheader:
                continue
            fam, key = ("weights", name) if part == "model" else tuple(name.split("/", 1))
            a, b = info["data_offsets"], bheader[name]["data_offsets"]
            cur = np.frombuffer(new[part], np.uint32, (a[1] - a[0]) // 4, off + a[0])
            old = np.frombuffer(base[part], np.uint32, (b[1] - b[0]) // 4, boff + b[0])
            acc.setdefault(fam, {})[key] = (cur, old)
    return {
        fam: (np.concatenate([c for c, _ in t.values()]), np.concatenate([o for _, o in t.values()]))
        for fam, t in sorted(acc.items())
        if fam in ("weights", "exp_avg", "exp_avg_sq")
    }


def floor(new: dict[str, bytes], base: dict[str, bytes], coded: dict[str, int]) -> dict[str, Any]:
    """Per family: bits per value of the best context model, its ratio to the raw bytes, the gain over
    format 2 (``coded``: format 2's bytes per family), and the low planes' cost."""
    fams = family_arrays(new, base)
    sq_exp = None
    if "exp_avg_sq" in fams:
        sq_exp = _forward("rot", fams["exp_avg_sq"][0], None, "F32")[3]
    out: dict[str, Any] = {}
    for fam, (cur, old) in fams.items():
        changed = cur != old
        c, o = cur[changed], old[changed]
        u, r = _forward("ulp", c, o, "F32"), _forward("rot", c, None, "F32")
        old_exp = _forward("rot", o, None, "F32")[3]
        exp_ctx = [old_exp] if fam != "exp_avg" or sq_exp is None else [old_exp, sq_exp[changed]]
        lower = best_bits(r[1], r[2]) + best_bits(r[0], r[1])
        mantissa = best_bits(r[2], r[3]) + lower
        models = {
            "ulp": best_bits(u[3], old_exp)
            + best_bits(u[2], u[3], old_exp)
            + best_bits(u[1], u[2])
            + best_bits(u[0], u[1]),
            "rot": best_bits(r[3], *exp_ctx) + best_bits(r[2], r[3]) + lower,
        }
        best = min(models, key=models.__getitem__)
        n = cur.size
        out[fam] = {
            "values": n,
            "unchanged": round(1 - c.size / n, 4),
            "bits_per_value": {k: round(v / n, 2) for k, v in models.items()},
            "best": best,
            "floor_ratio": round(models[best] / 8 / (4 * n), 4),
            "v2_ratio": round(coded[fam] / (4 * n), 4),
            "low_planes_bits": round(lower / max(1, c.size), 2),
            "mantissa_sign_bits": round(mantissa / max(1, c.size), 2),
            "ratio_if_exponent_free": round(mantissa / 8 / (4 * n), 4),
        }
    return out
