"""Reading the ``dbt_costs`` marts from the warehouse, and knowing when they need a rebuild.

The marts are tables and views in schema ``main`` of the warehouse file, built by ``dbt build``
(Dagster's dbt assets, ``spotshift report``, or a user's own ``dbt build``). ``mart_build_state``
records the row count of every raw table the last build read; raw tables are append-only, so
different live counts mean the marts are stale.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from spotshift.costs.dbt import build_marts, dbt_project_dir, project_changed_since
from spotshift.errors import ConfigError, NotFoundError
from spotshift.home import warehouse_path
from spotshift.progress import NO_PROGRESS
from spotshift.warehouse import first_row, ingest_pending
from spotshift.warehouse_connection import open_connection
from spotshift.warehouse_schema import RAW_TABLES

#: the relations ``spotshift report`` reads
REPORT_MARTS: tuple[str, ...] = (
    "mart_cost_metrics",
    "mart_savings",
    "fct_migrations",
    "fct_data_transfer",
    "focus_cost_and_usage",
    "fct_unpriced_usage",
    "mart_build_state",
)

MartsState = Literal["missing", "stale", "fresh"]


def resolve_warehouse(warehouse: str | os.PathLike[str] | None = None) -> Path:
    """The warehouse file: ``warehouse`` when given, else :func:`spotshift.home.warehouse_path`."""
    return Path(warehouse).expanduser().resolve() if warehouse else warehouse_path()


def existing_relations(con: Any) -> set[str]:
    """Names of the tables and views of schema ``main``."""
    rows = con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
    ).fetchall()
    return {r[0] for r in rows}


@contextlib.contextmanager
def open_marts(
    warehouse: str | os.PathLike[str] | None = None, *, require: Iterable[str] = REPORT_MARTS
) -> Iterator[Any]:
    """A read-only connection to a warehouse whose ``require`` relations exist.

    :class:`NotFoundError` when the file or any required mart is missing (the message says how
    to build them).
    """
    path = resolve_warehouse(warehouse)
    if not path.is_file():
        raise NotFoundError(
            f"warehouse {path} does not exist: run `make demo` (or the pipeline) first, or set SPOTSHIFT_WAREHOUSE"
        )
    ingest_pending(path)  # facts queued behind a lock belong in what is read
    con = open_connection(path, read_only=True)
    try:
        missing = sorted(set(require) - existing_relations(con))
        if missing:
            raise NotFoundError(
                f"warehouse {path} has no {', '.join(missing)}: build the marts first "
                "(`spotshift report`, or materialize the dbt_costs assets in Dagster)"
            )
        yield con
    finally:
        con.close()


def marts_state(warehouse: str | os.PathLike[str] | None = None) -> tuple[MartsState, str]:
    """``("missing"|"stale"|"fresh", reason)`` of the report marts of ``warehouse``."""
    path = resolve_warehouse(warehouse)
    if not path.is_file():
        return "missing", f"warehouse {path} does not exist"
    ingest_pending(path)  # queued facts make the marts stale
    con = open_connection(path, read_only=True)
    try:
        missing = sorted(set(REPORT_MARTS) - existing_relations(con))
        if missing:
            return "missing", f"no {', '.join(missing)}"
        built = dict(con.execute("SELECT raw_table, row_count FROM mart_build_state").fetchall())
        built_at = first_row(con, "SELECT max(built_at) FROM mart_build_state")[0]
        raw = {
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'raw'"
            ).fetchall()
        }
        changed = []
        for table in RAW_TABLES:
            live = first_row(con, f"SELECT count(*) FROM raw.{table}")[0] if table in raw else 0
            if built.get(table) != live:
                changed.append(f"raw.{table} {built.get(table, 0)} -> {live} rows")
        if changed:
            return "stale", "; ".join(changed)
        edited = _project_changed_since(built_at)
        if edited:
            return "stale", f"dbt project changed since the last build ({edited})"
        return "fresh", "marts match the raw facts"
    finally:
        con.close()


def _project_changed_since(built_at: Any) -> str | None:
    """A dbt_costs file modified after ``built_at`` (naive UTC), or None."""
    from datetime import UTC

    if built_at is None:
        return "never built"
    try:
        project = dbt_project_dir()
    except ConfigError:
        return None
    return project_changed_since(built_at.replace(tzinfo=UTC).timestamp(), project)


def ensure_marts(
    warehouse: str | os.PathLike[str] | None = None,
    *,
    mode: Literal["auto", "always", "never"] = "auto",
    warnings: list[str] | None = None,
    progress: Any = None,
) -> tuple[bool, str]:
    """Build the marts with dbt when needed; returns ``(built, reason)``.

    ``auto`` builds when the marts are missing or stale, ``always`` builds, ``never`` only checks
    that they exist (:class:`NotFoundError` otherwise) and leaves stale marts alone. With a
    ``warnings`` list, data tests run as warnings (a problem in the facts never aborts the build)
    and the list receives one line per test that found rows.
    """
    if mode not in ("auto", "always", "never"):
        raise ConfigError(f"unknown build mode {mode!r}")
    path = resolve_warehouse(warehouse)
    if not path.is_file():
        raise NotFoundError(
            f"warehouse {path} does not exist: run `make demo` (or the pipeline) first, or set SPOTSHIFT_WAREHOUSE"
        )
    state, reason = marts_state(path)
    if mode == "never":
        if state == "missing":
            with open_marts(path):  # raises the NotFoundError that says how to build
                pass
        return False, f"marts {state}: {reason}"
    if mode == "auto" and state == "fresh":
        return False, reason

    run = build_marts(path, data_tests_warn=warnings is not None, progress=progress or NO_PROGRESS)
    if warnings is not None:
        warnings.extend(run.warnings())
    return True, f"rebuilt ({reason})" if mode == "auto" else "rebuilt on request"


def fetch_dicts(con: Any, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    """Rows of a query as dicts keyed by column name."""
    cur = con.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
