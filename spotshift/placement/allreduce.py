"""All-reduce bandwidth of a machine, measured with ``torch.distributed`` (seed 000's verification).

:func:`measure_allreduce` starts ``world_size`` processes (one per GPU on a GPU machine with NCCL;
CPU processes with gloo otherwise, which is what the tests and this machine run), all-reduces a
float32 tensor of ``size_bytes`` ``iterations`` times after ``warmup`` untimed rounds, and reports
the bandwidths the way nccl-tests does:

* ``algbw = size / time`` — what the caller sees;
* ``busbw = algbw * 2 (n - 1) / n`` — what each link carries in a ring all-reduce, comparable
  across world sizes;
* ``seed_gbps = 2 * bytes * 8 / time`` — seed 000's own formula (the n -> infinity limit of busbw),
  the figure its "> 150 Gbps effective all-reduce for 8x A100 NVLink" is stated in
  (:data:`~spotshift.placement.topology.EXPECTED_ALLREDUCE_GBPS_8X_A100`).

The rendezvous is a file store in a private temp directory (no TCP port to collide on a shared
machine). torch is imported by the worker processes and here only inside the function.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

from spotshift.errors import ConfigError, check_range
from spotshift.placement.topology import EXPECTED_ALLREDUCE_GBPS_8X_A100

MAX_SIZE_BYTES = 1 << 32  # 4 GiB: the seed measures 1 GB; more is a typo


@dataclass(frozen=True)
class AllReduceResult:
    """One measurement: backend, world size, payload, median time per all-reduce and bandwidths."""

    backend: str
    world_size: int
    size_bytes: int
    iterations: int
    median_s: float
    algbw_gbps: float
    busbw_gbps: float
    seed_gbps: float
    expected_gbps: float | None = None
    """The seed's expectation, when it applies (NCCL on 8 GPUs); None on CPU."""

    @property
    def meets_expectation(self) -> bool | None:
        return None if self.expected_gbps is None else self.seed_gbps > self.expected_gbps

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "meets_expectation": self.meets_expectation}


def bus_bandwidth_gbps(size_bytes: int, seconds: float, world_size: int) -> tuple[float, float]:
    """(algbw, busbw) in Gbit/s of one all-reduce of ``size_bytes`` taking ``seconds`` on ``world_size`` ranks."""
    if seconds <= 0:
        raise ValueError("seconds must be positive")
    alg = size_bytes * 8 / seconds / 1e9
    return alg, alg * 2 * (world_size - 1) / world_size


def _worker(
    rank: int, world_size: int, backend: str, store_file: str, numel: int, warmup: int, iters: int, out: str
) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(backend, init_method=f"file://{store_file}", rank=rank, world_size=world_size)
    try:
        device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
        if backend == "nccl":
            torch.cuda.set_device(device)
        t = torch.ones(numel, dtype=torch.float32, device=device)
        for _ in range(warmup):
            dist.all_reduce(t)
            t.div_(world_size)  # back to ones (n / n is exact)
        times = []
        for _ in range(iters):
            dist.barrier()
            if backend == "nccl":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            dist.all_reduce(t)
            if backend == "nccl":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            # every rank must see the sum of the ranks' ones, everywhere in the tensor
            if not bool((t == world_size).all()):
                raise RuntimeError(f"rank {rank}: all-reduce did not sum to {world_size}")
            t.div_(world_size)
        slowest = torch.tensor(times, dtype=torch.float64, device=device)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        slowest = slowest.cpu()
        if rank == 0:
            with open(out, "w") as f:
                f.write(",".join(repr(float(x)) for x in slowest.tolist()))
    finally:
        dist.destroy_process_group()


def measure_allreduce(
    world_size: int = 2,
    size_bytes: int = 16 << 20,
    *,
    iterations: int = 5,
    warmup: int = 1,
    backend: str | None = None,
) -> AllReduceResult:
    """All-reduce bandwidth on this machine (see the module docstring). ``backend`` None: NCCL when
    ``world_size`` GPUs are visible, else gloo on CPU. :class:`ConfigError` for bad arguments."""
    import statistics

    check_range(world_size, "world size", low=1, high=1024, integer=True)
    check_range(size_bytes, "all-reduce size (bytes)", low=3, high=MAX_SIZE_BYTES, integer=True)
    check_range(iterations, "iterations", low=0, high=10_000, integer=True)
    check_range(warmup, "warmup", low=-1, high=10_000, integer=True)

    import torch
    import torch.multiprocessing as mp

    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world_size else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ConfigError(f"all-reduce backend {backend!r} is not nccl or gloo")
    numel = size_bytes // 4
    with tempfile.TemporaryDirectory(prefix="spotshift-allreduce-") as tmp:
        store, out = os.path.join(tmp, "store"), os.path.join(tmp, "times")
        mp.spawn(
            _worker,
            args=(world_size, backend, store, numel, warmup, iterations, out),
            nprocs=world_size,
            join=True,
        )
        with open(out) as f:
            times = [float(x) for x in f.read().split(",")]
    median = statistics.median(times)
    alg, bus = bus_bandwidth_gbps(numel * 4, median, world_size)

    expected = EXPECTED_ALLREDUCE_GBPS_8X_A100 if backend == "nccl" and world_size == 8 else None
    return AllReduceResult(backend, world_size, numel * 4, iterations, median, alg, bus, 2 * alg, expected)
