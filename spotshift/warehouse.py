"""The DuckDB warehouse: connections, and the one durable path every fact writer takes.

Every asset of the pipeline appends facts to tables of schema ``raw``; ``dbt_costs`` turns them
into marts. The tables are defined in :mod:`spotshift.warehouse_schema` (``raw``) and
:mod:`spotshift.warehouse_tables` (``main``, fact keys, Arrow batches); opening the file safely is
:mod:`spotshift.warehouse_connection`.

DuckDB allows one read-write process per file at a time. Dagster runs steps, sensors and the
command line in separate processes, so :func:`connect` retries while another process holds the
lock and every caller keeps its connection short.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spotshift import factlake, factlake_remote
from spotshift.errors import ConfigError, IntegrityError, SpotshiftError
from spotshift.factlake import lake_dir, pending_batches
from spotshift.warehouse_connection import WarehouseLockedError, open_connection, resolve_path, unusable
from spotshift.warehouse_tables import FACT_KEYS, arrow_rows, columns_of, ensure_schema, insert_batch


@contextlib.contextmanager
def connect(
    path: str | Path | None = None, *, read_only: bool = False, timeout_s: float | None = None
) -> Iterator[Any]:
    """Context manager around :func:`~spotshift.warehouse_connection.open_connection` that closes the connection.

    A write connection also makes sure the schema exists and first ingests the facts queued in
    the pending batches of its fact lake (see :func:`record_facts`), saying so on stderr.
    """
    con, _ = _open(path, read_only=read_only, timeout_s=timeout_s)
    try:
        yield con
    finally:
        con.close()


def _open(
    path: str | Path | None, *, read_only: bool, timeout_s: float | None, own: str | None = None
) -> tuple[Any, dict[str, dict[str, int]]]:
    """A connection (schema ensured and fact lake ingested when writable) and what the drain wrote."""
    target = resolve_path(path)
    con = open_connection(target, read_only=read_only, timeout_s=timeout_s)
    drained: dict[str, dict[str, int]] = {}
    try:
        if not read_only:
            try:
                ensure_schema(con)
            except Exception as exc:
                import duckdb

                if isinstance(exc, duckdb.Error):
                    raise unusable(target, exc) from None
                raise
            drained = ingest_lake(con, target, own=own)
    except BaseException:
        con.close()
        raise
    return con, drained


def append_rows(con: Any, qualified_table: str, rows: Iterable[Mapping[str, Any]]) -> int:
    """Append ``rows`` (dicts keyed by column name) to a defined table; missing keys become NULL.

    The low-level insert: the pipeline's fact writers go through :func:`record_facts` (durable
    fact lake, exactly-once ingestion); this is for seeding fixture and test warehouses. Unknown keys
    raise :class:`ConfigError`, so a typo never silently drops a fact. Returns the number of rows
    written. Large batches go through Arrow in one statement.
    """
    batch = arrow_rows(qualified_table, rows)
    if not batch.num_rows:
        return 0
    return insert_batch(con, qualified_table, batch, dedup=False)


_INGEST_LOCK = threading.Lock()  # threads of one process share DuckDB's per-process write access


@dataclass(frozen=True)
class FactsOutcome:
    """What :func:`record_facts` did: rows written to the analytics copy now, or queued in the lake."""

    written: dict[str, int]
    queued: bool = False
    batch: Path | None = None

    def rows(self, table: str) -> int:
        """Rows of ``table`` written by this call (0 when queued or already present)."""
        return self.written.get(table, 0)


def facts_dir(path: str | Path | None = None) -> Path:
    """The fact lake of a warehouse: ``<warehouse file>.facts/`` beside it (see :mod:`spotshift.factlake`)."""
    return lake_dir(resolve_path(path))


def record_facts(
    facts: Mapping[str, Iterable[Mapping[str, Any]]],
    *,
    database: str | Path | None = None,
    con: Any = None,
    timeout_s: float | None = 0.0,
    ingest: bool = True,
) -> FactsOutcome:
    """Record fact rows (``{"raw.transfers": [row, ...], ...}``); never lose them, never wait.

    The one path every fact writer takes. The rows are validated (:class:`ConfigError` for an
    unknown table or column), then:

    * ``con`` given (the caller holds the write lock, e.g. a sensor or an asset mid-transaction):
      inserted directly, in one transaction that skips rows whose :data:`FACT_KEYS` are already in
      their table. A failed insert raises to the caller, whose source of the facts is still intact.
    * otherwise the rows land as one immutable Parquet batch in the warehouse's fact lake
      (:mod:`spotshift.factlake`: temp directory + fsync + rename), durable before this returns.
      Then, with ``ingest``, if the warehouse's write lock can be had within ``timeout_s``
      (default 0: one try, no waiting), the pending batches are ingested into it at once;
      otherwise the batch stays pending (``queued``) for the next process that opens the
      warehouse for writing (every write connection, and readers of the marts, ingest first).
      Many processes can record at the same time: none waits on DuckDB's single-writer lock.
      High-rate writers pass ``ingest=False``: they never open the DuckDB file at all.

    Ingestion is exactly-once by batch id and fact key; the tables of one call land together. A
    warehouse file that cannot be opened raises :class:`IntegrityError`; the facts wait in the lake.
    """
    tables = {t: arrow_rows(t, rows) for t, rows in facts.items()}
    for t in tables:
        if t not in FACT_KEYS:
            raise ConfigError(f"{t} is not a fact table (no identifying columns in FACT_KEYS)")
    tables = {t: b for t, b in tables.items() if b.num_rows}
    if not tables:
        return FactsOutcome({})
    if con is not None:
        return FactsOutcome(_ingest_tables(con, tables))
    target = resolve_path(database)
    store = factlake_remote.facts_store()
    if store is not None:  # a lake every machine reaches (SPOTSHIFT_FACTS_URL)
        name, batch, where = factlake_remote.write_batch(store, tables), None, f"{store.url}/pending"
    else:
        batch = factlake.write_batch(factlake.lake_dir(target), tables)
        name, where = batch.name, str(batch.parent)
    n = sum(b.num_rows for b in tables.values())
    if not ingest:
        return FactsOutcome({}, queued=True, batch=batch)
    try:
        c, drained = _open(target, read_only=False, timeout_s=timeout_s, own=name)
    except WarehouseLockedError:
        return FactsOutcome({}, queued=True, batch=batch)
    except IntegrityError as exc:
        raise IntegrityError(
            f"{exc}; {n} fact row(s) ({', '.join(tables)}) wait in {where} and are ingested once the "
            "warehouse opens"
        ) from None
    c.close()
    return FactsOutcome(drained.get(name, {}))


def ingest_pending(path: str | Path | None = None, *, timeout_s: float | None = None) -> None:
    """Ingest pending facts before a reader looks (opens for writing only when some are pending,
    here or in the store of ``SPOTSHIFT_FACTS_URL``)."""
    store = factlake_remote.facts_store()
    if pending_facts(path) or (store is not None and factlake_remote.committed_batches(store)):
        with connect(path, timeout_s=timeout_s):
            pass


def database_file(con: Any) -> Path | None:
    """The file behind a DuckDB connection, or None for an in-memory database."""
    row = first_row(con, "SELECT path FROM duckdb_databases() WHERE database_name = current_database()")
    return Path(row[0]).resolve() if row and row[0] else None


def pending_facts(path: str | Path | None = None) -> list[Path]:
    """Fact batches of the warehouse waiting to be ingested, oldest first."""
    return pending_batches(facts_dir(path))


def ingest_lake(
    con: Any, path: str | Path | None = None, *, own: str | None = None
) -> dict[str, dict[str, int]]:
    """Ingest the pending fact batches of the warehouse ``con`` writes to; rows per batch and table.

    See :func:`spotshift.factlake.ingest`. Other writers' batches are announced on stderr when
    they add rows (``own`` names the caller's batch, which is not).
    """
    target = resolve_path(path) if path is not None else database_file(con)
    if target is None:
        return {}
    lake = factlake.lake_dir(target)
    _pull_remote(con, lake)
    if not (lake / "pending").is_dir():
        return {}
    tables = {t: (keys, [c.name for c in columns_of(t)]) for t, keys in FACT_KEYS.items()}
    with _INGEST_LOCK:
        out = factlake.ingest(con, lake, tables, _say)
    others = {k: v for k, v in out.items() if k != own}
    rows = sum(sum(v.values()) for v in others.values())
    if rows:
        _say(f"ingested {len(others)} pending fact batch(es) ({rows} new row(s)) from {lake} into {target}")
    return out


def _pull_remote(con: Any, lake: Path) -> None:
    """Bring the committed batches of ``SPOTSHIFT_FACTS_URL`` into ``lake`` (a store that fails is
    one warning line: its facts wait there for the next write connection)."""
    try:
        store = factlake_remote.facts_store()
        if store is not None:
            with _INGEST_LOCK:
                factlake_remote.pull(store, lake, lambda names: factlake.recorded(con, names), _say)
    except SpotshiftError as exc:
        _say(f"warning: facts in {os.environ.get(factlake_remote.FACTS_URL_ENV, '')!s} not pulled: {exc}")


def _ingest_tables(con: Any, tables: Mapping[str, Any]) -> dict[str, int]:
    """Insert each table's new rows (by :data:`FACT_KEYS`) in one transaction."""
    con.execute("BEGIN TRANSACTION")
    try:
        written = {t: insert_batch(con, t, b, dedup=True) for t, b in tables.items()}
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return written


def _say(message: str) -> None:
    """One line on stderr (pending facts are the user's data: they are told whenever they change hands)."""
    import sys

    sys.stderr.write(f"spotshift: {' '.join(message.split())}\n")
    sys.stderr.flush()


def first_row(con: Any, sql: str, params: Sequence[Any] | None = None) -> tuple[Any, ...] | None:
    """The first row of a query, or None. Fetches the whole result, so the connection is free for
    the next statement (DuckDB refuses new work while a result is partly fetched)."""
    rows = con.execute(sql, list(params or [])).fetchall()
    return rows[0] if rows else None
