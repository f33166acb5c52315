"""Warehouse facts written by trainer processes, ingested by whoever collects the trainer.

A trainer never waits on the DuckDB file lock while it trains or inside a preemption window: it
appends rows as JSON lines to ``<workdir>/facts/<pid>.jsonl`` (fsync'ed), and :func:`ingest_facts`
moves them into the warehouse later (the Dagster asset that waited for it, ``spotshift train``, or
the trainer itself once it is done) through :func:`spotshift.warehouse.record_facts`. Ingestion is
idempotent: rows whose key is already in the table are skipped, and ingested files are renamed
``*.done``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from spotshift import warehouse
from spotshift.clock import parse_utc
from spotshift.errors import SpotshiftError
from spotshift.jobs import get_job
from spotshift.placement.inputs import usage_for
from spotshift.warehouse_tables import FACT_KEYS

#: tables a trainer writes facts for -> the columns that identify a fact (the warehouse's FACT_KEYS)
ROW_KEYS: dict[str, tuple[str, ...]] = {
    t: FACT_KEYS[t]
    for t in (
        "raw.checkpoints",
        "raw.compute_usage",
        "raw.preemptions",
        "raw.transfers",
        "raw.shadow_validations",
    )
}


class FactLog:
    """Append-only JSON-lines file of ``{"table": ..., "row": {...}}`` records (thread-safe)."""

    def __init__(self, workdir: str | os.PathLike[str]):
        self.dir = Path(workdir) / "facts"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"{os.getpid()}.jsonl"
        self._lock = threading.Lock()

    def append(self, table: str, row: Mapping[str, Any]) -> None:
        if table not in ROW_KEYS:
            raise ValueError(f"facts for {table} are not supported")
        line = json.dumps({"table": table, "row": dict(row)}, sort_keys=True, default=str) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def pending_fact_files(workdir: str | os.PathLike[str]) -> list[Path]:
    d = Path(workdir) / "facts"
    return sorted(d.glob("*.jsonl")) if d.is_dir() else []


def read_facts(paths: Iterable[Path]) -> dict[str, list[dict[str, Any]]]:
    """Rows per table from fact files (a torn last line of a killed writer is skipped)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for p in paths:
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            out.setdefault(rec["table"], []).append(rec["row"])
    return out


def ingest_facts(
    workdir: str | os.PathLike[str],
    *,
    database: str | os.PathLike[str] | None = None,
    timeout_s: float | None = None,
    con: Any = None,
    live: bool = False,
) -> dict[str, int]:
    """Move pending facts of a trainer working directory into the warehouse; rows written per table.

    Through :func:`spotshift.warehouse.record_facts`: ingestion is exactly-once by each table's
    fact key, and facts that meet a locked warehouse wait in its fact lake (``timeout_s``: how long
    to wait for the lock to ingest them now; default no wait). ``live``: the trainer is
    still running and appending, so its files are read but left in place (rows already in the
    warehouse are skipped by their key). ``con``: an open warehouse connection to use.
    """
    files = pending_fact_files(workdir)
    if not files:
        return {}
    facts = {t: _unique(t, rows) for t, rows in read_facts(files).items()}
    if facts.get("raw.compute_usage"):
        facts["raw.compute_usage"] = _priced(facts["raw.compute_usage"], database, con, timeout_s)
    outcome = warehouse.record_facts(
        facts, database=database, con=con, timeout_s=0.0 if timeout_s is None else timeout_s
    )
    if not live:  # durable in the warehouse or its fact lake from here on
        for p in files:
            os.replace(p, p.with_suffix(".done"))
    return {t: n for t, n in outcome.written.items() if n}


def price_usage_row(con: Any, row: dict[str, Any]) -> dict[str, Any]:
    """``row`` (a ``raw.compute_usage`` fact) priced from the quote in force at its location and
    start when its writer could not price it (no validated quote fitted when the trainer started).

    The quote is what :func:`spotshift.placement.inputs.usage_for` picks from the snapshot in force
    at ``started_at``; the cost is that price x the work the interval's steps stand for (the job's
    hours per step), as a priced trainer bills it. A row that still finds no quote is returned as
    it is: the cost models keep it out of the costs and the report lists it (``fct_unpriced_usage``).
    """
    if row.get("price_usd_hour") is not None or row.get("usd") is not None:
        return row

    try:
        job = get_job(str(row["job"]))
        usage = usage_for(
            con, job, f"{row['provider']}/{row['region']}", as_of=parse_utc(str(row["started_at"]))
        )
    except SpotshiftError:  # the job is no longer declared, or the warehouse has no quotes
        return row
    if not usage:
        return row
    priced = {**row, **{k: v for k, v in usage.items() if v is not None}}
    priced["usd"] = usage["price_usd_hour"] * int(row.get("steps") or 0) * job.hours_per_step
    return priced


def _priced(
    rows: list[dict[str, Any]], database: Any, con: Any, timeout_s: float | None
) -> list[dict[str, Any]]:
    """``rows`` with every unpriced one priced by :func:`price_usage_row` when the warehouse can be read.

    A warehouse that is locked past ``timeout_s`` (or cannot be opened) leaves the rows unpriced:
    they are recorded all the same, and the report lists them (``fct_unpriced_usage``).
    """
    if all(r.get("price_usd_hour") is not None or r.get("usd") is not None for r in rows):
        return rows
    if con is not None:
        return [price_usage_row(con, r) for r in rows]
    try:
        with warehouse.connect(database, timeout_s=timeout_s) as c:
            return [price_usage_row(c, r) for r in rows]
    except SpotshiftError:
        return rows


def _unique(table: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` without repeats of a fact key (a fact appended twice by a retried write)."""
    keys = ROW_KEYS[table]
    seen: set[tuple[Any, ...]] = set()
    out = []
    for r in rows:
        k = tuple(r.get(c) for c in keys)
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out
