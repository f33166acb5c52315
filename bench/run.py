"""``make bench``: run every ``bench/bench_<name>.py`` (or the names given) in its own process.

Each script writes ``bench/results/<name>.json``. A separate process per benchmark keeps peak-RSS
figures honest and lets one failing benchmark not hide the others. ``--quick`` asks each script
for a smaller size (used by the test suite to prove the benchmarks run).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for smoke tests")
    args = parser.parse_args()
    available = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    names = args.names or available
    unknown = [n for n in names if n not in available]
    if unknown:
        print(
            f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available)}", file=sys.stderr
        )
        return 2
    failed = []
    for name in names:
        t0 = time.perf_counter()
        cmd = [sys.executable, str(HERE / f"bench_{name}.py"), *(["--quick"] if args.quick else [])]
        print(f"== {name}", flush=True)
        rc = subprocess.call(cmd, cwd=HERE.parent)
        print(f"== {name}: exit {rc} in {time.perf_counter() - t0:.1f}s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
