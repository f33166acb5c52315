"""The delta benchmark's floor estimate (bench/_delta_floor.py): an adaptive coder's code length
that charges random bytes their 8 bits, learns a context that determines the byte, and counts
elements equal to their old value as free."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

from _delta_floor import adaptive_bits, best_bits, floor  # noqa: E402

from spotshift.checkpoint.format import part_layout  # noqa: E402


def test_adaptive_bits_random_constant_and_context() -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, 1 << 16, dtype=np.uint8)
    assert 7.99 < adaptive_bits(noise) / noise.size < 8.02  # random bytes: 8 bits, model cost small
    assert adaptive_bits(np.zeros(1 << 16, np.uint8)) / (1 << 16) < 0.05  # only the model cost
    derived = (noise.astype(np.int64) * 7 % 256).astype(np.uint8)  # a function of the context
    assert adaptive_bits(derived, noise) / noise.size < 2.0 < 7.9 < adaptive_bits(derived) / noise.size
    other = rng.integers(0, 256, noise.size, dtype=np.uint8)  # independent of noise
    assert best_bits(noise, other) == adaptive_bits(noise) < adaptive_bits(noise, other)  # not taken
    assert best_bits(derived, other, noise) == adaptive_bits(derived, noise)


def test_floor_counts_unchanged_free_and_random_mantissas_full() -> None:
    rng = np.random.default_rng(1)
    n = 1 << 14
    old_w = (rng.standard_normal(n) * 0.02).astype(np.float32)
    m = (rng.standard_normal(n) * 1e-4).astype(np.float32)
    v = np.exp(rng.uniform(-25, -12, n)).astype(np.float32)
    m[: n // 4] = 0  # moments of rows no token reaches: zero in both checkpoints
    v[: n // 4] = 0

    def parts(w: np.ndarray, m: np.ndarray, v: np.ndarray) -> dict[str, bytes]:
        out = {}
        for part, tensors in (("model", {"w": w}), ("optim", {"exp_avg/w": m, "exp_avg_sq/w": v})):
            header, views = part_layout(tensors)
            out[part] = header + b"".join(bytes(r) for _, r in views)
        return out

    new_w = old_w + (rng.standard_normal(n) * 1e-3).astype(np.float32)
    m2, v2 = m.copy(), v.copy()
    m2[n // 4 :] = rng.permutation(m[n // 4 :])
    v2[n // 4 :] = rng.permutation(v[n // 4 :])
    coded = {"weights": 3 * n, "exp_avg": 3 * n, "exp_avg_sq": 3 * n}
    out = floor(parts(new_w, m2, v2), parts(old_w, m, v), coded)
    assert set(out) == {"weights", "exp_avg", "exp_avg_sq"}
    for fam, sign in (("exp_avg", 1), ("exp_avg_sq", 0)):  # second moments are never negative
        r = out[fam]
        assert 0.249 < r["unchanged"] < 0.252 and r["v2_ratio"] == 0.75
        assert 15 + sign - 0.1 < r["low_planes_bits"] < 15.2 + sign  # random bits cost what they weigh
        assert r["floor_ratio"] < 0.75 * (r["mantissa_sign_bits"] + 9) / 32  # changed values only
    w = out["weights"]
    assert w["best"] == "ulp" and w["unchanged"] == 0 and w["floor_ratio"] < 0.8
