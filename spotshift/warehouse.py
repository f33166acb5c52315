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
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spotshift.errors import ConfigError, IntegrityError, NotFoundError


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
        (
            "trigger",
            "VARCHAR",
            "place | price | preemption (a rolled-back move keeps the trigger that started it)",
        ),
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
        # replica preemptions (spotshift serve on spot; job is NULL for them)
        ("endpoint", "VARCHAR", "Inference endpoint of a preempted replica"),
        ("replica_id", "VARCHAR", "Preempted replica"),
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
    "job_baselines": _cols(
        ("job", "VARCHAR", "Training job name"),
        (
            "baseline",
            "VARCHAR",
            "stay_first_spot: the job's first spot placement kept, paying for its preemptions",
        ),
        ("location", "VARCHAR", "provider/region of the job's first spot placement"),
        ("instance_type", "VARCHAR", "Instance type of the job's first spot placement"),
        ("availability", "VARCHAR", "Spot availability the simulation replayed (trace file and its start)"),
        (
            "inputs_digest",
            "VARCHAR",
            "Hash of everything the simulation read (a changed input gives a new row)",
        ),
        ("computed_at", "TIMESTAMP", "Virtual-clock time of the computation (UTC)"),
        ("work_hours", "DOUBLE", "Instance-hours of work simulated"),
        (
            "deadline_hours",
            "DOUBLE",
            "Deadline the simulation's on-demand safety net kept, hours after the start",
        ),
        ("preemptions", "INTEGER", "Preemptions the first spot location would have dealt the job"),
        ("on_demand_hours", "DOUBLE", "Hours the deadline safety net ran on demand"),
        ("compute_usd", "DOUBLE", "Simulated compute cost with the preemptions, USD"),
        ("bound_compute_usd", "DOUBLE", "Simulated compute cost of the same work never preempted, USD"),
        (
            "preemption_factor",
            "DOUBLE",
            "compute_usd / bound_compute_usd: what the preemptions add to the never-preempted bound",
        ),
        ("deadline_met", "BOOLEAN", "The simulated job finished by its deadline"),
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
        # per-replica windows written by `spotshift serve` (NULL in rows of hourly, per-location feeds)
        ("endpoint", "VARCHAR", "Inference endpoint served"),
        ("replica_id", "VARCHAR", "Replica that served the window"),
        ("tokens_in", "BIGINT", "Prompt tokens in the window"),
        ("tokens_out", "BIGINT", "Completion tokens in the window"),
        ("p50_ms", "DOUBLE", "Observed median latency, ms"),
        ("p95_ms", "DOUBLE", "Observed P95 latency, ms"),
        ("replica_hours", "DOUBLE", "Hours the replica was up in the window"),
        ("usd_per_hour", "DOUBLE", "Price of the replica's capacity in its market, USD per hour"),
    ),
    # one row per stage of an inference endpoint's gradual cutover (spotshift.serving.cutover)
    "cutovers": _cols(
        ("cutover_id", "VARCHAR", "Id of the cutover (co-<hex>)"),
        ("endpoint", "VARCHAR", "Inference endpoint moved"),
        ("stage_index", "INTEGER", "Position of the stage (shadow stages first)"),
        ("stage", "VARCHAR", "shadow-<percent> | live-<percent>"),
        ("phase", "VARCHAR", "shadow | live"),
        ("percent", "DOUBLE", "Share of live traffic mirrored (shadow) or routed (live) to the target, %"),
        ("from_locations", "VARCHAR", "provider/region list the endpoint served from (comma-separated)"),
        ("to_location", "VARCHAR", "provider/region the endpoint moves to"),
        ("status", "VARCHAR", "passed | rolled_back | promoted | failed_back | decommissioned"),
        ("started_at", "TIMESTAMP", "Stage start on the virtual clock (UTC)"),
        ("ended_at", "TIMESTAMP", "Stage end on the virtual clock (UTC)"),
        ("windows", "INTEGER", "Analysis windows in the stage"),
        ("source_requests", "BIGINT", "Requests answered by the source in the stage's windows"),
        ("target_requests", "BIGINT", "Requests answered by the target (routed and mirrored)"),
        ("source_p99_ms", "DOUBLE", "Worst window P99 latency of the source, ms"),
        ("target_p99_ms", "DOUBLE", "Worst window P99 latency of the target, ms"),
        ("source_error_rate", "DOUBLE", "Errors / requests of the source"),
        ("target_error_rate", "DOUBLE", "Errors / requests of the target"),
        ("source_usd_per_mtok", "DOUBLE", "Cost per million tokens served by the source, USD"),
        ("target_usd_per_mtok", "DOUBLE", "Cost per million tokens served by the target, USD"),
        ("plan_usd_per_mtok", "DOUBLE", "Cost per million tokens the plan expected of the target, USD"),
        ("mirrored", "BIGINT", "Mirrored requests compared"),
        ("agreement", "DOUBLE", "Share of mirrored answers identical to the source's"),
        ("reason", "VARCHAR", "Why the cutover rolled back (the failed criteria)"),
        (
            "replica_hours_saved",
            "DOUBLE",
            "Decommissioned: replica-hours the source floor saved over the failback window",
        ),
    ),
    "budget_alerts": _cols(
        ("team", "VARCHAR", "Team whose budget the alert is about"),
        ("month", "VARCHAR", "Calendar month (UTC) of the spend, YYYY-MM"),
        ("level", "VARCHAR", "alert (soft level crossed) | limit (monthly limit reached)"),
        ("raised_at", "TIMESTAMP", "Virtual-clock time the crossing was seen (UTC)"),
        ("spent_usd", "DOUBLE", "Month-to-date spend of the team when the alert was raised, USD"),
        ("threshold_usd", "DOUBLE", "The level crossed, USD"),
        ("monthly_usd", "DOUBLE", "The team's monthly limit, USD"),
    ),
    "reconciliations": _cols(
        (
            "reconcile_id",
            "VARCHAR",
            "Unique id: content hash of the billing export and of the estimates it was matched to",
        ),
        ("reconciled_at", "TIMESTAMP", "Wall-clock time of the reconciliation (UTC)"),
        ("export_file", "VARCHAR", "Billing export that was read (path as given)"),
        ("export_sha256", "VARCHAR", "SHA-256 of the billing export"),
        ("billed_rows", "BIGINT", "Usage rows in the billing export"),
        ("matched_rows", "BIGINT", "Billed rows matched to a spotshift usage or transfer row"),
        ("unmatched_billed_rows", "BIGINT", "Billed rows with no spotshift row"),
        ("unmatched_estimate_rows", "BIGINT", "spotshift rows in the export's time range with no billed row"),
        ("billed_usd", "DOUBLE", "EffectiveCost (else BilledCost) of the matched rows, USD"),
        ("estimated_usd", "DOUBLE", "spotshift's estimate of the matched rows, USD"),
        ("matched_hours", "DOUBLE", "Resource-hours of the matched compute rows"),
        ("error_usd_per_hour", "DOUBLE", "Estimate minus billed per matched resource-hour, USD"),
        (
            "mean_abs_error_pct",
            "DOUBLE",
            "Mean absolute estimate-vs-billed error of the matched rows, percent",
        ),
        ("within_goal_share", "DOUBLE", "Share of matched rows whose error is within the 2 % goal"),
        ("detail", "VARCHAR", "JSON: per-row matches and unmatched rows (capped)"),
    ),
    "pool_events": _cols(
        ("event_id", "VARCHAR", "Unique id: pool + position of the event in the pool's ledger"),
        ("pool", "VARCHAR", "Private pool name"),
        (
            "location",
            "VARCHAR",
            "Where the event happened: onprem/<site> of the pool, or the cloud provider/region of a burst",
        ),
        ("event_at", "TIMESTAMP", "Virtual-clock time of the event (UTC)"),
        ("job", "VARCHAR", "Training job name"),
        (
            "event",
            "VARCHAR",
            "submitted | started | waiting | burst | repatriated | finished | move_cut_over | move_rolled_back",
        ),
        ("gpus", "INTEGER", "GPUs of the job (submitted events), else null"),
        ("hours", "DOUBLE", "Hours the finished or repatriated run lasted where it ran"),
        ("cost_usd", "DOUBLE", "What those hours cost there, USD"),
        ("wait_hours", "DOUBLE", "Hours the job waited in the queue (started, burst, waiting)"),
        ("cost_pool_usd", "DOUBLE", "The decision's cost of running the work on the pool, USD"),
        ("cost_cloud_usd", "DOUBLE", "The decision's cost of running it in the cloud, egress included, USD"),
        ("egress_usd", "DOUBLE", "Egress the decision priced (data out of the site, checkpoint back), USD"),
        ("reason", "VARCHAR", "Why the pool waited, burst or repatriated"),
        (
            "run_key",
            "VARCHAR",
            "Run key of the move that carried a start, burst or return out (move_* events; raw.migrations.migration_id)",
        ),
    ),
    "checkpoint_compatibility": _cols(
        ("recorded_at", "TIMESTAMP", "Virtual-clock time the verdict was recorded (UTC)"),
        ("run_id", "VARCHAR", "Run of the move that probed or proved the pair"),
        ("job", "VARCHAR", "Training job name"),
        ("checkpoint_id", "VARCHAR", "Checkpoint the move carried"),
        ("source_location", "VARCHAR", "Where the checkpoint was written (provider/region)"),
        ("target_location", "VARCHAR", "Where the move resumed it (provider/region)"),
        (
            "source_runtime",
            "VARCHAR",
            "Runtime that wrote the checkpoint: torch, python, cuda, nccl versions",
        ),
        (
            "target_runtime",
            "VARCHAR",
            "Runtime of the target location: declared image versions, else the local one",
        ),
        ("source_versions", "VARCHAR", "JSON: the source runtime's fields and where they came from"),
        ("target_versions", "VARCHAR", "JSON: the target runtime's fields, declaration name and image"),
        (
            "devices",
            "VARCHAR",
            "Devices the checkpointed tensors lived on (session checkpoints), comma-separated",
        ),
        ("dtypes", "VARCHAR", "Dtypes of the checkpointed tensors (session checkpoints), comma-separated"),
        ("verdict", "VARCHAR", "probing (the probation is the probe) | proven | known_bad"),
        ("reason", "VARCHAR", "Why: the probe, the matched shadow comparison, or the failure in the target"),
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

#: how long a command waits for another process's lock on the warehouse (env overrides)
DEFAULT_LOCK_TIMEOUT_S = 120.0
LOCK_TIMEOUT_ENV = "SPOTSHIFT_WAREHOUSE_LOCK_TIMEOUT_S"


class WarehouseLockedError(ConfigError):
    """Another process held the warehouse's write lock for longer than the lock timeout."""


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(m in text for m in _LOCK_MARKERS)


def lock_timeout_s() -> float:
    """Seconds to wait for the warehouse lock: ``SPOTSHIFT_WAREHOUSE_LOCK_TIMEOUT_S``, else 120."""
    import os

    from spotshift.errors import check_range

    raw = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_LOCK_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{LOCK_TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    return float(check_range(value, LOCK_TIMEOUT_ENV, low=0, high=86_400, low_inclusive=True))


def resolve_path(path: str | Path | None = None) -> Path:
    """``path``, else the configured warehouse (:func:`spotshift.home.warehouse_path`)."""
    from spotshift.home import warehouse_path

    return Path(path).expanduser().resolve() if path else warehouse_path()


def open_connection(
    path: str | Path | None = None, *, read_only: bool = False, timeout_s: float | None = None
) -> Any:
    """Open a DuckDB connection, waiting (with jittered back-off) while another process holds the file.

    ``path`` defaults to :func:`spotshift.home.warehouse_path`; ``timeout_s`` to :func:`lock_timeout_s`.
    Raises :class:`WarehouseLockedError` when the lock is still held after ``timeout_s``,
    :class:`IntegrityError` when the file is not a usable DuckDB database, :class:`NotFoundError`
    when a read-only open finds no file. Every message is one line naming the file.
    """
    import duckdb

    target = resolve_path(path)
    if read_only and not target.is_file():
        raise NotFoundError(f"warehouse {target} does not exist")
    if not read_only:
        target.parent.mkdir(parents=True, exist_ok=True)
    timeout = lock_timeout_s() if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        try:
            return duckdb.connect(str(target), read_only=read_only)
        except duckdb.Error as exc:  # IOException on lock conflicts
            if not _is_lock_error(exc):
                raise _unusable(target, exc) from None
            if time.monotonic() > deadline:
                raise WarehouseLockedError(
                    f"warehouse {target}: still locked by another process after {timeout:.0f}s"
                ) from None
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 0.5)


def _unusable(target: Path, exc: BaseException) -> IntegrityError:
    text = str(exc)
    if "not a valid DuckDB database" in text:
        why = "is not a valid DuckDB database file (corrupt, or another program's file)"
    elif "serialization" in text.lower() or "version" in text.lower():
        why = "was written by an incompatible DuckDB version"
    else:
        why = f"cannot be opened ({type(exc).__name__})"
    return IntegrityError(f"warehouse {target} {why}; move it aside to start a new one")


@contextlib.contextmanager
def connect(
    path: str | Path | None = None, *, read_only: bool = False, timeout_s: float | None = None
) -> Iterator[Any]:
    """Context manager around :func:`open_connection` that closes the connection.

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
                    raise _unusable(target, exc) from None
                raise
            drained = ingest_lake(con, target, own=own)
    except BaseException:
        con.close()
        raise
    return con, drained


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
        raise ConfigError(f"warehouse table {qualified_table!r} is not defined in spotshift.warehouse")
    return registry[table]


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
    return _insert(con, qualified_table, batch, dedup=False)


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


def _insert(con: Any, qualified_table: str, batch: Any, *, dedup: bool) -> int:
    """INSERT the Arrow ``batch``; with ``dedup`` only rows whose :data:`FACT_KEYS` are not in the table."""
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


# ---- facts: one durable path into the warehouse ------------------------------------------------
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
    from spotshift.factlake import lake_dir

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
    from spotshift import factlake

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
    batch = factlake.write_batch(factlake.lake_dir(target), tables)
    n = sum(b.num_rows for b in tables.values())
    if not ingest:
        return FactsOutcome({}, queued=True, batch=batch)
    try:
        c, drained = _open(target, read_only=False, timeout_s=timeout_s, own=batch.name)
    except WarehouseLockedError:
        return FactsOutcome({}, queued=True, batch=batch)
    except IntegrityError as exc:
        raise IntegrityError(
            f"{exc}; {n} fact row(s) ({', '.join(tables)}) wait in {batch.parent} and are ingested once the "
            "warehouse opens"
        ) from None
    c.close()
    return FactsOutcome(drained.get(batch.name, {}))


def ingest_pending(path: str | Path | None = None, *, timeout_s: float | None = None) -> None:
    """Ingest pending facts before a reader looks (opens for writing only when some are pending)."""
    if pending_facts(path):
        with connect(path, timeout_s=timeout_s):
            pass


def database_file(con: Any) -> Path | None:
    """The file behind a DuckDB connection, or None for an in-memory database."""
    row = first_row(con, "SELECT path FROM duckdb_databases() WHERE database_name = current_database()")
    return Path(row[0]).resolve() if row and row[0] else None


def pending_facts(path: str | Path | None = None) -> list[Path]:
    """Fact batches of the warehouse waiting to be ingested, oldest first."""
    from spotshift.factlake import pending_batches

    return pending_batches(facts_dir(path))


def ingest_lake(
    con: Any, path: str | Path | None = None, *, own: str | None = None
) -> dict[str, dict[str, int]]:
    """Ingest the pending fact batches of the warehouse ``con`` writes to; rows per batch and table.

    See :func:`spotshift.factlake.ingest`. Other writers' batches are announced on stderr when
    they add rows (``own`` names the caller's batch, which is not).
    """
    from spotshift import factlake

    target = resolve_path(path) if path is not None else database_file(con)
    if target is None:
        return {}
    lake = factlake.lake_dir(target)
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


def _ingest_tables(con: Any, tables: Mapping[str, Any]) -> dict[str, int]:
    """Insert each table's new rows (by :data:`FACT_KEYS`) in one transaction."""
    con.execute("BEGIN TRANSACTION")
    try:
        written = {t: _insert(con, t, b, dedup=True) for t, b in tables.items()}
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
