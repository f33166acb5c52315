"""Facts from many writers (issue 17 item 3): facts/s with 8 concurrent writer processes, 0 lost.

Each writer records ``N`` facts (``raw.transfers`` rows), one :func:`spotshift.warehouse.record_facts`
call per fact, as a sync push, a trainer or a replica does. Two paths on the same machine, in
the same script:

* **lake** (``record_facts(..., ingest=False)``, the high-rate writers' path): each call lands an
  immutable Parquet batch in the fact lake and never opens the DuckDB file; the analytics copy
  ingests them when it is next opened for writing. ``writers_facts_per_s`` is what the 8 writers
  achieve; ``end_to_end_facts_per_s`` includes that final ingestion.
* **lake-try** (the default ``record_facts``): the same, and each call also tries the warehouse
  lock once (no wait) to ingest what is pending at once.
* **baseline** (every writer inserts into the DuckDB file itself): each call waits for the
  single-writer lock (:func:`spotshift.warehouse.connect`), inserts its row and releases.

Every fact of the lake paths must be present exactly once (``lost`` and ``duplicated`` are
reported for all three paths; ``zero_lost`` is the lake's guarantee).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import Timer, write_result  # noqa: E402

WRITER = """
import sys
from spotshift import warehouse
db, writer, n, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
for i in range(n):
    row = {"transfer_id": f"w{writer}-{i}", "kind": "dataset", "entity": f"w{writer}", "bytes_sent": i}
    if mode == "lake":
        warehouse.record_facts({"raw.transfers": [row]}, database=db, ingest=False)
    elif mode == "lake-try":
        warehouse.record_facts({"raw.transfers": [row]}, database=db)
    else:
        with warehouse.connect(db, timeout_s=600) as con:
            warehouse.record_facts({"raw.transfers": [row]}, con=con)
"""


def run(mode: str, writers: int, n: int) -> dict[str, float | int]:
    from spotshift import warehouse

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "w.duckdb"
        with warehouse.connect(db):
            pass
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with Timer() as t:
            procs = [
                subprocess.Popen(
                    [sys.executable, "-c", WRITER, str(db), str(w), str(n), mode],
                    env=env,
                    stderr=subprocess.DEVNULL,
                )
                for w in range(writers)
            ]
            rcs = [p.wait() for p in procs]
        if any(rcs):
            raise SystemExit(f"{mode}: a writer failed: exit codes {rcs}")
        pending = len(warehouse.pending_facts(db))
        with Timer() as ingest, warehouse.connect(db) as con:
            total, distinct = con.execute(
                "SELECT count(*), count(DISTINCT transfer_id) FROM raw.transfers"
            ).fetchone()
    facts = writers * n
    return {
        "writers": writers,
        "facts": facts,
        "writers_seconds": round(t.seconds, 3),
        "writers_facts_per_s": round(facts / t.seconds, 1),
        "pending_batches_after_writers": pending,
        "final_ingest_seconds": round(ingest.seconds, 3),
        "end_to_end_facts_per_s": round(facts / (t.seconds + ingest.seconds), 1),
        "lost": facts - distinct,
        "duplicated": total - distinct,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="8 writers x 50 facts")
    parser.add_argument("--facts", type=int, default=1000, help="facts per writer (default 1000)")
    parser.add_argument(
        "--compare-facts",
        type=int,
        default=100,
        help="facts per writer of the lake-try and baseline runs (default 100: they hold a lock per fact)",
    )
    args = parser.parse_args()
    n = 50 if args.quick else args.facts
    load = os.getloadavg()
    m = 20 if args.quick else args.compare_facts
    lake = run("lake", 8, n)
    print(f"lake:     {lake}", flush=True)
    try_ = run("lake-try", 8, m)
    print(f"lake-try: {try_}", flush=True)
    base = run("baseline", 8, m)
    print(f"baseline: {base}", flush=True)
    write_result(
        "facts" if not args.quick else "facts_quick",
        {
            "facts_per_writer": n,
            "load_average_1m_at_start": round(load[0], 2),
            "facts_per_writer_compared": m,
            "lake": lake,
            "lake_try_ingest": try_,
            "baseline_direct_duckdb": base,
            "speedup_writers": round(lake["writers_facts_per_s"] / base["writers_facts_per_s"], 2),
            # the lake's guarantee; the baseline's losses, if any, are reported as measured
            "zero_lost": all(r["lost"] == 0 and r["duplicated"] == 0 for r in (lake, try_)),
        },
    )
    return 0 if all(r["lost"] == 0 and r["duplicated"] == 0 for r in (lake, try_)) else 1


if __name__ == "__main__":
    started = time.time()
    sys.exit(main())
