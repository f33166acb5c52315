"""The warehouse's tables as code: the curated ``main`` tables, the columns that identify a fact,
schema creation, and rows turned into typed Arrow batches and inserted.

The raw fact tables are defined in :mod:`spotshift.warehouse_schema`; connections, the fact lake
and the one path every fact writer takes are in :mod:`spotshift.warehouse`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from spotshift.errors import ConfigError
from spotshift.warehouse_schema import RAW_TABLES, Column, define_columns

#: schema ``main``: curated tables written by assets (dbt models live next to them).
MAIN_TABLES: dict[str, tuple[Column, ...]] = {
    "gpu_quotes": RAW_TABLES["price_quotes"],
    "placement_candidates": define_columns(
        ("decision_id", "VARCHAR", "raw.decisions row this candidate was scored for"),
        ("job", "VARCHAR", "Training job name"),
        ("snapshot_id", "VARCHAR", "Quote snapshot the candidate came from"),
        ("decided_at", "TIMESTAMP", "Virtual-clock time of the decision (UTC)"),
        ("rank", "INTEGER", "1 = best eligible candidate; NULL when rejected"),
        ("location", "VARCHAR", "provider/region"),
        ("zone", "VARCHAR", "Zone when the quote has one"),
        ("market", "VARCHAR", "spot | on_demand"),
        ("instance_type", "VARCHAR", "Provider instance type"),
        ("gpu_model", "VARCHAR", "Canonical GPU model"),
        ("gpu_count", "INTEGER", "GPUs per instance"),
        ("price_usd_hour", "DOUBLE", "Instance price, USD per hour"),
        ("effective_gpu_hour_usd", "DOUBLE", "DESIGN §3 effective GPU-hour, USD"),
        (
            "transfer_penalty_gpu_hour_usd",
            "DOUBLE",
            "Egress of missing data + checkpoint, amortized, USD per GPU-hour",
        ),
        ("locality_bonus_gpu_hour_usd", "DOUBLE", "Checkpoint-locality bonus, USD per GPU-hour"),
        ("score_gpu_hour_usd", "DOUBLE", "Seed score: effective + penalty - bonus, USD per GPU-hour"),
        ("risk_gpu_hour_usd", "DOUBLE", "Expected preemption cost, USD per GPU-hour (spot only)"),
        ("expected_gpu_hour_usd", "DOUBLE", "Score + risk: the ranking key, USD per GPU-hour"),
        ("dataset_missing_bytes", "BIGINT", "Dataset bytes not yet in that location"),
        ("checkpoint_missing_bytes", "BIGINT", "Latest-checkpoint bytes not yet in that location"),
        ("egress_usd", "DOUBLE", "Egress to bring the missing bytes, USD"),
        ("transfer_hours", "DOUBLE", "Time to copy the missing bytes, hours"),
        ("amortization_hours", "DOUBLE", "Hours the transfer penalty is spread over"),
        ("preemptions_per_hour", "DOUBLE", "Estimated spot preemption rate of the location"),
        ("eligible", "BOOLEAN", "Passed every rule (location, GPU, topology, price cap, capacity)"),
        ("rejected_reasons", "VARCHAR", "Why the candidate was rejected ('; '-separated)"),
        ("chosen", "BOOLEAN", "The decision's target"),
    ),
}

#: per table, the columns that identify a fact: ingesting a fact whose key is already in the table
#: writes nothing (re-recorded decisions, re-polled snapshots, a batch ingested just before a crash)
FACT_KEYS: dict[str, tuple[str, ...]] = {
    "raw.price_quotes": ("snapshot_id",),
    "main.gpu_quotes": ("snapshot_id",),
    "raw.compute_usage": ("usage_id",),
    "raw.transfers": ("transfer_id",),
    "raw.checkpoints": ("checkpoint_id", "url"),
    "raw.decisions": ("decision_id",),
    "main.placement_candidates": ("decision_id",),
    "raw.migrations": ("migration_id", "status", "run_id"),
    "raw.preemptions": ("notice_id",),
    "raw.job_baselines": ("job", "baseline", "inputs_digest"),
    "raw.shadow_validations": ("validation_id",),
    "raw.inference_usage": ("window_start", "location", "market", "replica_id"),
    "raw.scaling_decisions": ("decision_id",),
    "raw.cutovers": ("cutover_id", "stage", "status"),
    "raw.budget_alerts": ("team", "month", "level"),
    "raw.reconciliations": ("reconcile_id",),
    "raw.pool_events": ("event_id",),
    "raw.checkpoint_compatibility": ("run_id", "source_runtime", "target_runtime", "verdict"),
}


def create_table_sql(schema: str, table: str, columns: Sequence[Column]) -> str:
    """``CREATE TABLE IF NOT EXISTS`` statement for one table."""
    body = ", ".join(f'"{c.name}" {c.type}' for c in columns)
    return f"CREATE TABLE IF NOT EXISTS {schema}.{table} ({body})"


def ensure_schema(con: Any) -> None:
    """Create schema ``raw`` and every table of :data:`RAW_TABLES` and :data:`MAIN_TABLES` if missing."""
    con.execute("CREATE SCHEMA IF NOT EXISTS raw")
    for table, columns in RAW_TABLES.items():
        con.execute(create_table_sql("raw", table, columns))
    for table, columns in MAIN_TABLES.items():
        con.execute(create_table_sql("main", table, columns))
    _add_missing_columns(con)


def _add_missing_columns(con: Any) -> None:
    """Columns added to a table after a warehouse was created are appended (NULL in older rows)."""
    have = set(
        con.execute("SELECT table_schema, table_name, column_name FROM information_schema.columns").fetchall()
    )
    for schema, tables in (("raw", RAW_TABLES), ("main", MAIN_TABLES)):
        for table, columns in tables.items():
            for c in columns:
                if (schema, table, c.name) not in have:
                    con.execute(f'ALTER TABLE {schema}.{table} ADD COLUMN IF NOT EXISTS "{c.name}" {c.type}')


def columns_of(qualified_table: str) -> tuple[Column, ...]:
    """Columns of ``raw.<table>`` or ``main.<table>``; :class:`ConfigError` for an unknown table."""
    schema, _, table = qualified_table.partition(".")
    registry = {"raw": RAW_TABLES, "main": MAIN_TABLES}.get(schema, {})
    if table not in registry:
        raise ConfigError(
            f"warehouse table {qualified_table!r} is not defined in spotshift.warehouse_schema or warehouse_tables"
        )
    return registry[table]


def arrow_rows(qualified_table: str, rows: Iterable[Mapping[str, Any]]) -> Any:
    """``rows`` as an Arrow table with the warehouse's column types (:class:`ConfigError` for unknown
    tables or columns)."""
    import pyarrow as pa

    columns = columns_of(qualified_table)
    names = [c.name for c in columns]
    known = set(names)
    data: dict[str, list[Any]] = {n: [] for n in names}
    for row in rows:
        extra = set(row) - known
        if extra:
            raise ConfigError(f"{qualified_table}: unknown column(s) {sorted(extra)}")
        for n in names:
            data[n].append(row.get(n))
    return pa.table(
        {
            n: pa.array(_naive_utc(data[n], c.type), type=_ARROW_TYPES[c.type]())
            for n, c in zip(names, columns, strict=True)
        }
    )


def _pa(name: str) -> Any:
    def make() -> Any:
        import pyarrow as pa

        return pa.timestamp("us") if name == "timestamp" else getattr(pa, name)()

    return make


_ARROW_TYPES = {
    "VARCHAR": _pa("string"),
    "DOUBLE": _pa("float64"),
    "INTEGER": _pa("int32"),
    "BIGINT": _pa("int64"),
    "BOOLEAN": _pa("bool_"),
    "TIMESTAMP": _pa("timestamp"),
}


def insert_batch(con: Any, qualified_table: str, batch: Any, *, dedup: bool) -> int:
    """INSERT the Arrow ``batch`` into a defined table; with ``dedup`` only rows whose :data:`FACT_KEYS` are not in the table."""
    present = set(batch.column_names)
    names = [c.name for c in columns_of(qualified_table) if c.name in present]
    unknown = present - {c.name for c in columns_of(qualified_table)}
    if unknown:
        raise ConfigError(f"{qualified_table}: unknown column(s) {sorted(unknown)}")
    cols = ", ".join(f'"{n}"' for n in names)
    where = ""
    if dedup:
        keys = FACT_KEYS[qualified_table]
        match = " AND ".join(f't."{k}" IS NOT DISTINCT FROM s."{k}"' for k in keys)
        where = f" WHERE NOT EXISTS (SELECT 1 FROM {qualified_table} t WHERE {match})"
    view = f"_spotshift_append_{threading.get_ident()}"
    con.register(view, batch)
    try:
        row = con.execute(
            f"INSERT INTO {qualified_table} ({cols}) SELECT {cols} FROM {view} s{where}"
        ).fetchone()
    finally:
        con.unregister(view)
    return int(row[0]) if row else batch.num_rows


def _naive_utc(values: list[Any], duck_type: str) -> list[Any]:
    """Timestamps are stored as naive UTC; convert aware datetimes and ISO strings."""
    if duck_type != "TIMESTAMP":
        return values
    out = []
    for v in values:
        if isinstance(v, str):
            v = datetime.fromisoformat(v.replace("Z", "+00:00"))
        if isinstance(v, datetime) and v.tzinfo is not None:
            v = v.astimezone(UTC).replace(tzinfo=None)
        out.append(v)
    return out
