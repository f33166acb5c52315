"""The DuckDB warehouse as a Dagster resource (same file the dbt profile reads via SPOTSHIFT_WAREHOUSE)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from dagster_duckdb import DuckDBResource

from spotshift import warehouse


class WarehouseResource(DuckDBResource):
    """``DuckDBResource`` that waits for the file lock held by other processes and creates the raw schema."""

    lock_timeout_s: float = 120.0

    @contextmanager
    def get_connection(self) -> Iterator[Any]:  # type: ignore[override]
        with warehouse.connect(self.database, timeout_s=self.lock_timeout_s) as con:
            yield con

    def append(self, table: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Record fact rows of ``raw.<name>``/``main.<name>`` (:func:`spotshift.warehouse.record_facts`:
        a Parquet batch in the fact lake first, exactly-once ingestion); never waits for the lock;
        rows written now (0 when they wait in the lake for the next write connection)."""
        return warehouse.record_facts({table: rows}, database=self.database, timeout_s=0.0).rows(table)
