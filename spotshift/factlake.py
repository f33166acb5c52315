"""The fact lake: immutable Parquet batches that many writers append to without waiting on anyone.

DuckDB lets one process write its file at a time. Workers, trainers, replicas and sensors write
facts concurrently, so none of them writes the DuckDB file: a writer lands its rows as one
**batch** in the lake beside the warehouse (``<warehouse>.facts/``), and the DuckDB file is the
analytics copy that ingests the batches whenever a process holds its write lock anyway (every
write connection, ``report``/marts builds before they read, a writer that finds it free).

Layout (``<warehouse>.facts/``)::

    pending/<batch>/<schema.table>.parquet    written, not yet in the analytics copy
    ingested/<batch>/<schema.table>.parquet   in the analytics copy (kept: the copy can be rebuilt)
    rejected/<batch>/                         a batch the tables refuse (moved back to retry)

A batch is one directory, named ``<time ns>-<pid>-<random>`` so that names sort by time. It is
written under a temp name (``.spotshift-tmp.<pid>.<hex>``): each Parquet file fsync'ed, then the
directory renamed into ``pending/`` and ``pending/`` fsync'ed. A writer killed mid-write leaves a
temp directory that no reader lists (removed once its pid is gone), never a partial batch; the
files of a batch are never modified after the rename.

Ingestion is exactly-once: the rows of every pending batch are inserted in one transaction that
also records the batch ids in ``main.ingested_fact_batches``; a row whose fact key
(:data:`spotshift.warehouse_tables.FACT_KEYS`) is already in its table, or that an older batch of the
same round carries, is skipped. Only after the commit are the batch directories moved to
``ingested/``; a crash in between leaves batches the next ingestion finds recorded and just moves.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from spotshift.atomic import TEMP_PREFIX, fsync_dir, pid_alive, temp_path
from spotshift.errors import IntegrityError

LAKE_SUFFIX = ".facts"
MANIFEST = "main.ingested_fact_batches"
#: batches ingested in one transaction (bounds the statement size, not the rows)
ROUND_BATCHES = 2_000


def lake_dir(target: Path) -> Path:
    """The lake of the warehouse file ``target``: ``<target>.facts/`` beside it."""
    return target.with_name(target.name + LAKE_SUFFIX)


def new_batch_name() -> str:
    """A batch name that sorts by time and no other writer picks: ``<time ns>-<pid>-<random>``."""
    return f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}"


def write_batch(lake: Path, tables: Mapping[str, Any]) -> Path:
    """Write ``tables`` (``{"raw.transfers": arrow_table, ...}``) as one pending batch; its path.

    Temp directory, one fsync'ed Parquet file per table, rename into ``pending/``, fsync of
    ``pending/``: the batch appears whole or not at all. Never touches the warehouse file.
    """
    import pyarrow.parquet as pq

    pending = lake / "pending"
    pending.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(pending)
    tmp.mkdir()
    try:
        for table, batch in tables.items():
            path = tmp / f"{table}.parquet"
            with open(path, "wb") as f:
                pq.write_table(batch, f, compression="zstd")
                f.flush()
                os.fsync(f.fileno())
        fsync_dir(tmp)
        final = pending / new_batch_name()
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(pending)
    return final


def pending_batches(lake: Path) -> list[Path]:
    """Pending batch directories, oldest first (temp directories of live or dead writers excluded)."""
    pending = lake / "pending"
    try:
        names = [e.name for e in os.scandir(pending) if not e.name.startswith(".") and e.is_dir()]
    except FileNotFoundError:
        return []
    return [pending / n for n in sorted(names)]


def remove_stale_temp_batches(lake: Path) -> int:
    """Delete the temp directories of writers that died mid-write; how many were removed."""
    removed = 0
    try:
        entries = list(os.scandir(lake / "pending"))
    except FileNotFoundError:
        return 0
    for e in entries:
        if not e.name.startswith(TEMP_PREFIX):
            continue
        pid_text = e.name[len(TEMP_PREFIX) :].split(".", 1)[0]
        if pid_text.isdigit() and not pid_alive(int(pid_text)):
            shutil.rmtree(e.path, ignore_errors=True)
            removed += 1
    return removed


def ensure_manifest(con: Any) -> None:
    """The table of ingested batch ids (one row per batch, written in the ingesting transaction)."""
    con.execute(
        f"CREATE TABLE IF NOT EXISTS {MANIFEST} "
        "(batch_id VARCHAR PRIMARY KEY, ingested_at TIMESTAMP, rows BIGINT)"
    )


def ingest(
    con: Any, lake: Path, tables: Mapping[str, tuple[tuple[str, ...], list[str]]], say: Callable[[str], None]
) -> dict[str, dict[str, int]]:
    """Ingest every pending batch of ``lake`` through the write connection ``con``.

    Returns rows written per batch id and table. A batch the tables refuse (unreadable file,
    columns of another version) is moved to ``rejected/`` with a warning and never blocks the
    others. Callers hold the warehouse's write lock (they have ``con``), so one ingestion runs
    at a time per warehouse.
    """
    remove_stale_temp_batches(lake)
    out: dict[str, dict[str, int]] = {}
    con.execute("SET enable_progress_bar = false")  # ingestion runs inside commands and steps
    ensure_manifest(con)
    while True:
        batches = pending_batches(lake)[:ROUND_BATCHES]
        if not batches:
            break
        done = recorded(con, [b.name for b in batches])
        fresh = [b for b in batches if b.name not in done]
        if fresh:
            try:
                out.update(_ingest_round(con, fresh, tables))
            except _round_errors():
                # one bad batch must not block the others: retry one by one, set aside the bad
                for b in fresh:
                    try:
                        out.update(_ingest_round(con, [b], tables))
                    except _round_errors() as exc:
                        _reject(
                            lake,
                            b,
                            IntegrityError(f"fact batch {b} cannot be ingested ({type(exc).__name__})"),
                            say,
                        )
        moved = [b for b in batches if b.exists()]
        (lake / "ingested").mkdir(exist_ok=True)
        for b in moved:
            os.replace(b, lake / "ingested" / b.name)
        fsync_dir(lake / "ingested")
        fsync_dir(lake / "pending")
    return out


def recorded(con: Any, names: list[str]) -> set[str]:
    """Which of the batch ``names`` the warehouse ``con`` has ingested (manifest ensured)."""
    ensure_manifest(con)
    rows = con.execute(
        f"SELECT batch_id FROM {MANIFEST} WHERE batch_id IN (SELECT unnest(?::VARCHAR[]))", [names]
    ).fetchall()
    return {r[0] for r in rows}


def _round_errors() -> tuple[type[BaseException], ...]:
    import duckdb

    return (duckdb.Error, ValueError, OSError)


def _ingest_round(
    con: Any, batches: list[Path], tables: Mapping[str, tuple[tuple[str, ...], list[str]]]
) -> dict[str, dict[str, int]]:
    """Insert the rows of ``batches`` (oldest first) in one transaction; rows per batch and table."""
    files: dict[str, list[str]] = {}
    out: dict[str, dict[str, int]] = {b.name: {} for b in batches}
    for b in batches:
        for f in sorted(b.glob("*.parquet")):
            table = f.name[: -len(".parquet")]
            if table not in tables:  # a table this version does not know, or not a fact table
                raise ValueError(f"{table} is not a fact table")
            files.setdefault(table, []).append(str(f))
            out[b.name][table] = 0
    con.execute("BEGIN TRANSACTION")
    try:
        for table, paths in files.items():
            keys, columns = tables[table]
            for batch_id, n in _insert_files(con, table, paths, keys, columns).items():
                out[batch_id][table] = n
        con.execute(
            f"INSERT INTO {MANIFEST} SELECT unnest(?::VARCHAR[]), now()::TIMESTAMP, unnest(?::BIGINT[])",
            [list(out), [sum(v.values()) for v in out.values()]],
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return out


def _insert_files(
    con: Any, table: str, paths: list[str], keys: tuple[str, ...], columns: list[str]
) -> dict[str, int]:
    """New rows of ``table`` from the Parquet ``paths``: a key already in the table, or first seen in
    an older batch of ``paths``, is skipped. Rows written per batch id."""
    src = "read_parquet(?::VARCHAR[], union_by_name = true, filename = true)"
    present = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {src}", [paths]).fetchall()}
    cols = [c for c in columns if c in present]
    quoted = ", ".join(f'"{c}"' for c in cols)
    key_cols = ", ".join(f'"{k}"' for k in keys)
    same_key = " AND ".join(f'f."{k}" IS NOT DISTINCT FROM s."{k}"' for k in keys)
    in_table = " AND ".join(f't."{k}" IS NOT DISTINCT FROM s."{k}"' for k in keys)
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _spotshift_new AS
        WITH s AS (SELECT {quoted}, regexp_extract(filename, '([^/\\\\]+)[/\\\\][^/\\\\]+$', 1) AS _batch
                   FROM {src}),
             f AS (SELECT {key_cols}, min(_batch) AS _batch FROM s GROUP BY ALL)
        SELECT s.* FROM s JOIN f ON {same_key} AND f._batch = s._batch
        WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE {in_table})""",
        [paths],
    )
    counts = dict(con.execute("SELECT _batch, count(*) FROM _spotshift_new GROUP BY 1").fetchall())
    con.execute(f"INSERT INTO {table} ({quoted}) SELECT {quoted} FROM _spotshift_new")
    con.execute("DROP TABLE _spotshift_new")
    return {str(k): int(v) for k, v in counts.items()}


def _reject(lake: Path, batch: Path, exc: BaseException, say: Any) -> None:
    rejected = lake / "rejected"
    rejected.mkdir(exist_ok=True)
    os.replace(batch, rejected / batch.name)
    say(f"warning: {exc}; moved to {rejected} (not ingested; move it back into {lake / 'pending'} to retry)")
