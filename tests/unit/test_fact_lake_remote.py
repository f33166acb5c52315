"""Facts from other machines (issue 17 item 3): the fact lake in an object store.

* 4 processes x 50 single-fact batches into S3 at once (moto over HTTP, ``SPOTSHIFT_FACTS_URL``),
  half of them also trying to ingest: afterwards every fact is in the warehouse exactly once and
  the store's ``pending/`` is empty;
* a writer that died before its ``COMMIT`` leaves files no pull takes (removed once stale);
* a batch whose file does not match its ``COMMIT`` is set aside in ``rejected/`` with one line and
  the good batches are ingested; a batch already ingested (a pull that died before deleting it) is
  only deleted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spotshift import factlake, factlake_remote, warehouse
from spotshift.sync.store import ObjectInfo
from spotshift.sync.store_url import open_store
from spotshift.warehouse_tables import arrow_rows
from tests.unit.sync.conftest import moto_endpoint, s3_env  # noqa: F401 - fixtures
from tests.unit.test_fact_lake import _WRITER, REPO


def _rows(db: Path) -> list[tuple[str, int]]:
    with warehouse.connect(db, read_only=True) as con:
        return con.execute("SELECT transfer_id, count(*) FROM raw.transfers GROUP BY 1 ORDER BY 1").fetchall()


def _one(fact_id: str) -> dict[str, object]:
    return {"raw.transfers": arrow_rows("raw.transfers", [{"transfer_id": fact_id, "kind": "dataset"}])}


@pytest.fixture
def facts_url(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> str:  # noqa: F811 - the fixture
    url = f"s3://{s3_env}/facts"
    monkeypatch.setenv(factlake_remote.FACTS_URL_ENV, url)
    return url


@pytest.mark.slow
def test_four_remote_writers_each_fact_once(tmp_path: Path, facts_url: str) -> None:
    db = tmp_path / "warehouse.duckdb"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(db), str(w), "50", "1"], env=env)
        for w in range(4)
    ]
    assert [p.wait(timeout=600) for p in procs] == [0, 0, 0, 0]
    warehouse.ingest_pending(db)
    rows = _rows(db)
    assert len(rows) == 200 and {n for _, n in rows} == {1}
    store = open_store(facts_url)
    assert list(store.list_keys("pending/")) == []
    assert not factlake.pending_batches(factlake.lake_dir(db))  # the local lake is drained too


def test_uncommitted_damaged_and_already_ingested_batches(
    tmp_path: Path, facts_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "warehouse.duckdb"
    store = open_store(facts_url)
    good = factlake_remote.write_batch(store, _one("good"))
    bad = factlake_remote.write_batch(store, _one("bad"))
    key = f"pending/{bad}/raw.transfers.parquet"
    store.put_bytes(key, store.get_bytes(key)[:-8])  # cut short after its COMMIT was written
    dead = factlake_remote.write_batch(store, _one("dead"))
    store.delete(f"pending/{dead}/{factlake_remote.COMMIT}")  # a writer that died before COMMIT
    assert factlake_remote.committed_batches(store) == [good, bad]

    warehouse.ingest_pending(db)
    assert _rows(db) == [("good", 1)]
    err = capsys.readouterr().err
    assert f"fact batch {bad} in {store.url}: raw.transfers.parquet does not match its COMMIT" in err
    assert f"rejected/{bad}" in err
    assert sorted(store.list_keys("rejected/")) == [
        f"rejected/{bad}/{factlake_remote.COMMIT}",
        f"rejected/{bad}/raw.transfers.parquet",
    ]
    assert list(store.list_keys("pending/")) == [f"pending/{dead}/raw.transfers.parquet"]  # not stale yet

    # a pull that died after ingesting and before deleting: the batch is only deleted, not re-read
    again = factlake_remote.write_batch(store, _one("again"))
    import duckdb

    with duckdb.connect(str(db)) as con:  # not warehouse.connect: that would pull the batch first
        con.execute(f"INSERT INTO {factlake.MANIFEST} VALUES (?, now()::TIMESTAMP, 1)", [again])
    old = datetime.now(UTC) - timedelta(seconds=factlake_remote.STALE_AFTER_S + 60)
    listed = store.list_objects
    monkeypatch.setattr(
        store, "list_objects", lambda prefix="": (ObjectInfo(i.key, i.size, old) for i in listed(prefix))
    )
    monkeypatch.setattr(factlake_remote, "open_store", lambda url: store)
    with warehouse.connect(db) as con:
        pass
    assert _rows(db) == [("good", 1)]
    assert list(store.list_keys("pending/")) == []  # the ingested batch deleted, the stale files removed
