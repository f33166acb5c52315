"""Facts from many writers (issue 17 item 3): the fact lake takes concurrent writers without a lock.

* 8 processes x 1,000 facts at once (half of them also try to ingest, as the default writer does):
  afterwards every fact is in the warehouse exactly once, and every batch is ingested;
* a writer killed mid-write (inside a Parquet file, or after its files and before the rename)
  leaves no partial row and no pending batch; its temp directory is removed once it is dead;
* batches are immutable: ingestion moves them to ``ingested/`` unchanged, and a re-recorded fact
  (same key, later batch) is written once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spotshift import factlake, warehouse
from spotshift.warehouse_tables import arrow_rows

REPO = Path(__file__).resolve().parents[2]

_WRITER = """
import sys
from spotshift import warehouse
db, writer, n, per_call = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for start in range(0, n, per_call):
    rows = [
        {"transfer_id": f"w{writer}-{i}", "kind": "dataset", "entity": f"w{writer}", "bytes_sent": i}
        for i in range(start, min(n, start + per_call))
    ]
    # even writers only land batches; odd ones also try the warehouse lock (never waiting) to ingest
    warehouse.record_facts({"raw.transfers": rows}, database=db, ingest=bool(writer % 2))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.mark.slow
def test_eight_writers_times_1000_facts_each_present_exactly_once(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    with warehouse.connect(db):
        pass
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(db), str(w), "1000", "20"],
            env=_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(8)
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    with warehouse.connect(db) as con:  # ingests whatever the writers left pending
        n, distinct, total = con.execute(
            "SELECT count(*), count(DISTINCT transfer_id), sum(bytes_sent) FROM raw.transfers"
        ).fetchone()
        per_writer = con.execute(
            "SELECT entity, count(*) FROM raw.transfers GROUP BY 1 ORDER BY 1"
        ).fetchall()
        batches = con.execute(f"SELECT count(*), sum(rows) FROM {factlake.MANIFEST}").fetchone()
    assert (n, distinct) == (8000, 8000)
    assert total == 8 * sum(range(1000))
    assert per_writer == [(f"w{w}", 1000) for w in range(8)]
    assert batches == (400, 8000)  # 8 writers x 50 calls, each ingested once
    assert warehouse.pending_facts(db) == []
    assert len(list((warehouse.facts_dir(db) / "ingested").iterdir())) == 400


_KILLED_WRITER = """
import os, signal, sys
import pyarrow.parquet as pq
from spotshift import factlake, warehouse
db, where = sys.argv[1], sys.argv[2]
real_write, real_rename = pq.write_table, os.rename
def half_then_die(table, f, **kw):
    import io
    buf = io.BytesIO()
    real_write(table, buf, **kw)
    data = buf.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)
def die_before_rename(src, dst):
    os.kill(os.getpid(), signal.SIGKILL)
if where == "mid-file":
    pq.write_table = half_then_die
else:
    factlake.os.rename = die_before_rename
rows = [{"transfer_id": f"k{i}", "kind": "dataset", "bytes_sent": i} for i in range(5000)]
warehouse.record_facts({"raw.transfers": rows, "raw.checkpoints": [{"checkpoint_id": "c", "url": "u"}]}, database=db)
"""


@pytest.mark.parametrize("where", ["mid-file", "before-rename"])
def test_a_writer_killed_mid_write_leaves_no_partial_row(tmp_path: Path, where: str) -> None:
    db = tmp_path / "w.duckdb"
    warehouse.record_facts({"raw.transfers": [{"transfer_id": "before", "kind": "dataset"}]}, database=db)
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(db), where], env=_env(), timeout=300)
    assert proc.returncode == -9
    pending = warehouse.facts_dir(db) / "pending"
    leftovers = [p.name for p in pending.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".spotshift-tmp."), leftovers
    assert warehouse.pending_facts(db) == []  # a temp directory is never a batch
    with warehouse.connect(db) as con:
        rows = con.execute("SELECT transfer_id FROM raw.transfers").fetchall()
        ckpts = con.execute("SELECT count(*) FROM raw.checkpoints").fetchone()[0]
    assert rows == [("before",)] and ckpts == 0
    assert list(pending.iterdir()) == []  # the dead writer's temp directory is gone


def test_batches_are_immutable_and_a_re_recorded_fact_lands_once(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    lake = warehouse.facts_dir(db)
    row = {"transfer_id": "t1", "kind": "dataset", "bytes_sent": 7}
    first = factlake.write_batch(lake, {"raw.transfers": arrow_rows("raw.transfers", [row])})
    second = factlake.write_batch(
        lake, {"raw.transfers": arrow_rows("raw.transfers", [{**row, "bytes_sent": 8}])}
    )
    before = {b.name: (b / "raw.transfers.parquet").read_bytes() for b in (first, second)}
    with warehouse.connect(db) as con:
        assert con.execute("SELECT transfer_id, bytes_sent FROM raw.transfers").fetchall() == [("t1", 7)]
        got = con.execute(f"SELECT batch_id, rows FROM {factlake.MANIFEST} ORDER BY 1").fetchall()
    assert got == [(first.name, 1), (second.name, 0)]
    moved = lake / "ingested"
    assert sorted(p.name for p in moved.iterdir()) == [first.name, second.name]
    assert {n: (moved / n / "raw.transfers.parquet").read_bytes() for n in before} == before
