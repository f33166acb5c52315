"""Tensor deltas between checkpoints 500 steps apart: delta format 2 against format 1, same run.

A small GPT (the trainer's model) is pre-trained, then fine-tuned on a different corpus three ways
— all parameters (real AdamW steps: fp32 weights + both moments change); only the top block +
final norm + head; LoRA adapters (rank 8) on the attention projections with the base frozen. For
the checkpoints at fine-tuning steps 500 and 1000 it reports, per regime:

- the encrypted delta ``migrate_checkpoint`` ships (format 2) against the full stored checkpoint,
  and the format-1 delta of the same two checkpoints encrypted the same way (the baseline: the
  format-1 encoder in ``bench/_delta_v1.py``);
- encode and decode throughput of both codecs on the same plaintext (MB of new checkpoint per
  second, fastest of 7 interleaved rounds; both decoded by the library's ``apply_delta``, which
  reads either format);
- what content-defined chunking (pyfastcdc, 64 KiB average) would reuse, stored and plaintext;
- throughput of both codecs on large tensors (a synthetic pair, 3 x 2M fp32 parameters), where
  the trainer's small model has mostly small tensors.

For full fine-tuning it also breaks the delta down by tensor family (weights, ``exp_avg``,
``exp_avg_sq``) with the order-0 entropy of the three low byte planes of the chosen transform:
what would remain if sign and exponent cost nothing, a floor for any per-element coder of these
bits, and an LZMA (-9e) cross-check of the moments' mantissa planes; and the ``floor`` section
(``bench/_delta_floor.py``): per family, the code length an adaptive context-model coder would
reach, and the whole delta's ratio with every family at that floor.

``--quick``: a smaller model and 50 steps apart (used by the test suite to prove the benchmark runs).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import Timer, peak_rss_mib, write_result  # noqa: E402
from _delta_floor import floor  # noqa: E402
from _delta_v1 import compute_delta_v1  # noqa: E402

MODEL = {"vocab_size": 256, "d_model": 64, "n_layer": 4, "n_head": 4, "seq_len": 32}
QUICK_MODEL = {"vocab_size": 256, "d_model": 32, "n_layer": 2, "n_head": 2, "seq_len": 16}


def cdc_reuse(old: bytes, new: bytes, avg: int = 64 << 10) -> float:
    """Fraction of ``new``'s bytes in CDC chunks (pyfastcdc + BLAKE3) that also occur in ``old``."""
    import blake3
    from pyfastcdc import FastCDC

    cdc = FastCDC(avg_size=avg)
    seen = {blake3.blake3(c.data).digest(length=16) for c in cdc.cut_buf(old)}
    reused = sum(c.length for c in cdc.cut_buf(new) if blake3.blake3(c.data).digest(length=16) in seen)
    return reused / max(1, len(new))


def stored_bytes_of(store: Any, job: str, ckpt: str) -> bytes:
    from spotshift.checkpoint.format import StoredCheckpoint

    ck = StoredCheckpoint(store, job, ckpt)
    return b"".join(store.get_bytes(ck.prefix + ck.meta["parts"][p]["key"]) for p in ck.part_names())


def race(new: dict[str, bytes], base: dict[str, bytes], rounds: int) -> dict[str, Any]:
    """Both codecs on the same pair, interleaved (v1 encode, v1 decode, v2 encode, v2 decode, repeat)
    so load swings on the shared machine hit both alike: per format the plaintext delta and the
    fastest encode and decode in seconds. Both are decoded by the library's ``apply_delta``."""
    from spotshift.checkpoint.delta import apply_delta, compute_delta

    encoders = {"v1": compute_delta_v1, "v2": lambda n, b: compute_delta(n, b)[0]}
    out: dict[str, Any] = {fmt: {"encode_s": float("inf"), "decode_s": float("inf")} for fmt in encoders}
    for _ in range(rounds):
        for fmt, encode in encoders.items():
            with Timer() as enc:
                delta = encode(new, base)
            with Timer() as dec:
                rebuilt = apply_delta(delta, base, what=fmt)
            assert rebuilt == new, f"{fmt} delta does not rebuild the checkpoint"
            row = out[fmt]
            row["delta"] = delta
            row["encode_s"] = min(row["encode_s"], enc.seconds)
            row["decode_s"] = min(row["decode_s"], dec.seconds)
    return out


def speeds(size: int, raced: dict[str, Any]) -> dict[str, Any]:
    """MB/s of each format and format 2 against format 1."""
    out = {
        fmt: {
            "encode_mb_s": round(size / r["encode_s"] / 1e6, 1),
            "decode_mb_s": round(size / r["decode_s"] / 1e6, 1),
        }
        for fmt, r in raced.items()
    }
    return {
        **out,
        "v2_vs_v1_encode_speed": round(out["v2"]["encode_mb_s"] / out["v1"]["encode_mb_s"], 2),
        "v2_vs_v1_decode_speed": round(out["v2"]["decode_mb_s"] / out["v1"]["decode_mb_s"], 2),
    }


def codecs(
    new: dict[str, bytes], base: dict[str, bytes], ckpt: Any, base_id: str, keys: Any
) -> dict[str, Any]:
    """Format 1 vs format 2 on the same plaintext pair: sizes (plain and encrypted) and throughput."""
    from spotshift.checkpoint.migrate import _encrypt_delta

    plain_bytes = sum(len(b) for b in new.values())
    raced = race(new, base, rounds=7)
    out: dict[str, Any] = {"plain_bytes": plain_bytes, "stored_bytes": ckpt.stored_bytes}
    out.update(speeds(plain_bytes, raced))
    for fmt, r in raced.items():
        sealed = _encrypt_delta(ckpt.job, ckpt, base_id, r["delta"], keys)
        out[fmt].update(
            delta_plain_bytes=len(r["delta"]),
            delta_sent_bytes=len(sealed),
            ratio=round(len(sealed) / ckpt.stored_bytes, 4),
        )
    out["v2_vs_v1_size"] = round(out["v2"]["delta_sent_bytes"] / out["v1"]["delta_sent_bytes"], 4)
    return out


def families(new: dict[str, bytes], base: dict[str, bytes]) -> dict[str, Any]:
    """Per tensor family: bytes, format-1 and format-2 coded bytes, low-plane entropy, LZMA of mantissas."""
    import lzma

    import numpy as np
    import zstandard
    from _delta_v1 import encode_tensor_v1

    from spotshift.checkpoint.format import DTYPE_BYTES, parse_safetensors
    from spotshift.checkpoint.tensor_codec import (
        _entropy_bytes,
        _forward,
        contexts,
        element_view,
        encode_tensor,
    )

    cctx, _ = contexts()
    v1ctx = zstandard.ZstdCompressor(level=3)
    acc: dict[str, Counter[str]] = {}
    mantissas: dict[str, bytearray] = {}
    for part in sorted(new):
        header, off = parse_safetensors(new[part], what=part)
        bheader, boff = parse_safetensors(base[part], what=part)
        nb, bb = np.frombuffer(new[part], np.uint8), np.frombuffer(base[part], np.uint8)
        for name, info in header.items():
            fam = "weights" if part == "model" else name.split("/")[0]
            size = DTYPE_BYTES.get(info["dtype"], 1)
            cur = nb[off + info["data_offsets"][0] : off + info["data_offsets"][1]]
            old = bb[boff + bheader[name]["data_offsets"][0] : boff + bheader[name]["data_offsets"][1]]
            c = acc.setdefault(fam, Counter())
            c["bytes"] += cur.size
            c["v1"] += len(encode_tensor_v1(v1ctx, cur, old, size)[1])
            t, planes = encode_tensor(cur, old, info["dtype"], size, cctx)
            c["v2"] += sum(len(p) for p in planes)
            c[f"t_{t}"] += 1
            u, b = element_view(cur, info["dtype"], size), element_view(old, info["dtype"], size)
            if info["dtype"] == "F32":
                c["low_planes_h0"] += sum(_entropy_bytes(p) for p in _forward(t, u, b, "F32")[:3])
                if fam.startswith("exp_avg"):
                    mantissas.setdefault(fam, bytearray()).extend(
                        _forward("rot", u, None, "F32")[:3].tobytes()
                    )
    out: dict[str, Any] = {"_coded": {fam: c["v2"] for fam, c in acc.items()}}
    for fam, c in acc.items():
        n = c["bytes"]
        out[fam] = {
            "bytes": n,
            "v1_ratio": round(c["v1"] / n, 4),
            "v2_ratio": round(c["v2"] / n, 4),
            "transforms": {k[2:]: v for k, v in c.items() if k.startswith("t_")},
            "low_planes_h0_ratio": round(c["low_planes_h0"] / n, 4),
        }
        if fam in mantissas:
            m = bytes(mantissas[fam])
            out[fam]["mantissa_lzma_ratio"] = round(
                len(lzma.compress(m, preset=9 | lzma.PRESET_EXTREME)) / len(m), 4
            )
    return out


def large_tensors(n: int) -> dict[str, Any]:
    """Throughput on large tensors (per-tensor overheads out of the picture): a synthetic pair of
    ``n``-parameter fp32 weights that moved a little, fresh first moments and second moments that
    kept their order of magnitude, both codecs, same run."""
    import numpy as np

    from spotshift.checkpoint.format import part_layout

    rng = np.random.default_rng(20)
    w = (rng.standard_normal(n) * 0.02).astype(np.float32)
    v = np.exp(rng.uniform(-25, -12, n)).astype(np.float32)
    old = {"w": w, "m": (rng.standard_normal(n) * 1e-4).astype(np.float32), "v": v}
    new = {
        "w": w + (rng.standard_normal(n) * 2e-3).astype(np.float32),
        "m": (rng.standard_normal(n) * 1e-4).astype(np.float32),
        "v": v * np.exp(rng.standard_normal(n) * 0.5).astype(np.float32),
    }

    def parts(tensors: dict[str, Any]) -> dict[str, bytes]:
        header, views = part_layout(tensors)
        return {"state": header + b"".join(bytes(r) for _, r in views)}

    base_p, new_p = parts(old), parts(new)
    size = len(new_p["state"])
    raced = race(new_p, base_p, rounds=3)
    out: dict[str, Any] = {"params_per_tensor": n, "plain_bytes": size, **speeds(size, raced)}
    for fmt, r in raced.items():
        out[fmt]["ratio"] = round(len(r["delta"]) / size, 4)
    return out


def make_corpora(root: Path) -> dict[str, Any]:
    from spotshift.training.data import prepare_tokens

    corpora = {}
    for name, seed, vocab in (
        ("pretrain", 1, "alpha beta gamma delta spot gpu price region"),
        ("finetune", 2, "checkpoint resume preempt shift cheap cloud train moves"),
    ):
        rng = random.Random(seed)
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        words = vocab.split()
        (d / "text.txt").write_text(" ".join(rng.choice(words) for _ in range(200_000)))
        corpora[name] = prepare_tokens(name, str(d))
    return corpora


def run_variant(
    variant: str, extra: dict[str, Any], trainable: list[str] | None, ctx: dict[str, Any]
) -> dict[str, Any]:
    """Fine-tune one way, checkpoint at ``gap`` and ``2 * gap``, migrate both, compare the codecs."""
    from spotshift.checkpoint.format import StoredCheckpoint, write_checkpoint
    from spotshift.checkpoint.migrate import migrate_checkpoint
    from spotshift.sync.store import LocalChunkStore
    from spotshift.training.trainer import TrainConfig, Trainer

    gap, keys, root = ctx["gap"], ctx["keys"], ctx["root"]
    cfg = TrainConfig(
        variant,
        "finetune",
        {**ctx["model"], **extra},
        total_steps=4 * gap,
        batch_size=8,
        learning_rate=1e-4,
        trainable=trainable,
    )
    t = Trainer(cfg, ctx["corpora"]["finetune"])
    missing, unexpected = t.model.load_state_dict(ctx["pretrained"], strict=False)
    assert not unexpected and all(".lora_" in m for m in missing)
    src, dst = LocalChunkStore(root / f"{variant}-src"), LocalChunkStore(root / f"{variant}-dst")
    refs = []
    with Timer() as train:
        for target in (gap, 2 * gap):
            while t.step < target:
                t.train_step()
            refs.append(write_checkpoint(src, t.payload(kind="periodic", location="gcp/us-central1"), keys))
    first = migrate_checkpoint(src, variant, dst, keys, checkpoint_id=refs[0].checkpoint_id)
    second = migrate_checkpoint(src, variant, dst, keys, checkpoint_id=refs[1].checkpoint_id)
    old_ck, new_ck = (StoredCheckpoint(src, variant, r.checkpoint_id) for r in refs)
    plain_old, plain_new = old_ck.read_parts(keys), new_ck.read_parts(keys)
    row: dict[str, Any] = {
        "trainable_params": sum(p.numel() for p in t.params),
        "total_params": sum(p.numel() for p in t.model.parameters()),
        "train_s": round(train.seconds, 1),
        "first_copy": first.method,
        "method": second.method,
        "bytes_full": second.bytes_full,
        "bytes_sent": second.bytes_sent,
        "delta_ratio": round(second.ratio, 4),
        "tensors_sent": f"{second.tensors_sent}/{second.tensors_total}",
        "migrate_s": round(second.seconds, 3),
        "codecs": codecs(plain_new, plain_old, new_ck, old_ck.checkpoint_id, keys),
        "cdc_reuse_stored": round(
            cdc_reuse(
                stored_bytes_of(src, variant, refs[0].checkpoint_id),
                stored_bytes_of(src, variant, refs[1].checkpoint_id),
            ),
            4,
        ),
        "cdc_reuse_plaintext": round(
            cdc_reuse(b"".join(plain_old.values()), b"".join(plain_new.values())), 4
        ),
    }
    if trainable is None:
        row["families"] = families(plain_new, plain_old)
        coded = row["families"].pop("_coded")
        row["floor"] = floor(plain_new, plain_old, coded)
        # format 2's delta with each family at its floor instead (the rest: headers, step counts, crypto)
        saved = sum(coded[f] - r["floor_ratio"] * 4 * r["values"] for f, r in row["floor"].items())
        sent, stored = row["codecs"]["v2"]["delta_sent_bytes"], row["codecs"]["stored_bytes"]
        row["floor"]["overall_ratio"] = round((sent - saved) / stored, 4)
    shutil.rmtree(src.root, ignore_errors=True)
    shutil.rmtree(dst.root, ignore_errors=True)
    return row


def bench_delta(quick: bool, root: Path) -> dict[str, Any]:
    import torch

    from spotshift.checkpoint.keys import LocalKeyProvider
    from spotshift.training.trainer import TrainConfig, Trainer

    gap, pretrain = (50, 30) if quick else (500, 300)
    model = QUICK_MODEL if quick else MODEL
    corpora = make_corpora(root)
    base = Trainer(
        TrainConfig("pre", "pretrain", model, total_steps=pretrain, batch_size=8, learning_rate=1e-3),
        corpora["pretrain"],
    )
    for _ in range(pretrain):
        base.train_step()
    ctx = {
        "gap": gap,
        "model": model,
        "corpora": corpora,
        "root": root,
        "keys": LocalKeyProvider(create=True),
        "pretrained": {k: v.clone() for k, v in base.model.state_dict().items()},
    }
    out: dict[str, Any] = {"model": model, "steps_apart": gap, "pretrain_steps": pretrain}
    last = model["n_layer"] - 1
    variants = {  # name: (extra model config, trainable patterns)
        "full_finetune": ({}, None),
        "top_block_finetune": ({}, [f"blocks.{last}.*", "ln_f.*", "head.*"]),
        "lora_finetune": ({"lora_rank": 8}, ["*.lora_*"]),
    }
    for variant, (extra, trainable) in variants.items():
        out[variant] = run_variant(variant, extra, trainable, ctx)
        print(f"delta {variant}: {out[variant]}", flush=True)
        torch.set_num_threads(1)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small model, 50 steps apart")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bench-delta-"))
    os.environ["SPOTSHIFT_HOME"] = str(root / "home")  # the local KEK lives there
    try:
        result: dict[str, Any] = {"quick": args.quick, **bench_delta(args.quick, root)}
        result["large_tensors"] = large_tensors(1 << 18 if args.quick else 1 << 21)
        print(f"large tensors: {result['large_tensors']}", flush=True)
        result["peak_rss_mib"] = round(peak_rss_mib(), 1)
        result["load_average_1_5_15"] = [round(x, 2) for x in os.getloadavg()]  # at the end of the run
        write_result("delta_quick" if args.quick else "delta", result)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
