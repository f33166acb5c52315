"""What this machine can do for an emergency checkpoint: disk write with fsync, AES-GCM, BLAKE3, memcpy.

One script, one load figure: the anchor the emergency benchmark (``bench_emergency.py``) compares
with. ``--gib``: bytes written to the store's filesystem (``--dir``, default the temp dir).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import blake3
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SEG = 4 << 20


def disk_write(path: Path, total: int, block: int = 16 << 20) -> dict[str, float]:
    """Write ``total`` bytes to ``path`` in ``block`` writes, fsync, remove: seconds and GB/s."""
    buf = os.urandom(block)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        done = 0
        while done < total:
            done += os.write(fd, buf[: min(block, total - done)])
        t_write = time.perf_counter() - t0
        os.fsync(fd)
    finally:
        os.close(fd)
    secs = time.perf_counter() - t0
    path.unlink()
    return {"seconds": round(secs, 3), "write_s": round(t_write, 3), "gb_s": round(total / secs / 1e9, 3)}


def throughput(fn: Callable[[], object], total: int, threads: int = 1) -> float:
    """GB/s of ``fn`` (one 4 MiB segment per call) over ``total`` bytes on ``threads`` threads."""
    per = total // threads

    def run() -> None:
        for _ in range(per // SEG):
            fn()

    t0 = time.perf_counter()
    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return round(total / (time.perf_counter() - t0) / 1e9, 3)


def aes_gcm_segment() -> Callable[[], object]:
    """One AES-256-GCM seal of a 4 MiB segment (a fresh key: only for timing)."""
    data, aead, nonce = os.urandom(SEG), AESGCM(os.urandom(32)), os.urandom(12)
    return lambda: aead.encrypt(nonce, data, b"x")


def blake3_segment() -> Callable[[], object]:
    """One single-threaded BLAKE3 of a 4 MiB segment."""
    data = os.urandom(SEG)
    return lambda: blake3.blake3(data).digest()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", default=tempfile.gettempdir())
    p.add_argument("--gib", type=float, default=5.6)
    args = p.parse_args()
    out: dict[str, object] = {"load_average_before": [round(x, 2) for x in os.getloadavg()]}
    data = os.urandom(SEG)
    aead = AESGCM(os.urandom(32))
    nonce = os.urandom(12)
    n = 2 << 30
    out["aes_gcm_gb_s_1thread"] = throughput(lambda: aead.encrypt(nonce, data, b"x"), n)
    out["aes_gcm_gb_s_2threads"] = throughput(lambda: aead.encrypt(nonce, data, b"x"), n, 2)
    out["blake3_gb_s_1thread"] = throughput(lambda: blake3.blake3(data).digest(), n)
    out["blake3_gb_s_auto"] = throughput(
        lambda: blake3.blake3(data, max_threads=blake3.blake3.AUTO).digest(), n
    )
    out["blake3_gb_s_2threads"] = throughput(lambda: blake3.blake3(data).digest(), n, 2)
    out["memcpy_gb_s"] = throughput(lambda: bytearray(data), n)
    total = int(args.gib * (1 << 30))
    out[f"disk_write_fsync_{args.gib}gib"] = disk_write(Path(args.dir) / "probe.bin", total)
    out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
