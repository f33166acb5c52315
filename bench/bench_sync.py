"""bench_sync: chunk fingerprints and delta sync, measured against openssl, rsync and restic in one run.

Measures (results in ``bench/results/sync.json``; ``--quick`` writes ``sync_quick.json`` on tiny data):

1. fingerprint throughput of new data, 1 and 2 workers, whole command including Python start-up,
   as a ratio to ``openssl dgst -sha256`` over the same page-cached files; also the seed's engine
   (fastcdc 2/8/16 MiB) and BLAKE2b, to show why the defaults are what they are;
2. unchanged tree re-fingerprint speed-up from the files cache (command line, start-up included);
3. scattered small edits: ``bytes_sent <= bytes_changed + 2 x max_chunk x edits + 1 %``, and the
   same update with rsync (delta mode) and restic (when installed) — bytes sent and seconds;
4. peak RSS of ``spotshift sync push`` of a 4 GiB dataset;
5. a weekly-refresh dedup figure in the style of the seed's "94 TB -> 2.3 TB".

restic is not installed by default here: with ``--install-restic`` (and root) the script runs
``apt-get install -y restic`` first and says so in the results.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, write_result  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
BIN = Path(sys.executable).parent
SPOTSHIFT = str(BIN / "spotshift")
SMALL_CHUNKS = ["--min-chunk", "64K", "--avg-chunk", "256K", "--max-chunk", "1M"]


def gen_file(path: Path, size: int, seed: int) -> None:
    r = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(16 * MiB, left)  # randbytes overflows at 256 MiB
            f.write(r.randbytes(n))
            left -= n


def gen_tree(root: Path, files: int, size: int, seed: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        sub = root / f"shard{i % 4}"
        sub.mkdir(exist_ok=True)
        gen_file(sub / f"part{i:03d}.bin", size, seed * 1000 + i)
    return root


def warm(root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                while f.read(16 * MiB):
                    pass


def files_of(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.is_file())


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str, int]:
    """Seconds, stdout and peak RSS (KiB) of one command (its CPU seconds go to ``LAST_CPU_S``)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out_chunks = []
    assert proc.stdout is not None
    for block in iter(lambda: proc.stdout.read(65536), b""):  # type: ignore[union-attr]
        out_chunks.append(block)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    LAST_CPU_S[0] = usage.ru_utime + usage.ru_stime
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err[-400:]}")
    return seconds, b"".join(out_chunks).decode(), usage.ru_maxrss


LAST_CPU_S = [0.0]


def best(n: int, cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    runs = [timed(cmd, env) for _ in range(n)]
    s, out, _ = min(runs, key=lambda r: r[0])
    return s, out


def last_json(text: str) -> dict[str, Any]:
    return json.loads(text.strip().splitlines()[-1])


def env_with_home(home: Path) -> dict[str, str]:
    return {**os.environ, "SPOTSHIFT_HOME": str(home), "SPOTSHIFT_CONFIG": str(home / "spotshift.yaml")}


# ---- 1 + 2: fingerprint throughput and files cache -----------------------------------------------------
def bench_fingerprint(work: Path, files: int, size: int, repeats: int) -> dict[str, Any]:
    data = gen_tree(work / "fp", files, size, seed=1)
    total = files * size
    warm(data)
    env = env_with_home(work / "home-fp")
    seed_engine = ["--engine", "fastcdc-2016", "--min-chunk", "2M", "--avg-chunk", "8M", "--max-chunk", "16M"]
    variants = {
        "pyfastcdc-2020 1/4/16 MiB blake3-128, 1 worker": ["--workers", "1"],
        "pyfastcdc-2020 1/4/16 MiB blake3-128, 2 workers": ["--workers", "2"],
        "fastcdc-2016 2/8/16 MiB (seed) blake3-128, 1 worker": ["--workers", "1", *seed_engine],
        "fastcdc-2016 2/8/16 MiB (seed) blake3-128, 2 workers": ["--workers", "2", *seed_engine],
        "pyfastcdc-2020 1/4/16 MiB blake2b-128, 2 workers": ["--workers", "2", "--digest", "blake2b-128"],
    }
    # rounds interleave every command, so a burst of load from other users of the machine hits
    # them alike; each command keeps its best round
    sha_cmd = ["openssl", "dgst", "-sha256", *files_of(data)]
    cmds = {
        name: [SPOTSHIFT, "sync", "fingerprint", str(data), "--no-cache", "--json", *extra]
        for name, extra in variants.items()
    }
    times: dict[str, list[float]] = {name: [] for name in ["openssl", *cmds]}
    cpu: dict[str, float] = {}
    outs: dict[str, str] = {}
    for _ in range(repeats):
        times["openssl"].append(timed(sha_cmd)[0])
        for name, cmd in cmds.items():
            s, outs[name], _ = timed(cmd, env)
            if not times[name] or s < min(times[name]):
                cpu[name] = LAST_CPU_S[0]
            times[name].append(s)
    openssl_s = min(times["openssl"])
    rows = []
    for name in cmds:
        s = min(times[name])
        d = last_json(outs[name])
        rows.append(
            {
                "variant": name,
                "seconds": round(s, 3),
                # CPU seconds of the best round: with free cores, N workers need cpu_s / N of wall time
                "cpu_s": round(cpu[name], 3),
                "gb_per_s": round(total / s / 1e9, 3),
                "vs_openssl_sha256": round(openssl_s / s, 2),
                "chunks": d["chunks_total"],
                "mean_chunk_mib": round(total / d["chunks_total"] / MiB, 2),
            }
        )
    one, two = rows[0]["seconds"], rows[1]["seconds"]
    # the engine alone (no interpreter start-up): how the chunking threads scale
    from spotshift.sync.fingerprint import fingerprint

    engine: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(repeats):
        for workers in (1, 2):
            t = time.perf_counter()
            fingerprint(data, workers=workers, use_cache=False)
            engine[workers].append(time.perf_counter() - t)
    best_engine = {w: min(v) for w, v in engine.items()}
    # files cache: a fresh home, a first pass that fills the cache, then unchanged re-runs
    shutil.rmtree(work / "home-fp", ignore_errors=True)
    time.sleep(0.2)  # files written within 100 ms of being read are not cached (racy mtime)
    first_s, _, _ = timed([SPOTSHIFT, "sync", "fingerprint", str(data), "--json"], env)
    again_s, again_out = best(repeats + 2, [SPOTSHIFT, "sync", "fingerprint", str(data), "--json"], env)
    assert last_json(again_out)["bytes_scanned"] == 0
    return {
        "bytes": total,
        "files": files,
        "openssl_sha256_s": round(openssl_s, 3),
        "openssl_gb_per_s": round(total / openssl_s / 1e9, 3),
        "variants": rows,
        "default_1_worker_gb_per_s": rows[0]["gb_per_s"],
        "default_2_workers_speedup": round(one / two, 2),
        "engine_1_worker_gb_per_s": round(total / best_engine[1] / 1e9, 3),
        "engine_2_workers_gb_per_s": round(total / best_engine[2] / 1e9, 3),
        "engine_2_workers_speedup": round(best_engine[1] / best_engine[2], 2),
        "default_2_workers_vs_openssl": rows[1]["vs_openssl_sha256"],
        "cache_first_pass_s": round(first_s, 3),
        "cache_unchanged_rerun_s": round(again_s, 3),
        "cache_speedup": round(first_s / again_s, 1),
    }


# ---- 3 + 5: scattered edits vs rsync / restic, weekly dedup ---------------------------------------------
def edit_scattered(root: Path, edits: int, seed: int, size: int = 4096) -> int:
    r = random.Random(seed)
    paths = files_of(root)
    for i in range(edits):
        p = paths[(i * 7) % len(paths)]
        n = os.path.getsize(p)
        with open(p, "r+b") as f:
            f.seek(r.randrange(0, n - size))
            f.write(r.randbytes(size))
    return edits * size


def restic_available(install: bool) -> tuple[str | None, str]:
    exe = shutil.which("restic")
    if exe:
        return exe, "found on PATH"
    if not install:
        return None, "not installed (run with --install-restic to apt-get install it)"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "not installed and apt-get is not usable here"
    try:
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "restic"], check=True, capture_output=True, timeout=300
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"apt-get install restic failed: {exc}"
    exe = shutil.which("restic")
    return (
        exe,
        "installed by this benchmark with apt-get install -y restic" if exe else "apt-get ran, no restic",
    )


def rsync_run(src: Path, dst: Path) -> dict[str, Any]:
    s, out, _ = timed(["rsync", "-a", "--no-whole-file", "--stats", f"{src}/", f"{dst}/"])

    def field(name: str) -> int:
        for line in out.splitlines():
            if line.startswith(name):
                return int(line.split(":")[1].split()[0].replace(",", ""))
        return -1

    return {
        "seconds": round(s, 3),
        "bytes_sent": field("Total bytes sent"),
        "literal_bytes": field("Literal data"),
    }


def restic_run(exe: str, repo: Path, src: Path) -> dict[str, Any]:
    env = {
        **os.environ,
        "RESTIC_PASSWORD": "bench",
        "RESTIC_REPOSITORY": str(repo),
        "RESTIC_CACHE_DIR": str(repo) + "-cache",
    }
    if not repo.exists():
        timed([exe, "init"], env)
    s, out, _ = timed([exe, "backup", "--json", "--host", "bench", str(src)], env)
    summary = next(json.loads(line) for line in reversed(out.splitlines()) if '"summary"' in line)
    return {
        "seconds": round(s, 3),
        "bytes_added": summary.get("data_added"),
        "bytes_added_packed": summary.get("data_added_packed"),
    }


def spotshift_push(src: Path, store: Path, env: dict[str, str], opts: list[str]) -> dict[str, Any]:
    s, out, _ = timed(
        [SPOTSHIFT, "sync", "push", str(src), store.as_uri(), "--json", "--no-record", *opts], env
    )
    d = last_json(out)
    return {
        "seconds": round(s, 3),
        "bytes_sent": d["bytes_sent"],
        "bytes_changed": d["bytes_changed"],
        "chunks_sent": d["chunks_sent"],
    }


def bench_delta(work: Path, files: int, size: int, edits: int, restic: str | None) -> dict[str, Any]:
    src = gen_tree(work / "delta-src", files, size, seed=2)
    total = files * size
    env = env_with_home(work / "home-delta")
    out: dict[str, Any] = {"bytes": total, "files": files, "edits": edits, "edit_bytes": 4096}
    tools: dict[str, Any] = {}
    for label, opts, max_chunk in (
        ("spotshift_64k_256k_1m", SMALL_CHUNKS, 1 * MiB),
        ("spotshift_default", [], 16 * MiB),
    ):
        store = work / f"store-{label}"
        tools[label] = {"initial": spotshift_push(src, store, env, opts), "max_chunk": max_chunk}
    rsync = shutil.which("rsync")
    if rsync:
        tools["rsync"] = {"initial": rsync_run(src, work / "rsync-dst")}
    if restic:
        tools["restic"] = {"initial": restic_run(restic, work / "restic-repo", src)}
    changed = edit_scattered(src, edits, seed=3)
    for label in ("spotshift_64k_256k_1m", "spotshift_default"):
        opts = SMALL_CHUNKS if label == "spotshift_64k_256k_1m" else []
        r = spotshift_push(src, work / f"store-{label}", env, opts)
        bound = changed + 2 * tools[label]["max_chunk"] * edits + 0.01 * total
        tools[label]["after_edits"] = {**r, "bound": int(bound), "within_bound": r["bytes_sent"] <= bound}
    if rsync:
        tools["rsync"]["after_edits"] = rsync_run(src, work / "rsync-dst")
    if restic:
        tools["restic"]["after_edits"] = restic_run(restic, work / "restic-repo", src)
    out["bytes_changed_by_edits"] = changed
    out["tools"] = tools
    return out


def bench_weekly(work: Path, files: int, size: int) -> dict[str, Any]:
    """Two weekly refreshes of a dataset: one that appends (+2 % new shard, a rename, a deletion),
    then one that also corrects records in place (scattered 4 KiB edits in half the files)."""
    src = gen_tree(work / "weekly", files, size, seed=4)
    total = files * size
    env = env_with_home(work / "home-weekly")
    stores = {"default": (work / "wk-default", []), "64k_256k_1m": (work / "wk-small", SMALL_CHUNKS)}
    for store, opts in stores.values():
        spotshift_push(src, store, env, opts)
    paths = files_of(src)
    os.rename(paths[1], str(Path(paths[1]).with_name("renamed.bin")))
    os.unlink(paths[2])
    new_bytes = max(size, int(total * 0.02))
    gen_file(src / "shard1" / "week2-new.bin", new_bytes, seed=99)
    weeks: dict[str, Any] = {}
    for week, mutate in (
        ("append_week", None),
        ("corrections_week", lambda: edit_scattered(src, max(4, files // 2), seed=5)),
    ):
        edited = mutate() if mutate else 0
        full = sum(os.path.getsize(p) for p in files_of(src))
        rows: dict[str, Any] = {"edited_bytes": edited}
        for label, (store, opts) in stores.items():
            r = spotshift_push(src, store, env, opts)
            rows[label] = {
                **r,
                "full_copy_bytes": full,
                "reduction_pct": round(100 * (1 - r["bytes_sent"] / full), 2),
                "scaled_to_94_tb": f"94 TB -> {94 * r['bytes_sent'] / full:.2f} TB",
            }
        weeks[week] = rows
    return {"dataset_bytes": total, "new_bytes": new_bytes, **weeks}


# ---- 4: memory while pushing -------------------------------------------------------------------------------
def bench_push_rss(work: Path, data: Path) -> dict[str, Any]:
    env = env_with_home(work / "home-rss")
    s, out, rss_kib = timed(
        [SPOTSHIFT, "sync", "push", str(data), (work / "store-rss").as_uri(), "--json", "--no-record"], env
    )
    d = last_json(out)
    return {
        "bytes": d["bytes_full"],
        "seconds": round(s, 2),
        "gb_per_s": round(d["bytes_full"] / s / 1e9, 3),
        "peak_rss_mib": round(rss_kib / 1024, 1),
        "chunks_sent": d["chunks_sent"],
    }


def markdown_table(r: dict[str, Any]) -> str:
    """The README table for one result file."""
    fp, d, w, rss = r["fingerprint"], r["delta"], r["weekly_refresh"], r["push_rss"]
    v = {row["variant"]: row for row in fp["variants"]}
    t = d["tools"]
    gib = fp["bytes"] / GiB
    rows = [
        ("Measure", "Result", "Target"),
        ("---", "---", "---"),
        (
            f"fingerprint {gib:.0f} GiB new data (page cache), 1 worker, start-up included",
            f"{fp['default_1_worker_gb_per_s']} GB/s = {v[next(iter(v))]['vs_openssl_sha256']}x `openssl dgst -sha256` "
            f"({fp['openssl_gb_per_s']} GB/s)",
            ">= 1.0 GB/s per core",
        ),
        (
            "same, 2 workers",
            f"{list(v.values())[1]['gb_per_s']} GB/s = {fp['default_2_workers_vs_openssl']}x openssl; "
            f"{fp['default_2_workers_speedup']}x one worker (CPU {list(v.values())[0]['cpu_s']} s -> "
            f"{list(v.values())[1]['cpu_s']} s)",
            ">= 1.0x openssl",
        ),
        (
            "chunking engine alone (in process, no start-up), 1 -> 2 workers",
            f"{fp['engine_1_worker_gb_per_s']} -> {fp['engine_2_workers_gb_per_s']} GB/s = {fp['engine_2_workers_speedup']}x",
            ">= 1.6x",
        ),
    ]
    for name, row in list(v.items())[2:]:
        rows.append(
            (f"alternative: {name}", f"{row['gb_per_s']} GB/s = {row['vs_openssl_sha256']}x openssl", "")
        )
    rows.append(
        (
            f"unchanged re-fingerprint of {gib:.0f} GiB (files cache), start-up included",
            f"{fp['cache_first_pass_s']} s -> {fp['cache_unchanged_rerun_s']} s = {fp['cache_speedup']}x",
            ">= 20x",
        )
    )
    mb = 1e6
    for key, label in (
        ("spotshift_64k_256k_1m", "64K/256K/1M chunks"),
        ("spotshift_default", "default chunks"),
    ):
        a = t[key]["after_edits"]
        rows.append(
            (
                f"{d['edits']} scattered 4 KiB edits in {d['bytes'] / MiB:.0f} MiB, spotshift push, {label}",
                f"{a['bytes_sent'] / mb:.2f} MB sent in {a['seconds']} s (bound {a['bound'] / mb:.1f} MB)",
                "<= changed + 2 x max_chunk x edits + 1 %",
            )
        )
    if "rsync" in t:
        a = t["rsync"]["after_edits"]
        rows.append(
            (
                "same edits, `rsync -a --no-whole-file`",
                f"{a['bytes_sent'] / mb:.2f} MB sent in {a['seconds']} s",
                "",
            )
        )
    if "restic" in t:
        a = t["restic"]["after_edits"]
        rows.append(
            (
                "same edits, `restic backup` (0.14)",
                f"{a['bytes_added'] / mb:.2f} MB added in {a['seconds']} s",
                "",
            )
        )
    first = [("spotshift", t["spotshift_64k_256k_1m"]["initial"]["seconds"])]
    first += [(k, t[k]["initial"]["seconds"]) for k in ("rsync", "restic") if k in t]
    rows.append(
        (
            f"first copy of the {d['bytes'] / MiB:.0f} MiB",
            ", ".join(f"{k} {s} s" for k, s in first),
            "",
        )
    )
    rows.append(
        (
            f"peak RSS, `spotshift sync push` of {rss['bytes'] / GiB:.0f} GiB",
            f"{rss['peak_rss_mib']} MiB ({rss['gb_per_s']} GB/s, chunks made durable before the commit)",
            "< 300 MiB",
        )
    )
    for week, what in (
        ("append_week", "+2 % new shard, a rename, a deletion"),
        (
            "corrections_week",
            f"then {w['corrections_week']['edited_bytes'] // 4096} scattered 4 KiB corrections",
        ),
    ):
        for key, label in (("default", "default chunks"), ("64k_256k_1m", "64K/256K/1M chunks")):
            x = w[week][key]
            rows.append(
                (
                    f"weekly refresh of {w['dataset_bytes'] / GiB:.0f} GiB: {what}; {label}",
                    f"{x['bytes_sent'] / mb:.1f} MB of {x['full_copy_bytes'] / mb:.0f} MB: -{x['reduction_pct']} % "
                    f"({x['scaled_to_94_tb']})",
                    "seed: 94 TB -> 2.3 TB (-97.5 %)",
                )
            )
    m = r["machine"]
    head = (
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB, Python {m['python']}, {m['when']}, "
        f"load average at the end {r.get('load_average')} (`bench/results/sync.json`)"
    )
    return head + "\n\n" + "\n".join("| " + " | ".join(row) + " |" for row in rows)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--install-restic", action="store_true", help="apt-get install restic when missing")
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    parser.add_argument("--table", metavar="JSON", help="only print the README table of a result file")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads(Path(args.table).read_text())))
        return 0
    scratch = Path(tempfile.mkdtemp(prefix="spotshift-bench-sync-"))
    t0 = time.perf_counter()
    try:
        restic, restic_note = (
            (None, "skipped in --quick") if args.quick else restic_available(args.install_restic)
        )
        if args.quick:
            fp = bench_fingerprint(scratch, files=4, size=8 * MiB, repeats=1)
            delta = bench_delta(scratch, files=4, size=4 * MiB, edits=4, restic=None)
            weekly = bench_weekly(scratch, files=8, size=2 * MiB)
            rss = bench_push_rss(scratch, scratch / "fp")
        else:
            fp = bench_fingerprint(scratch, files=16, size=256 * MiB, repeats=5)  # 4 GiB
            delta = bench_delta(scratch, files=16, size=32 * MiB, edits=24, restic=restic)  # 512 MiB
            weekly = bench_weekly(scratch, files=64, size=16 * MiB)  # 1 GiB
            rss = bench_push_rss(scratch, scratch / "fp")
        result = {
            "quick": args.quick,
            # other users share this machine: the 1/5/15-minute load averages when the run ended
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "seconds_total": round(time.perf_counter() - t0, 1),
            "fingerprint": fp,
            "delta": delta,
            "weekly_refresh": weekly,
            "push_rss": rss,
            "restic": restic_note,
            # tiny --quick sizes say nothing about the targets
            "targets": None
            if args.quick
            else {
                "fingerprint_vs_openssl_ge_1": fp["default_2_workers_vs_openssl"] >= 1.0,
                "per_core_ge_1_gb_s": fp["default_1_worker_gb_per_s"] >= 1.0,
                "two_workers_ge_1_6x": fp["engine_2_workers_speedup"] >= 1.6,
                "rerun_ge_20x": fp["cache_speedup"] >= 20,
                "edits_within_bound": all(
                    t["after_edits"]["within_bound"]
                    for k, t in delta["tools"].items()
                    if k.startswith("spotshift")
                ),
                "push_rss_lt_300_mib": rss["peak_rss_mib"] < 300,
            },
        }
        write_result("sync_quick" if args.quick else "sync", result)
        print(json.dumps(result["targets"], indent=1) if result["targets"] else "quick run: no targets")
        print(markdown_table({**result, "machine": machine_info()}))
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            print(f"data kept in {scratch}")


if __name__ == "__main__":
    machine_info()  # fail early if the helper is missing
    sys.exit(main())
