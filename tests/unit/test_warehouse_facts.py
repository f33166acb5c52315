"""A fact is never lost (issue 11, defect 4; issue 17 item 3): facts go through one durable path, the fact lake.

* a ``sync push`` that meets a locked warehouse does not wait: its ``raw.transfers`` row lands in
  the lake and the next command that opens the warehouse for writing ingests it,
* a corrupt warehouse is one line (exit 2) and the facts wait in the lake,
* a ``kill -9`` between the insert and the move of the batch to ``ingested/`` does not count a fact twice,
* 8 processes x 1,000 facts at once: every fact present exactly once; a writer killed mid-write
  leaves no partial row,
* every fact writer of the pipeline goes through :func:`spotshift.warehouse.record_facts`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spotshift import factlake, warehouse
from spotshift.cli import main
from spotshift.warehouse_tables import arrow_rows

REPO = Path(__file__).resolve().parents[2]


def _hold_lock(path: str, release: mp.Event, ready: mp.Event) -> None:  # type: ignore[type-arg]
    import duckdb

    con = duckdb.connect(path)
    ready.set()
    release.wait(300)
    con.close()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(50_000))
    return src


def transfer_rows(db: Path) -> list[tuple[str, int]]:
    with warehouse.connect(db) as con:
        return con.execute("SELECT transfer_id, bytes_sent FROM raw.transfers ORDER BY started_at").fetchall()


def test_push_under_a_held_lock_queues_the_row_and_the_next_writer_ingests_it(
    tree: Path,
    tmp_path: Path,
    spotshift_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = spotshift_home / "warehouse.duckdb"
    with warehouse.connect(db):
        pass
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(db), release, ready))
    holder.start()
    try:
        assert ready.wait(60)
        monkeypatch.setenv("SPOTSHIFT_WAREHOUSE_LOCK_TIMEOUT_S", "600")  # a writer must not wait for it
        started = time.monotonic()
        assert main(["sync", "push", str(tree), (tmp_path / "store").as_uri(), "--json"]) == 0
        assert time.monotonic() - started < 120
        out, err = capsys.readouterr()
        assert len(warehouse.pending_facts(db)) == 1
    finally:
        release.set()
        holder.join(60)
    pushed = __import__("json").loads(out.strip().splitlines()[-1])
    # the next command that opens the warehouse for writing ingests it, and says so
    (tree / "b.bin").write_bytes(os.urandom(10_000))
    assert main(["sync", "push", str(tree), (tmp_path / "store").as_uri()]) == 0
    err = capsys.readouterr().err
    assert "ingested 1 pending fact batch(es) (1 new row(s))" in err, err
    rows = transfer_rows(db)
    assert len(rows) == 2 and rows[0] == (pushed["transfer_id"], pushed["bytes_sent"])
    assert warehouse.pending_facts(db) == []


def test_corrupt_warehouse_is_one_line_and_the_facts_wait(
    tree: Path, tmp_path: Path, spotshift_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = spotshift_home / "warehouse.duckdb"
    db.write_bytes(b"definitely not duckdb" * 500)
    store = tmp_path / "store"
    assert main(["sync", "push", str(tree), store.as_uri()]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "not a valid DuckDB database file" in lines[0] and "wait in" in lines[0], lines[0]
    assert (store / "refs" / "src" / "latest").is_file()  # the data was committed
    assert len(warehouse.pending_facts(db)) == 1
    # a reader of the corrupt warehouse: one line as well
    assert main(["report"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    db.rename(tmp_path / "corrupt.duckdb")  # the user moves it aside
    with warehouse.connect(db) as con:
        n = con.execute("SELECT count(*) FROM raw.transfers").fetchone()[0]
    assert n == 1
    assert "ingested 1 pending fact batch(es)" in capsys.readouterr().err


_KILL_AFTER_COMMIT = """
import os, signal, sys
from spotshift import factlake, warehouse
real = factlake._ingest_round
def ingest_then_die(*args):
    out = real(*args)          # committed
    os.kill(os.getpid(), signal.SIGKILL)  # killed before the batch moves to ingested/
factlake._ingest_round = ingest_then_die
with warehouse.connect(sys.argv[1]):
    pass
"""


def test_kill_9_between_insert_and_batch_move_counts_each_fact_once(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    with warehouse.connect(db):
        pass
    rows = [{"transfer_id": f"t{i}", "kind": "dataset", "bytes_sent": i} for i in range(3)]
    factlake.write_batch(warehouse.facts_dir(db), {"raw.transfers": arrow_rows("raw.transfers", rows)})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _KILL_AFTER_COMMIT, str(db)], env=env, timeout=120)
    assert proc.returncode == -9
    assert len(warehouse.pending_facts(db)) == 1  # the batch is still pending after the kill
    with warehouse.connect(db) as con:
        n, total = con.execute("SELECT count(*), sum(bytes_sent) FROM raw.transfers").fetchone()
    assert (n, total) == (3, 3)
    assert warehouse.pending_facts(db) == []


def test_record_facts_ingests_exactly_once_and_keeps_tables_together(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    decision = {"decision_id": "d1", "job": "j", "action": "stay"}
    candidates = [{"decision_id": "d1", "job": "j", "location": "gcp/us-central1"}] * 2
    first = warehouse.record_facts(
        {"raw.decisions": [decision], "main.placement_candidates": candidates}, database=db
    )
    assert first.written == {"raw.decisions": 1, "main.placement_candidates": 2} and not first.queued
    again = warehouse.record_facts(
        {"raw.decisions": [decision], "main.placement_candidates": candidates}, database=db
    )
    assert again.written == {"raw.decisions": 0, "main.placement_candidates": 0}
    with warehouse.connect(db) as con:
        assert con.execute("SELECT count(*) FROM main.placement_candidates").fetchone()[0] == 2
        # through a caller's connection: same path, same rule
        out = warehouse.record_facts({"raw.decisions": [{**decision, "decision_id": "d2"}]}, con=con)
        assert out.rows("raw.decisions") == 1
    with pytest.raises(warehouse.ConfigError, match="unknown column"):
        warehouse.record_facts({"raw.transfers": [{"transfer_id": "x", "bytes_sentt": 1}]}, database=db)
    assert warehouse.pending_facts(db) == []


def test_an_unreadable_batch_is_set_aside_and_never_blocks_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "w.duckdb"
    lake = warehouse.facts_dir(db)
    bad = lake / "pending" / "00000000000000000001-1-aaaa"
    bad.mkdir(parents=True)
    (bad / "raw.transfers.parquet").write_bytes(b"garbage")
    factlake.write_batch(lake, {"raw.transfers": arrow_rows("raw.transfers", [{"transfer_id": "ok"}])})
    with warehouse.connect(db) as con:
        assert con.execute("SELECT transfer_id FROM raw.transfers").fetchall() == [("ok",)]
    err = capsys.readouterr().err
    assert "cannot be ingested" in err and "rejected" in err
    assert (lake / "rejected" / bad.name / "raw.transfers.parquet").is_file()
    assert warehouse.pending_facts(db) == []


def test_every_fact_writer_goes_through_record_facts() -> None:
    """No module of the pipeline inserts facts around the spool (the fixtures under tests/ seed test warehouses)."""
    allowed = {Path("spotshift/warehouse.py")}
    offenders = []
    for folder in ("spotshift", "assets", "ops", "sensors", "resources", "scripts"):
        for p in (REPO / folder).rglob("*.py"):
            rel = p.relative_to(REPO)
            text = p.read_text()
            if rel not in allowed and re.search(r"\bappend_rows\(|INSERT INTO (raw|main)\.", text):
                offenders.append(str(rel))
    assert offenders == []
