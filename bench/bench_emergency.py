"""Emergency checkpoints of your own training code, and what ``Session.step_done`` costs per step.

1. **Notice -> committed in the region store** for fp32 weights + AdamW moments (12 bytes per
   parameter) of 100M / 500M / 1B parameters, through ``spotshift.checkpointing.Session``: a
   notice arrives (``notice.json``, as the wrapper writes it), the next ``step_done`` commits the
   emergency checkpoint and returns with ``should_stop`` set; the time from the notice to that
   return (the region's ``COMMIT`` exists then). The region store is a directory (the embedded
   default) on the local tier's filesystem, so the encrypted bytes are written once, to the region
   store, and the local tier hard-links them after the region's ``COMMIT``. Baselines in the same
   script, same sizes, interleaved: the mirrored path (one pass writing the same bytes to both
   tiers, committed in both: the emergency path until the link; ``--mirror-trials``) and the
   sequential path (write and commit the local tier, then copy to the region store verifying
   alongside: the path before that; ``--baseline-trials``). p50/p95/max over ``--trials`` trials.
2. **step_done overhead** on steps that do not checkpoint: the median cost of one call (metrics
   line + notice check), as a share of a 100 ms step.

``--store s3`` / ``--store gcs``: the region store is an S3 bucket (``moto_server``) or a GCS bucket
(``gcp-storage-emulator``), each a separate process serving HTTP on this machine; the streamed path
is then a multipart / resumable upload per part running alongside the encryption, the baseline the
same sequential path (local commit, then the verified upload). Results go to
``emergency_<store>.json``.

``--quick``: small sizes and few trials (the test suite proves the benchmark runs).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import peak_rss_mib, write_result  # noqa: E402
from bench_checkpoint import synthetic_state  # noqa: E402


class Holder:
    """A registered object whose state dict is a synthetic training state."""

    def __init__(self, parts: dict[str, dict[str, Any]]):
        self.parts = parts

    def state_dict(self) -> dict[str, Any]:
        return {**self.parts["model"], **self.parts["optim"]}

    def load_state_dict(self, doc: dict[str, Any]) -> None:  # pragma: no cover - not resumed here
        raise NotImplementedError


def _notice(workdir: Path) -> None:
    from spotshift.training.preemption import utc_now

    now = utc_now()
    doc = {
        "kind": "gcp_metadata",
        "noticed_at": now.isoformat(),
        "deadline_at": (now.replace(microsecond=0)).isoformat(),
        "monotonic_at": time.monotonic(),
        "is_preemption": True,
    }
    from datetime import timedelta

    doc["deadline_at"] = (now + timedelta(seconds=30)).isoformat()
    (workdir / "notice.json").write_text(json.dumps(doc))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_peer(kind: str) -> tuple[subprocess.Popen[bytes], str]:
    """An S3 (moto_server) or GCS (gcp-storage-emulator) peer in its own process; returns it and the
    bucket URL base, with the environment pointed at it."""
    port, bindir = _free_port(), Path(sys.executable).parent
    if kind == "s3":
        cmd = [str(bindir / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
        os.environ.update(
            AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
        )
        os.environ["AWS_ENDPOINT_URL_S3"] = f"http://127.0.0.1:{port}"
    else:
        cmd = [str(bindir / "gcp-storage-emulator"), "start", "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--in-memory", "--default-bucket", "bench"]
        os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import socket

    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    if kind == "s3":
        import boto3

        boto3.client("s3").create_bucket(Bucket="bench")
    return proc, ("s3://bench" if kind == "s3" else "gs://bench")


def one_trial(
    parts: dict[str, dict[str, Any]], root: Path, *, mode: str = "streamed", bucket: str = "", trial: int = 0
) -> float:
    """Seconds from a notice to ``step_done`` returning with the emergency checkpoint committed."""
    from spotshift.checkpoint.format import list_checkpoints
    from spotshift.checkpointing import Session
    from spotshift.sync.store import LocalChunkStore
    from spotshift.sync.store_url import open_store

    region_dir, workdir = root / "region", root / "work"
    shutil.rmtree(region_dir, ignore_errors=True)
    shutil.rmtree(workdir, ignore_errors=True)
    region = open_store(f"{bucket}/t{trial}-{mode}") if bucket else LocalChunkStore(region_dir)
    s = Session(
        "bench",
        "gcp/us-central1",
        store_url=region.url,
        workdir=workdir,
        watchers={},
        checkpoint_every_steps=10**9,
    )
    s.register(state=Holder(parts))
    s.restore()
    s.step_done(1)
    if mode != "streamed":  # a baseline path (see the module doc)
        s._ensure_tiers()
        path = _sequential if mode == "sequential" else _mirrored
        s.tiers._save_streaming = lambda payload, timings: path(s.tiers, payload, timings)
    _notice(workdir)
    t0 = time.monotonic()
    s.step_done(2)
    seconds = time.monotonic() - t0
    assert s.should_stop and list_checkpoints(region, "bench"), "no committed emergency checkpoint"
    s.close()
    if bucket:  # the peers keep objects in memory
        for key in list(region.list_keys("")):
            region.delete(key)
    shutil.rmtree(region_dir, ignore_errors=True)
    shutil.rmtree(workdir, ignore_errors=True)
    return seconds


def _sequential(tiers: Any, payload: Any, timings: dict[str, float]) -> Any:
    from spotshift.checkpoint.format import write_checkpoint

    local_ref = write_checkpoint(tiers.local, payload, tiers.keys, timings=timings)
    return local_ref, tiers._upload(local_ref, payload.kind, timings, replicate=False)


def _mirrored(tiers: Any, payload: Any, timings: dict[str, float]) -> Any:
    from spotshift.checkpoint.format import write_checkpoint
    from spotshift.checkpoint.tiered import UploadEvent

    t0 = time.perf_counter()
    ref = write_checkpoint(tiers.local, payload, tiers.keys, timings=timings, mirror=tiers.region)
    return ref, UploadEvent(ref, payload.kind, "region", 0, time.perf_counter() - t0)


def hardware_anchor(root: Path, gib: float = 2.0) -> dict[str, Any]:
    """What the disk (write + fsync of ``gib`` GiB, where the stores are), AES-GCM and BLAKE3 do now
    (``probe_emergency_hw.py``): the floor the emergency path is held against, under the same load."""
    import probe_emergency_hw as hw

    disk = hw.disk_write(root / "anchor.bin", int(gib * (1 << 30)))
    return {
        "disk_write_fsync_gb_s": disk["gb_s"],
        "disk_write_fsync_gib": gib,
        "aes_gcm_gb_s_1thread": hw.throughput(hw.aes_gcm_segment(), 1 << 30),
        "blake3_gb_s_1thread": hw.throughput(hw.blake3_segment(), 1 << 30),
        "load_average": [round(x, 1) for x in os.getloadavg()],
    }


def stats(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, max(0, round(0.95 * len(xs)) - 1))]
    return {
        "trials": len(xs),
        "p50_s": round(statistics.median(xs), 3),
        "p95_s": round(p95, 3),
        "max_s": round(xs[-1], 3),
    }


def bench_step_done(calls: int, root: Path) -> dict[str, Any]:
    import torch

    from spotshift.checkpointing import Session

    model = torch.nn.Linear(64, 64)
    s = Session(
        "overhead",
        "gcp/us-central1",
        store_url=(root / "ov").as_uri(),
        workdir=root / "ov-work",
        watchers={},
        checkpoint_every_steps=10**9,
        checkpoint_every_minutes=10**6,
    )
    s.register(model=model)
    s.restore()
    per_call = []
    for rnd in range(5):
        t0 = time.perf_counter()
        for i in range(calls):
            s.step_done(rnd * calls + i + 1, tokens=4096, loss=2.5, grad_norm=0.7)
        per_call.append((time.perf_counter() - t0) / calls)
    s.close()
    med = statistics.median(per_call)
    return {
        "calls_per_round": calls,
        "rounds": 5,
        "per_call_us_median": round(med * 1e6, 2),
        "per_call_us_rounds": [round(x * 1e6, 2) for x in per_call],
        "share_of_100ms_step_pct": round(100 * med / 0.1, 4),
        "target_pct": 1.0,
        "met": med / 0.1 < 0.01,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sizes", default="100e6,500e6,1e9", help="parameter counts, comma-separated")
    p.add_argument("--trials", default="20", help="streamed trials: one count, or one per size (20,6)")
    p.add_argument("--baseline-trials", type=int, default=3, help="trials of the sequential path")
    p.add_argument("--mirror-trials", type=int, default=3, help="trials of the mirrored path (local only)")
    p.add_argument(
        "--store",
        choices=["local", "s3", "gcs"],
        default="local",
        help="region store: a directory, an S3 bucket (moto_server) or a GCS bucket (the emulator)",
    )
    args = p.parse_args()
    sizes = [int(2e6), int(8e6)] if args.quick else [int(float(x)) for x in args.sizes.split(",")]
    counts = [2] if args.quick else [int(x) for x in str(args.trials).split(",")]
    base_trials = 1 if args.quick else args.baseline_trials
    mirror_trials = 0 if args.store != "local" else (1 if args.quick else args.mirror_trials)
    root = Path(tempfile.mkdtemp(prefix="bench-emergency-", dir=os.environ.get("SPOTSHIFT_BENCH_DIR")))
    os.environ.setdefault("SPOTSHIFT_HOME", str(root / "home"))
    load_before = os.getloadavg()
    peer, bucket = start_peer(args.store) if args.store != "local" else (None, "")
    result: dict[str, Any] = {
        "quick": args.quick,
        "store": args.store,
        "load_average_before": [round(x, 1) for x in load_before],
        "sizes": [],
    }
    try:
        result["step_done_overhead"] = bench_step_done(500 if args.quick else 5000, root)
        print(f"step_done: {result['step_done_overhead']}", flush=True)
        if not args.quick:
            result["hardware_anchor"] = hardware_anchor(root)
            print(f"hardware: {result['hardware_anchor']}", flush=True)
        for k, n in enumerate(sizes):
            trials = counts[min(k, len(counts) - 1)]
            parts = synthetic_state(n)
            state_bytes = sum(t.numel() * t.element_size() for part in parts.values() for t in part.values())
            runs: dict[str, list[float]] = {"streamed": [], "mirror": [], "sequential": []}
            wanted = {"streamed": trials, "mirror": mirror_trials, "sequential": base_trials}
            for i in range(max(wanted.values())):  # interleaved: all see the same load
                line = []
                for mode, xs in runs.items():
                    if i < wanted[mode]:
                        xs.append(one_trial(parts, root, mode=mode, bucket=bucket, trial=i))
                        line.append(f"{mode} {xs[-1]:.2f}s")
                print(
                    f"  {n / 1e6:.0f}M trial {i + 1}: {', '.join(line)} (load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
            streamed, sequential = runs["streamed"], runs["sequential"]
            row = {
                "params": n,
                "state_bytes": state_bytes,
                "streaming": stats(streamed),
                "sequential_baseline": stats(sequential),
                **({"mirror_baseline": stats(runs["mirror"])} if runs["mirror"] else {}),
                "trials_s": {mode: [round(x, 3) for x in xs] for mode, xs in runs.items() if xs},
                "speedup_p50": round(statistics.median(sequential) / statistics.median(streamed), 2),
                **(
                    {
                        "speedup_vs_mirror_p50": round(
                            statistics.median(runs["mirror"]) / statistics.median(streamed), 2
                        )
                    }
                    if runs["mirror"]
                    else {}
                ),
                "disk_floor_s": round(
                    state_bytes / result["hardware_anchor"]["disk_write_fsync_gb_s"] / 1e9, 2
                )
                if "hardware_anchor" in result
                else None,
                "load_average_after": [round(x, 1) for x in os.getloadavg()],
            }
            if n == int(500e6):
                row["target_500m_p95_le_10s"] = row["streaming"]["p95_s"] <= 10.0
            result["sizes"].append(row)
            print(f"emergency {n / 1e6:.0f}M params: {row}", flush=True)
            del parts
            gc.collect()
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if peer is not None:
            peer.terminate()
            peer.wait(timeout=30)
    result["peak_rss_mib"] = peak_rss_mib()
    name = "emergency" + ("" if args.store == "local" else f"_{args.store}")
    write_result(name + ("_quick" if args.quick else ""), result)


if __name__ == "__main__":
    main()
