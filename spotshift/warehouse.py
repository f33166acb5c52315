"""The DuckDB warehouse: the one definition of every raw fact table, and safe connections to it.

Every asset of the pipeline appends facts to tables of schema ``raw``; ``dbt_costs`` turns them
into marts. Columns are defined once, here (:data:`RAW_TABLES`); ``dbt_costs/models/sources.yml``
documents the same columns and a test keeps the two equal.

DuckDB allows one read-write process per file at a time. Dagster runs steps, sensors and the
command line in separate processes, so :func:`connect` retries while another process holds the
lock and every caller keeps its connection short.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spotshift.errors import ConfigError


@dataclass(frozen=True)
class Column:
    """One warehouse column: name, DuckDB type, meaning (with units)."""

    name: str
    type: str
    description: str


def _cols(*specs: tuple[str, str, str]) -> tuple[Column, ...]:
    return tuple(Column(*s) for s in specs)


#: schema ``raw``: append-only facts written by the pipeline. Keys are table names.
RAW_TABLES: dict[str, tuple[Column, ...]] = {
    "price_quotes": _cols(
        ("snapshot_id", "VARCHAR", "Id of the poll that produced the quote (content hash of the snapshot)"),
        ("polled_at", "TIMESTAMP", "Virtual-clock time of the poll (UTC)"),
        ("provider", "VARCHAR", "aws | gcp | azure"),
        ("region", "VARCHAR", "Provider region, e.g. us-east-1"),
        ("zone", "VARCHAR", "Availability zone when the feed gives one, else empty"),
        ("instance_type", "VARCHAR", "Provider instance type, e.g. p4d.24xlarge"),
        ("gpu_model", "VARCHAR", "Canonical GPU model, e.g. A100-40GB"),
        ("gpu_count", "INTEGER", "GPUs per instance"),
        ("market", "VARCHAR", "spot | on_demand"),
        ("price_usd_hour", "DOUBLE", "Instance price, USD per hour"),
        ("effective_gpu_hour_usd", "DOUBLE", "DESIGN §3 effective GPU-hour, USD"),
        ("net_gbps", "DOUBLE", "Instance network bandwidth, Gbit/s"),
        (
            "storage_gbps",
            "DOUBLE",
            "Storage bandwidth the instance can read training data at (documented block-storage throughput, see spotshift/pricing/catalog.py), Gbit/s",
        ),
        ("topology_score", "DOUBLE", "0-10; NVLink multi-GPU >= 7"),
        ("observed_at", "TIMESTAMP", "When the provider published the price (UTC)"),
        ("source", "VARCHAR", "Feed that produced the quote: replay | synthetic | aws | gcp | azure"),
    ),
    "compute_usage": _cols(
        ("usage_id", "VARCHAR", "Unique id of the interval"),
        ("job", "VARCHAR", "Training job name"),
        ("provider", "VARCHAR", "aws | gcp | azure"),
        ("region", "VARCHAR", "Provider region"),
        ("instance_type", "VARCHAR", "Instance type the interval ran on"),
        ("gpu_model", "VARCHAR", "Canonical GPU model"),
        ("market", "VARCHAR", "spot | on_demand"),
        ("started_at", "TIMESTAMP", "Interval start (virtual clock, UTC)"),
        ("ended_at", "TIMESTAMP", "Interval end (virtual clock, UTC)"),
        ("gpu_count", "INTEGER", "GPUs used"),
        ("price_usd_hour", "DOUBLE", "Instance price paid, USD per hour"),
        (
            "list_price_usd_hour",
            "DOUBLE",
            "On-demand (list) price of the same instance and region, USD per hour",
        ),
        ("usd", "DOUBLE", "Cost of the interval, USD"),
        ("ended_in_preemption", "BOOLEAN", "The interval ended because the provider reclaimed the instance"),
        ("steps", "BIGINT", "Training steps completed in the interval (kept or lost)"),
        ("tokens", "BIGINT", "Training tokens processed in the interval"),
        ("run_id", "VARCHAR", "Dagster run or trainer process that produced the interval"),
    ),
    "transfers": _cols(
        ("transfer_id", "VARCHAR", "Unique id of the transfer"),
        ("kind", "VARCHAR", "dataset | checkpoint"),
        ("entity", "VARCHAR", "Dataset name or training job name"),
        ("method", "VARCHAR", "cdc_delta | tensor_delta | full"),
        ("src_location", "VARCHAR", "provider/region the bytes left"),
        ("dst_location", "VARCHAR", "provider/region the bytes arrived in"),
        ("started_at", "TIMESTAMP", "Start of the transfer (UTC)"),
        ("seconds", "DOUBLE", "Wall-clock duration, s"),
        ("bytes_scanned", "BIGINT", "Bytes read to decide what to send"),
        ("bytes_changed", "BIGINT", "Bytes of content the target did not have"),
        ("bytes_full", "BIGINT", "Size of the whole object set (what a full copy would send)"),
        ("chunks_total", "BIGINT", "Chunks (or tensors) in the object set"),
        ("chunks_sent", "BIGINT", "Chunks (or tensors) actually sent"),
        ("bytes_sent", "BIGINT", "Bytes actually sent over the wire"),
        ("egress_usd_per_gb", "DOUBLE", "Egress price applied, USD per GB"),
        ("egress_usd", "DOUBLE", "Egress cost of the bytes sent, USD"),
        ("transfer_amplification", "DOUBLE", "bytes_sent / bytes_changed (NULL when nothing changed)"),
        ("root", "VARCHAR", "Manifest Merkle root or checkpoint content hash that was committed"),
        ("run_id", "VARCHAR", "Dagster run or command that made the transfer"),
    ),
    "checkpoints": _cols(
        ("checkpoint_id", "VARCHAR", "Content hash of the checkpoint"),
        ("job", "VARCHAR", "Training job name"),
        ("step", "BIGINT", "Optimizer step the checkpoint captures"),
        ("tokens", "BIGINT", "Tokens seen up to this step"),
        ("kind", "VARCHAR", "periodic | emergency | final"),
        ("location", "VARCHAR", "provider/region where it was written"),
        ("url", "VARCHAR", "Where the committed checkpoint lives"),
        ("bytes", "BIGINT", "Size of the stored (encrypted) checkpoint"),
        ("created_at", "TIMESTAMP", "Commit-marker time (UTC)"),
        ("serialize_s", "DOUBLE", "Time spent serializing tensors, s"),
        ("encrypt_s", "DOUBLE", "Time spent encrypting, s"),
        ("upload_s", "DOUBLE", "Time spent uploading to the regional store, s"),
        ("total_s", "DOUBLE", "Notice (or trigger) to commit marker, s"),
    ),
    "decisions": _cols(
        ("decision_id", "VARCHAR", "Unique id: job + quote snapshot"),
        ("decided_at", "TIMESTAMP", "Virtual-clock time of the decision (UTC)"),
        ("job", "VARCHAR", "Training job name"),
        ("snapshot_id", "VARCHAR", "Quote snapshot the decision used"),
        ("action", "VARCHAR", "place | move | stay | fallback_on_demand | queue"),
        ("current_location", "VARCHAR", "provider/region the job runs in (empty when not placed)"),
        ("best_location", "VARCHAR", "provider/region of the best-scoring candidate"),
        ("current_usd_hour", "DOUBLE", "Price of the current placement, USD/h"),
        ("best_usd_hour", "DOUBLE", "Price of the best candidate, USD/h"),
        ("remaining_hours", "DOUBLE", "Work left, hours"),
        ("expected_savings_usd", "DOUBLE", "Savings over the remaining runtime if the job moves, USD"),
        ("move_cost_usd", "DOUBLE", "Egress + downtime + staleness + risk of the move, USD"),
        ("margin_usd", "DOUBLE", "Hysteresis margin the savings had to beat, USD"),
        ("deadline_slack_hours", "DOUBLE", "Hours to deadline minus hours of work left"),
        ("reasons", "VARCHAR", "JSON list of human-readable reasons"),
    ),
    "scaling_decisions": _cols(
        ("decision_id", "VARCHAR", "Unique id: endpoint + decision time + action"),
        ("decided_at", "TIMESTAMP", "Virtual-clock time of the decision (UTC)"),
        ("endpoint", "VARCHAR", "Inference endpoint name"),
        ("snapshot_id", "VARCHAR", "Quote snapshot the decision used"),
        ("action", "VARCHAR", "scale_up | scale_down | replace | rebalance | hold"),
        ("demand_tokens_s", "DOUBLE", "Demand now, summed over user regions, tokens/s"),
        (
            "forecast_tokens_s",
            "DOUBLE",
            "Peak demand forecast within the horizon (10 min), summed over user regions, tokens/s",
        ),
        ("target_tokens_s", "DOUBLE", "Capacity granted after headroom and hysteresis, tokens/s"),
        (
            "planned_capacity_tokens_s",
            "DOUBLE",
            "Capacity of the planned replicas (whole replicas), tokens/s",
        ),
        ("spot_replicas", "INTEGER", "Spot replicas in the plan"),
        ("on_demand_replicas", "INTEGER", "On-demand replicas in the plan"),
        ("reserved_replicas", "INTEGER", "Reserved (committed) replicas in the plan"),
        ("launches", "INTEGER", "Replicas the decision starts"),
        ("terminations", "INTEGER", "Replicas the decision stops"),
        ("current_usd_hour", "DOUBLE", "Price of the active replicas before the decision, USD/h"),
        ("planned_usd_hour", "DOUBLE", "Price of the planned replicas, USD/h"),
        (
            "terms",
            "VARCHAR",
            "JSON: per user region demand, forecast, target, floor, eligible and spot locations, plan; the 0.6 rule per location",
        ),
        ("reasons", "VARCHAR", "JSON list of human-readable reasons"),
    ),
    "migrations": _cols(
        ("migration_id", "VARCHAR", "Run key of the migration"),
        ("job", "VARCHAR", "Training job name"),
        ("trigger", "VARCHAR", "place | price | preemption | rollback"),
        ("from_location", "VARCHAR", "provider/region the job left"),
        ("to_location", "VARCHAR", "provider/region the job moved to"),
        ("started_at", "TIMESTAMP", "Start of the migration (UTC)"),
        ("ended_at", "TIMESTAMP", "End of the migration (UTC)"),
        ("status", "VARCHAR", "cut_over | rolled_back | failed"),
        ("downtime_s", "DOUBLE", "Seconds the job made no progress"),
        ("bytes_moved", "BIGINT", "Bytes sent for data and checkpoint"),
        ("egress_usd", "DOUBLE", "Egress cost of the move, USD"),
        ("expected_savings_usd", "DOUBLE", "Savings the decision expected, USD"),
        ("run_id", "VARCHAR", "Dagster run id"),
    ),
    "preemptions": _cols(
        ("notice_id", "VARCHAR", "Id of the preemption notice"),
        ("job", "VARCHAR", "Training job name"),
        ("location", "VARCHAR", "provider/region that was preempted"),
        ("notice_kind", "VARCHAR", "aws_imds | gcp_metadata | azure_scheduled_events | sigterm"),
        ("noticed_at", "TIMESTAMP", "When the trainer saw the notice (UTC)"),
        ("deadline_at", "TIMESTAMP", "When the provider reclaims the instance (UTC)"),
        ("checkpoint_committed_at", "TIMESTAMP", "When the emergency checkpoint's commit marker was written"),
        ("recovered_at", "TIMESTAMP", "When training resumed elsewhere"),
        ("recovery_s", "DOUBLE", "Notice to resumed training, s"),
        ("step", "BIGINT", "Step of the emergency checkpoint"),
    ),
    "shadow_validations": _cols(
        ("validation_id", "VARCHAR", "Unique id"),
        ("job", "VARCHAR", "Training job name"),
        ("source_location", "VARCHAR", "provider/region of the reference run"),
        ("target_location", "VARCHAR", "provider/region of the candidate run"),
        ("checkpoint_id", "VARCHAR", "Checkpoint both runs resumed from"),
        ("steps", "BIGINT", "Steps each side ran"),
        ("max_loss_diff", "DOUBLE", "Max absolute loss difference over the steps"),
        ("max_grad_norm_rel_diff", "DOUBLE", "Max relative gradient-norm difference"),
        ("max_activation_rel_diff", "DOUBLE", "Max relative per-layer activation-statistic difference"),
        ("checkpoint_bytes_equal", "BOOLEAN", "The two resulting checkpoints are byte-identical"),
        ("passed", "BOOLEAN", "All thresholds met"),
        ("reasons", "VARCHAR", "JSON list of failed thresholds"),
        ("validated_at", "TIMESTAMP", "When the comparison finished (UTC)"),
    ),
    "inference_usage": _cols(
        ("window_start", "TIMESTAMP", "Start of the serving window (UTC)"),
        ("window_end", "TIMESTAMP", "End of the serving window (UTC)"),
        ("location", "VARCHAR", "provider/region serving"),
        ("market", "VARCHAR", "spot | on_demand | reserved"),
        ("requests", "BIGINT", "Requests served"),
        ("tokens", "BIGINT", "Tokens served (input + output) in the window"),
        ("slo_ms", "DOUBLE", "Latency SLO, ms"),
        ("p99_ms", "DOUBLE", "Observed P99 latency, ms"),
        ("slo_violations", "BIGINT", "Requests over the SLO"),
        ("usd", "DOUBLE", "Serving cost of the window, USD"),
        ("usd_per_violation", "DOUBLE", "Penalty per SLO violation agreed with the business, USD"),
    ),
}

#: schema ``main``: curated tables written by assets (dbt models live next to them).
MAIN_TABLES: dict[str, tuple[Column, ...]] = {
    "gpu_quotes": RAW_TABLES["price_quotes"],
    "placement_candidates": _cols(
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

_LOCK_MARKERS = ("could not set lock", "conflicting lock", "lock on file", "database is locked")


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(m in text for m in _LOCK_MARKERS)


def open_connection(path: str | Path | None = None, *, read_only: bool = False, timeout_s: float = 120.0):
    """Open a DuckDB connection, waiting (with jittered back-off) while another process holds the file.

    ``path`` defaults to :func:`spotshift.home.warehouse_path`. Raises :class:`ConfigError` when the
    lock is still held after ``timeout_s``.
    """
    import duckdb

    from spotshift.home import warehouse_path

    target = Path(path) if path else warehouse_path()
    if not read_only:
        target.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    delay = 0.02
    while True:
        try:
            return duckdb.connect(str(target), read_only=read_only)
        except duckdb.Error as exc:  # IOException on lock conflicts
            if not _is_lock_error(exc) or time.monotonic() > deadline:
                if _is_lock_error(exc):
                    raise ConfigError(
                        f"warehouse {target}: still locked by another process after {timeout_s:.0f}s"
                    ) from exc
                raise
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 0.5)


@contextlib.contextmanager
def connect(
    path: str | Path | None = None, *, read_only: bool = False, timeout_s: float = 120.0
) -> Iterator[Any]:
    """Context manager around :func:`open_connection` that makes sure the schema exists and closes."""
    con = open_connection(path, read_only=read_only, timeout_s=timeout_s)
    try:
        if not read_only:
            ensure_schema(con)
        yield con
    finally:
        con.close()


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


def columns_of(qualified_table: str) -> tuple[Column, ...]:
    """Columns of ``raw.<table>`` or ``main.<table>``; :class:`ConfigError` for an unknown table."""
    schema, _, table = qualified_table.partition(".")
    registry = {"raw": RAW_TABLES, "main": MAIN_TABLES}.get(schema, {})
    if table not in registry:
        raise ConfigError(f"warehouse table {qualified_table!r} is not defined in spotshift.warehouse")
    return registry[table]


def append_rows(con: Any, qualified_table: str, rows: Iterable[Mapping[str, Any]]) -> int:
    """Append ``rows`` (dicts keyed by column name) to a defined table; missing keys become NULL.

    Unknown keys raise :class:`ConfigError`, so a typo never silently drops a fact. Returns the
    number of rows written. Large batches go through Arrow in one statement.
    """
    import pyarrow as pa

    columns = columns_of(qualified_table)
    names = [c.name for c in columns]
    known = set(names)
    data: dict[str, list[Any]] = {n: [] for n in names}
    count = 0
    for row in rows:
        extra = set(row) - known
        if extra:
            raise ConfigError(f"{qualified_table}: unknown column(s) {sorted(extra)}")
        for n in names:
            data[n].append(row.get(n))
        count += 1
    if not count:
        return 0
    arrow_types = {
        "VARCHAR": pa.string(),
        "DOUBLE": pa.float64(),
        "INTEGER": pa.int32(),
        "BIGINT": pa.int64(),
        "BOOLEAN": pa.bool_(),
        "TIMESTAMP": pa.timestamp("us"),
    }
    batch = pa.table(
        {
            n: pa.array(_naive_utc(data[n], c.type), type=arrow_types[c.type])
            for n, c in zip(names, columns, strict=True)
        }
    )
    con.register("_spotshift_append", batch)
    try:
        cols = ", ".join(f'"{n}"' for n in names)
        con.execute(f"INSERT INTO {qualified_table} ({cols}) SELECT {cols} FROM _spotshift_append")
    finally:
        con.unregister("_spotshift_append")
    return count


def _naive_utc(values: list[Any], duck_type: str) -> list[Any]:
    """Timestamps are stored as naive UTC; convert aware datetimes and ISO strings."""
    if duck_type != "TIMESTAMP":
        return values
    from datetime import UTC, datetime

    out = []
    for v in values:
        if isinstance(v, str):
            v = datetime.fromisoformat(v.replace("Z", "+00:00"))
        if isinstance(v, datetime) and v.tzinfo is not None:
            v = v.astimezone(UTC).replace(tzinfo=None)
        out.append(v)
    return out


def first_row(con: Any, sql: str, params: Sequence[Any] | None = None) -> tuple[Any, ...] | None:
    """The first row of a query, or None. Fetches the whole result, so the connection is free for
    the next statement (DuckDB refuses new work while a result is partly fetched)."""
    rows = con.execute(sql, list(params or [])).fetchall()
    return rows[0] if rows else None
