"""bench_first_push: a first push of new data into a local store, against cp+sync, rsync and restic.

Issue 20 item 1. One run, rounds interleaved (this machine's disk speed varies up to 3x from
minute to minute, so only same-round comparisons mean anything):

* ``cp -r`` + ``sync``                       the floor: copy the bytes, make them durable
* ``rsync -a`` + ``sync``                    the goal's anchor (rsync alone does not fsync; the push
                                             is durable when it returns, so both get the same ``sync``;
                                             rsync's own time is reported as well)
* ``rsync -a --fsync``                       a second anchor: rsync fsyncing each file it writes (no
                                             global ``sync``, so other processes' dirty pages do not
                                             count against it; directories are not synced)
* ``restic backup`` + ``sync``               when installed (``--install-restic`` apt-gets it)
* ``spotshift sync push`` at the default chunking (1/4/16 MiB: loose chunk objects) and at 64 KiB
  chunks (16/64/256 KiB: pack files), whole command including start-up and fingerprinting (a
  fresh ``SPOTSHIFT_HOME`` per run, so nothing comes from the files cache), ``--no-record`` (the
  warehouse fact is not part of moving bytes; its cost is reported once separately).

Each tool writes to a fresh directory of the same file system; every tool starts after a
``sync`` so no tool pays for another's dirty pages, and the order rotates by one tool per round
(the first tool of a round meets a colder disk). Reported: each round's push / (rsync + sync)
ratio and their median, with the 1-minute load average at the start of each round. The package is
byte-compiled first, as an install does (this machine sets ``PYTHONDONTWRITEBYTECODE``). Results: ``bench/results/first_push.json``
(``--quick``: ``first_push_quick.json``, 32 MiB).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, write_result  # noqa: E402
from bench_sync import (  # noqa: E402
    LAST_CPU_S,
    SPOTSHIFT,
    env_with_home,
    gen_tree,
    last_json,
    restic_available,
    timed,
    warm,
)

MiB = 1 << 20
SMALL = ["--min-chunk", "16K", "--avg-chunk", "64K", "--max-chunk", "256K"]


def _sync() -> float:
    t = time.perf_counter()
    os.sync()
    return time.perf_counter() - t


def _round(work: Path, src: Path, restic: str | None, n: int) -> dict[str, float]:
    """One round: every tool once, each into a fresh target; seconds per tool. The order rotates
    by one tool per round: whichever tool runs first in a round meets a colder disk and page cache,
    so a fixed order would always handicap the same tool."""
    out: dict[str, float] = {}
    targets = work / f"round{n}"
    targets.mkdir()

    def run(name: str, cmd: list[str], env: dict[str, str] | None = None, then_sync: bool = True) -> None:
        _sync()  # start clean: nobody pays for earlier dirty pages
        s, stdout, _ = timed(cmd, env)
        if then_sync:
            out[f"{name} (no sync)"] = s
            s += _sync()
        out[name] = s
        RUN_OUT[name] = stdout
        RUN_CPU.setdefault(name, []).append(LAST_CPU_S[0])

    def rsync() -> None:
        run("rsync+sync", ["rsync", "-a", f"{src}/", f"{targets / 'rsync'}/"])

    def rsync_fsync() -> None:  # syncs only its own files: immune to other processes' dirty pages
        cmd = ["rsync", "-a", "--fsync", f"{src}/", f"{targets / 'rsync-fsync'}/"]
        run("rsync --fsync", cmd, then_sync=False)

    def restic_backup() -> None:
        assert restic is not None
        repo = targets / "restic"
        renv = {**os.environ, "RESTIC_PASSWORD": "bench", "RESTIC_REPOSITORY": str(repo)}
        renv["RESTIC_CACHE_DIR"] = str(targets / "restic-cache")
        timed([restic, "init"], renv)
        run("restic+sync", [restic, "backup", "--host", "bench", "--json", str(src)], renv)

    def spotshift(name: str, extra: list[str]) -> None:
        home = targets / f"home-{name.split()[-2]}"
        store = (targets / f"store-{name.split()[-2]}").as_uri()
        cmd = [SPOTSHIFT, "sync", "push", str(src), store, "--json", "--no-record", *extra]
        run(name, cmd, env_with_home(home), then_sync=False)  # durable when it returns

    tools = [
        lambda: run("cp+sync", ["cp", "-r", str(src), str(targets / "cp")]),
        rsync,
        *([rsync_fsync] if RSYNC_FSYNC else []),
        *([restic_backup] if restic else []),
        lambda: spotshift("spotshift default", []),
        lambda: spotshift("spotshift 64 KiB", SMALL),
    ]
    k = n % len(tools)
    for tool in tools[k:] + tools[:k]:
        tool()
    out.pop("cp+sync (no sync)", None)
    out.pop("restic+sync (no sync)", None)
    out["rsync (no sync)"] = out.pop("rsync+sync (no sync)")
    shutil.rmtree(targets)
    _sync()
    return out


def byte_compile() -> None:
    """Byte-compile the spotshift package, as installing it does: with ``PYTHONDONTWRITEBYTECODE``
    set (as on this machine) a source checkout would compile every module at each start
    (~0.17 CPU-s per command), a cost no installed tool pays."""
    import compileall

    import spotshift

    compileall.compile_dir(str(Path(spotshift.__file__).parent), quiet=1)


#: whether this rsync has ``--fsync`` (3.2.4+): a second anchor that fsyncs each file it writes
RSYNC_FSYNC = (
    shutil.which("rsync") is not None
    and "--fsync" in subprocess.run(["rsync", "--help"], capture_output=True, text=True, check=False).stdout
)
RUN_OUT: dict[str, str] = {}
#: CPU seconds (user + system) of each tool's process per round: less sensitive than wall time to a
#: shared machine's load (writeback done by the kernel's flusher threads is not counted)
RUN_CPU: dict[str, list[float]] = {}


def bench(work: Path, files: int, size: int, rounds: int, restic: str | None) -> dict[str, Any]:
    src = gen_tree(work / "src", files, size, seed=20)
    warm(src)
    runs: dict[str, list[float]] = {}
    loads = []
    for n in range(rounds):
        loads.append(round(os.getloadavg()[0], 2))
        for name, s in _round(work, src, restic, n).items():
            runs.setdefault(name, []).append(s)
    pushes = {name: last_json(RUN_OUT[name]) for name in ("spotshift default", "spotshift 64 KiB")}
    rows = []
    for name, times in runs.items():
        rows.append(
            {
                "tool": name,
                "best_s": round(min(times), 3),
                "median_s": round(statistics.median(times), 3),
                "runs_s": [round(t, 3) for t in times],
                **({"cpu_median_s": round(statistics.median(RUN_CPU[name]), 3)} if name in RUN_CPU else {}),
            }
        )
    by = {r["tool"]: r for r in rows}
    # same-round ratios (each round's push against that round's rsync+sync), then their median
    per_round = {
        name: [round(p / r, 2) for p, r in zip(runs[name], runs["rsync+sync"], strict=True)]
        for name in pushes
    }
    ratios = {name: statistics.median(r) for name, r in per_round.items()}
    over_fsync = {}
    if "rsync --fsync" in runs:  # the same, against rsync fsyncing its own files (no global sync)
        over_fsync = {
            name: statistics.median(p / r for p, r in zip(runs[name], runs["rsync --fsync"], strict=True))
            for name in pushes
        }
    return {
        "bytes": files * size,
        "files": files,
        "rounds": rounds,
        "tools": rows,
        "push_over_rsync_sync_same_round_median": ratios,
        "push_over_rsync_sync_per_round": per_round,
        "push_over_rsync_fsync_same_round_median": {k: round(v, 2) for k, v in over_fsync.items()},
        "round_order": "rotates by one tool per round (round 0 starts with cp+sync)",
        "load_average_1m_per_round": loads,
        "goal_met": {name: ratio <= 1.0 for name, ratio in ratios.items()},
        "chunks": {name: d["chunks_total"] for name, d in pushes.items()},
        "best_gib_per_s": {r["tool"]: round(files * size / r["best_s"] / (1 << 30), 2) for r in rows},
        "rsync_sync_best_s": by["rsync+sync"]["best_s"],
    }


def store_objects(work: Path, src: Path) -> dict[str, int]:
    """Objects a 64 KiB-chunk push leaves in the store: loose (before packs) against packed."""
    import spotshift.sync.packs as packs
    from spotshift.sync.archiver import push
    from spotshift.sync.chunking import ChunkParams

    params = ChunkParams.resolve(16 * 1024, 64 * 1024, 256 * 1024)
    out = {}
    for name, limit in (("loose", 0), ("packed", packs.PACK_CHUNK_LIMIT)):
        saved, packs.PACK_CHUNK_LIMIT = packs.PACK_CHUNK_LIMIT, limit
        try:
            store = work / f"objects-{name}"
            push(src, store.as_uri(), "bench", params=params)
            out[name] = sum(1 for d in ("chunks", "packs") for p in (store / d).rglob("*") if p.is_file())
        finally:
            packs.PACK_CHUNK_LIMIT = saved
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="32 MiB, 1 round (smoke test)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--install-restic", action="store_true", help="apt-get install restic if missing")
    args = parser.parse_args()
    if not shutil.which("rsync"):
        print("rsync is not installed (apt-get install -y rsync): the anchor is missing", file=sys.stderr)
        return 2
    restic, restic_note = restic_available(args.install_restic)
    files, size, rounds = (4, 8 * MiB, 1) if args.quick else (8, 64 * MiB, args.rounds)
    load_start = [round(x, 2) for x in os.getloadavg()]
    byte_compile()
    with tempfile.TemporaryDirectory(prefix="bench-first-push-", dir=os.environ.get("BENCH_TMP")) as tmp:
        work = Path(tmp)
        os.environ["SPOTSHIFT_HOME"] = str(work / "home")
        result = bench(work, files, size, rounds, restic)
        result["store_objects_64k"] = store_objects(work, work / "src")
    result["restic"] = restic_note
    result["load_average_start"] = load_start
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    result["machine"] = machine_info()
    name = "first_push_quick" if args.quick else "first_push"
    path = write_result(name, result)
    for row in result["tools"]:
        cpu = f"  cpu {row['cpu_median_s']:.2f}s" if "cpu_median_s" in row else ""
        print(
            f"{row['tool']:20s} best {row['best_s']:.2f}s  median {row['median_s']:.2f}s{cpu}  {row['runs_s']}"
        )
    print(f"push / (rsync+sync), same round: {result['push_over_rsync_sync_per_round']}")
    print(
        f"  median: {result['push_over_rsync_sync_same_round_median']}  load per round: {result['load_average_1m_per_round']}"
    )
    print(f"push / (rsync --fsync), same round, median: {result['push_over_rsync_fsync_same_round_median']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
