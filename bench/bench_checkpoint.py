"""Checkpoint benchmarks: emergency-checkpoint latency, encryption throughput, verification before commit.

1. **Emergency checkpoint latency** (notice -> commit marker in the region store) for 10M, 100M and
   500M-parameter training states (fp32 weights + AdamW moments + step counters: 12 bytes per
   parameter), through the same code path as a trainer's emergency checkpoint
   (``TieredCheckpointer.save(sync=True)``: serialize + BLAKE3 + AES-256-GCM to local disk, fsync,
   copy to the region's store, fsync, COMMIT, latest). Shares of serialization (tensor bytes +
   plaintext hashing), encryption, local disk write and upload. Baseline in the same run: writing
   the same tensor bytes to the same disk in plain safetensors layout with fsync, no hashing, no
   encryption, no upload.
2. Deltas between checkpoints 500 steps apart moved to ``bench/bench_delta.py`` (issue 20).
3. **Encryption throughput** against a plain copy of the same bytes, in memory and to disk.
4. **Verification before commit** (issue 11): ``copy_checkpoint`` of one committed checkpoint
   (100M parameters) with full verification first (migrations), verification alongside the
   upload (a trainer's own uploads, emergency checkpoints included), and — the baseline — the
   same objects copied with no verification, interleaved, medians of 3.

``--quick``: small sizes (used by the test suite to prove the benchmark runs).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import Timer, peak_rss_mib, write_result  # noqa: E402

TENSOR_PARAMS = 4 << 20  # 4M parameters (16 MiB) per weight tensor, like a large linear layer


def synthetic_state(n_params: int, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Weights + AdamW moments + step counters for ``n_params`` parameters."""
    import torch

    g = torch.Generator().manual_seed(seed)
    model, optim = {}, {}
    left, i = n_params, 0
    while left > 0:
        n = min(TENSOR_PARAMS, left)
        name = f"layers.{i:03d}.weight"
        model[name] = torch.randn(n, generator=g) * 0.02
        optim[f"exp_avg/{name}"] = torch.randn(n, generator=g) * 1e-4
        optim[f"exp_avg_sq/{name}"] = torch.rand(n, generator=g) * 1e-8
        optim[f"step/{name}"] = torch.tensor(1000.0)
        left -= n
        i += 1
    return {"model": model, "optim": optim}


def plain_write(path: Path, parts: dict[str, dict[str, Any]]) -> int:
    """The baseline: the same tensor bytes in safetensors layout, written and fsync'ed (no hash, no crypto)."""
    from spotshift.checkpoint.format import part_layout

    total = 0
    for part, tensors in parts.items():
        header, views = part_layout(tensors)
        with open(path.with_suffix(f".{part}"), "wb") as f:
            f.write(header)
            for _, raw in views:
                f.write(raw)
            f.flush()
            os.fsync(f.fileno())
            total += f.tell()
    return total


def bench_emergency(sizes: list[int], root: Path) -> list[dict[str, Any]]:
    from spotshift.checkpoint.format import CheckpointPayload
    from spotshift.checkpoint.keys import LocalKeyProvider
    from spotshift.checkpoint.tiered import TieredCheckpointer
    from spotshift.sync.store import LocalChunkStore

    keys = LocalKeyProvider(create=True)
    rows = []
    for n in sizes:
        parts = synthetic_state(n)
        payload = CheckpointPayload(
            "bench", 1000, 1000 * 4096, "emergency", "gcp/us-central1", {"n": n}, parts
        )
        base = root / f"plain-{n}"
        with Timer() as plain:
            plain_bytes = plain_write(base, parts)
        for p in root.glob(f"plain-{n}.*"):
            p.unlink()
        region = LocalChunkStore(root / f"region-{n}")
        tiers = TieredCheckpointer(job="bench", local_dir=root / f"local-{n}", region_store=region, keys=keys)
        timings: dict[str, float] = {}
        t_notice = time.perf_counter()
        ref, event = tiers.save(payload, sync=True, timings=timings)
        latency = time.perf_counter() - t_notice
        tiers.close()
        assert (
            event is not None
            and event.error is None
            and region.exists(f"checkpoints/bench/{ref.checkpoint_id}/COMMIT")
        )
        parts_s = {
            k: timings.get(k, 0.0) for k in ("serialize_s", "encrypt_s", "write_s", "upload_s", "wrap_s")
        }
        row = {
            "params": n,
            "state_bytes": plain_bytes,
            "latency_s": round(latency, 3),
            **{k: round(v, 3) for k, v in parts_s.items()},
            "share": {k.removesuffix("_s"): round(v / latency, 3) for k, v in parts_s.items()},
            "other_s": round(latency - sum(parts_s.values()), 3),
            "plain_write_s": round(plain.seconds, 3),
            "latency_vs_plain_write": round(latency / plain.seconds, 2),
            "fits_gcp_azure_30s": latency < 30,
            "fits_aws_120s": latency < 120,
        }
        rows.append(row)
        print(f"emergency {n / 1e6:.0f}M params ({plain_bytes / 2**30:.2f} GiB): {row}", flush=True)
        del parts, payload
        gc.collect()
        shutil.rmtree(root / f"region-{n}", ignore_errors=True)
        shutil.rmtree(root / f"local-{n}", ignore_errors=True)
    return rows


def bench_encryption(nbytes: int, root: Path) -> dict[str, Any]:
    import io
    import secrets

    from spotshift.checkpoint import crypto

    buf = b"".join(os.urandom(64 << 20) for _ in range(max(1, nbytes // (64 << 20))))[:nbytes]
    key = secrets.token_bytes(32)

    class Null(io.RawIOBase):
        def write(self, b: Any) -> int:
            return len(b)

    def best(fn: Any, n: int = 3) -> float:
        times = []
        for _ in range(n):
            with Timer() as t:
                fn()
            times.append(t.seconds)
        return min(times)

    copy_s = best(lambda: bytearray(buf))

    def encrypt_to(sink: Any) -> Any:
        w = crypto.EncryptingWriter(sink, key, part_index=0, part_name="bench")
        w.write(buf)
        w.close()
        return w

    enc_s = best(lambda: encrypt_to(Null()))
    sealed = io.BytesIO()
    encrypt_to(sealed)
    ct = sealed.getvalue()
    dec_s = best(
        lambda: sum(
            len(p)
            for p in crypto.iter_decrypt(
                io.BytesIO(ct),
                key,
                part_index=0,
                part_name="bench",
                segment_bytes=crypto.DEFAULT_SEGMENT_BYTES,
                plain_bytes=len(buf),
                what="bench",
            )
        )
    )

    def to_disk(encrypt: bool) -> float:
        path = root / ("enc.bin" if encrypt else "plain.bin")
        with Timer() as t, open(path, "wb") as f:
            if encrypt:
                encrypt_to(f)
            else:
                f.write(buf)
            f.flush()
            os.fsync(f.fileno())
        path.unlink()
        return t.seconds

    # alternate and keep the best of each: the shared disk's state changes between writes
    plain_disk, enc_disk = to_disk(False), to_disk(True)
    plain_disk, enc_disk = min(plain_disk, to_disk(False)), min(enc_disk, to_disk(True))
    gbps = lambda s: round(len(buf) / s / 1e9, 2)  # noqa: E731
    return {
        "bytes": len(buf),
        "memcpy_gbps": gbps(copy_s),
        "encrypt_gbps": gbps(enc_s),
        "decrypt_gbps": gbps(dec_s),
        "encrypt_vs_memcpy": round(copy_s / enc_s, 2),
        "disk_plain_write_gbps": gbps(plain_disk),
        "disk_encrypted_write_gbps": gbps(enc_disk),
        "disk_encrypted_vs_plain": round(plain_disk / enc_disk, 2),
        "note": "encrypt includes BLAKE3 of plaintext and ciphertext, as in a checkpoint",
    }


def bench_verification(n_params: int, root: Path, repeats: int = 3) -> dict[str, Any]:
    import statistics

    from spotshift.checkpoint.format import CheckpointPayload, StoredCheckpoint, write_checkpoint
    from spotshift.checkpoint.keys import LocalKeyProvider
    from spotshift.checkpoint.tiered import copy_checkpoint, copy_object
    from spotshift.sync.store import LocalChunkStore

    keys = LocalKeyProvider(create=True)
    local = LocalChunkStore(root / "verify-local")
    payload = CheckpointPayload(
        "bench", 1000, 1000 * 4096, "emergency", "gcp/us-central1", {"n": n_params}, synthetic_state(n_params)
    )
    ref = write_checkpoint(local, payload, keys)
    del payload
    gc.collect()
    ck = StoredCheckpoint(local, "bench", ref.checkpoint_id)

    def unverified(dst: Any) -> None:  # what a copy did before it verified: objects, then the marker
        for part in ck.part_names():
            copy_object(local, dst, ck.prefix + ck.meta["parts"][part]["key"])
        dst.put_bytes(ck.prefix + ck.commit["meta_key"], ck.meta_bytes)
        dst.put_bytes(ck.prefix + "COMMIT", b"{}")

    modes = {
        "unverified": unverified,
        "verify_first": lambda d: copy_checkpoint(local, d, "bench", ref.checkpoint_id, keys),
        "verify_alongside": lambda d: copy_checkpoint(
            local, d, "bench", ref.checkpoint_id, keys, verify_alongside=True
        ),
    }
    runs: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(repeats):
        for mode, copy in modes.items():
            dst = LocalChunkStore(root / f"verify-{mode}")
            with Timer() as t:
                copy(dst)
            runs[mode].append(t.seconds)
            shutil.rmtree(dst.root, ignore_errors=True)
    shutil.rmtree(local.root, ignore_errors=True)
    med = {m: statistics.median(v) for m, v in runs.items()}
    return {
        "params": n_params,
        "stored_bytes": ck.stored_bytes,
        **{f"{m}_s": round(v, 3) for m, v in med.items()},
        "verify_first_vs_unverified": round(med["verify_first"] / med["unverified"], 2),
        "verify_alongside_vs_unverified": round(med["verify_alongside"] / med["unverified"], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--only", choices=["emergency", "encryption", "verification"], help="run one part")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bench-ckpt-"))
    os.environ["SPOTSHIFT_HOME"] = str(root / "home")  # the local KEK and caches live there
    try:
        name = "checkpoint" if not args.quick else "checkpoint_quick"
        result: dict[str, Any] = {"quick": args.quick}
        previous = Path(__file__).resolve().parent / "results" / f"{name}.json"
        if args.only and previous.is_file():  # re-running one part keeps the others' figures
            import json

            result = {
                k: v
                for k, v in json.loads(previous.read_text()).items()
                if k not in ("benchmark", "machine", "delta")  # delta: bench_delta.py since issue 20
            }
        sizes = [1_000_000, 4_000_000] if args.quick else [10_000_000, 100_000_000, 500_000_000]
        if args.only in (None, "encryption"):
            result["encryption"] = bench_encryption((64 << 20) if args.quick else (1 << 30), root)
            print(f"encryption: {result['encryption']}", flush=True)
        if args.only in (None, "emergency"):
            result["emergency_checkpoint"] = bench_emergency(sizes, root)
        if args.only in (None, "verification"):
            result["verification"] = bench_verification(4_000_000 if args.quick else 100_000_000, root)
            print(f"verification: {result['verification']}", flush=True)
        # with --only, the parts kept from the previous run may have peaked higher
        result["peak_rss_mib"] = round(max(peak_rss_mib(), result.get("peak_rss_mib", 0.0)), 1)
        write_result(name, result)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
