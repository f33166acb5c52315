"""Quote snapshots: one poll of a feed, identified by the content hash of its quotes, in the warehouse.

A poll produces a :class:`QuoteSnapshot`. Its ``snapshot_id`` is a hash of the normalized quotes
(not of the poll time), so polling an unchanged market yields the same id and
:func:`store_snapshot` writes nothing the second time: ``raw.price_quotes`` and
``main.gpu_quotes`` are append-only and never hold a snapshot twice.

``raw.price_quotes`` receives every poll; ``main.gpu_quotes`` receives a snapshot only after it
passed the blocking quality checks (:mod:`spotshift.pricing.expectations`), so readers of
``main.gpu_quotes`` (placement, the simulator, ``spotshift quotes cheapest``) see validated prices.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from spotshift.errors import NotFoundError
from spotshift.pricing.expectations import validate_snapshot
from spotshift.pricing.normalize import QUOTE_KEY, NormalizationReport, quote_schema
from spotshift.pricing.quote import QUOTE_FIELDS
from spotshift.warehouse import connect, record_facts

RAW_TABLE = "raw.price_quotes"
CURATED_TABLE = "main.gpu_quotes"


def snapshot_id_of(quotes: Any) -> str:
    """Content hash of a normalized quote frame (order-independent): ``q-`` + 32 hex digits."""
    import polars as pl

    canonical = quotes.select(list(QUOTE_FIELDS)).sort(list(QUOTE_KEY) + ["price_usd_hour", "observed_at"])
    canonical = canonical.with_columns(
        pl.col("observed_at").dt.strftime("%Y-%m-%dT%H:%M:%S%.6f"),
        pl.col("price_usd_hour").round(9),
        pl.col("effective_gpu_hour_usd").round(9),
    )
    digest = hashlib.sha256(canonical.write_csv().encode("utf-8")).hexdigest()
    return f"q-{digest[:32]}"


@dataclass
class QuoteSnapshot:
    """The normalized quotes of one poll, with its id, poll time, feed and normalization report."""

    snapshot_id: str
    polled_at: datetime
    feed: str
    quotes: Any  # polars frame with QUOTE_FIELDS
    report: NormalizationReport = field(default_factory=NormalizationReport)

    @property
    def locations(self) -> list[str]:
        """Sorted distinct ``provider/region`` locations quoted."""
        if self.quotes.height == 0:
            return []
        pairs = self.quotes.select("provider", "region").unique().iter_rows()
        return sorted(f"{p}/{r}" for p, r in pairs)

    def table(self) -> Any:
        """The quotes with ``snapshot_id`` and ``polled_at`` columns (the warehouse row shape)."""
        import polars as pl

        return self.quotes.with_columns(
            pl.lit(self.snapshot_id).alias("snapshot_id"),
            pl.lit(self.polled_at).cast(pl.Datetime("us", "UTC")).alias("polled_at"),
        ).select(["snapshot_id", "polled_at", *QUOTE_FIELDS])


def take_snapshot(feed: Any, now: datetime) -> QuoteSnapshot:
    """Poll ``feed`` at virtual time ``now`` and wrap the normalized quotes as a snapshot."""
    quotes, report = feed.poll(now)
    return QuoteSnapshot(snapshot_id_of(quotes), now, feed.name, quotes, report)


def snapshot_exists(con: Any, table: str, snapshot_id: str) -> bool:
    """Whether ``table`` already holds rows of ``snapshot_id``."""
    rows = con.execute(f"SELECT 1 FROM {table} WHERE snapshot_id = ? LIMIT 1", [snapshot_id]).fetchall()
    return bool(rows)


def store_snapshot(con: Any, snapshot: QuoteSnapshot, table: str = RAW_TABLE) -> int:
    """Append the snapshot to ``table`` unless it is already there; returns the rows written (0 if not).

    Goes through :func:`spotshift.warehouse.record_facts` (keyed by ``snapshot_id``): the check and
    the insert run in one transaction.
    """
    return record_facts({table: snapshot.table().iter_rows(named=True)}, con=con).rows(table)


def read_snapshot(con: Any, snapshot_id: str, table: str = RAW_TABLE, *, missing_ok: bool = False) -> Any:
    """The rows of one snapshot as a polars frame (``snapshot_id``, ``polled_at`` + quote fields).

    An unknown id raises :class:`NotFoundError`, or gives an empty frame with ``missing_ok``
    (an empty poll stores no rows).
    """
    import polars as pl

    cols = ", ".join(f'"{c}"' for c in ["snapshot_id", "polled_at", *QUOTE_FIELDS])
    arrow = con.sql(
        f"SELECT {cols} FROM {table} WHERE snapshot_id = ?", params=[snapshot_id]
    ).to_arrow_table()
    df = pl.from_arrow(arrow)
    if df.height == 0 and not missing_ok:
        raise NotFoundError(f"quote snapshot {snapshot_id} is not in {table}")
    return _typed(df)


def _typed(df: Any) -> Any:
    """Warehouse rows (naive UTC timestamps) -> the frame types of :func:`quote_schema`."""
    import polars as pl

    schema = {"snapshot_id": pl.String, "polled_at": pl.Datetime("us", "UTC"), **quote_schema()}
    out = []
    for name, dtype in schema.items():
        col = pl.col(name)
        if isinstance(dtype, pl.Datetime):
            col = col.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
        out.append(col.cast(dtype))
    return df.select(out)


def snapshot_from_table(con: Any, snapshot_id: str, table: str = RAW_TABLE) -> QuoteSnapshot:
    """Rebuild a :class:`QuoteSnapshot` (without its normalization report) from the warehouse."""
    df = read_snapshot(con, snapshot_id, table)
    quotes = df.select(list(QUOTE_FIELDS))
    report = NormalizationReport(accepted=quotes.height)
    return QuoteSnapshot(snapshot_id, df["polled_at"][0], str(df["source"][0]), quotes, report)


def latest_quotes(con: Any, table: str = CURATED_TABLE) -> Any:
    """The newest snapshot of each source (``replay``, ``synthetic``, ``aws``...) in ``table``, as one frame.

    Raises :class:`NotFoundError` when the table holds no quotes yet.
    """
    import polars as pl

    cols = ", ".join(f'q."{c}"' for c in ["snapshot_id", "polled_at", *QUOTE_FIELDS])
    sql = f"""
        WITH snaps AS (
            SELECT source, snapshot_id, max(polled_at) AS polled_at FROM {table} GROUP BY source, snapshot_id
        ), newest AS (
            SELECT source, arg_max(snapshot_id, polled_at) AS snapshot_id FROM snaps GROUP BY source
        )
        SELECT {cols} FROM {table} q JOIN newest n ON q.snapshot_id = n.snapshot_id AND q.source = n.source
    """
    df = pl.from_arrow(con.sql(sql).to_arrow_table())
    if df.height == 0:
        raise NotFoundError(f"no quotes in {table} yet: run `spotshift quotes poll` or `make demo`")
    return _typed(df)


def cheapest_per_model(quotes: Any, *, gpu_model: str | None = None, market: str | None = None) -> Any:
    """Cheapest quote by effective GPU-hour per GPU model (ties: lower list price, then location)."""
    import polars as pl

    df = quotes
    if gpu_model:
        df = df.filter(pl.col("gpu_model") == gpu_model)
    if market:
        df = df.filter(pl.col("market") == market)
    return (
        df.sort(["effective_gpu_hour_usd", "price_usd_hour", "provider", "region", "zone", "instance_type"])
        .group_by("gpu_model", maintain_order=True)
        .first()
        .sort("gpu_model")
    )


@dataclass
class PollResult:
    """One poll end to end: the snapshot, what was written where, and the quality checks."""

    snapshot: QuoteSnapshot
    raw_rows_written: int
    curated_rows_written: int
    checks: list[Any]  # CheckOutcome
    feed_clock: datetime | None = None  # the time the feed's prices describe (PriceFeed.clock)
    feed_note: str = ""  # PriceFeed.describe: what the poll served (replay: which history, frozen?)

    @property
    def passed(self) -> bool:
        """Every check passed (and so the snapshot is in ``main.gpu_quotes``)."""
        return all(c.passed for c in self.checks)


def poll_into_warehouse(
    feed: Any,
    now: datetime,
    *,
    warehouse_path: Any = None,
    max_quote_age_hours: float,
    spot_tolerance: float = 0.01,
) -> PollResult:
    """Poll ``feed`` once, append to ``raw.price_quotes``, validate, and promote to ``main.gpu_quotes``.

    The same steps as the Dagster assets ``raw_price_quotes`` -> checks -> ``gpu_quotes``, for the
    command line (no Dagster). A snapshot that fails a check stays in ``raw.price_quotes`` only.
    Freshness is measured on the feed's own clock (:meth:`PriceFeed.clock`: ``now`` for live feeds,
    the replayed time for the replay feed).
    """
    snapshot = take_snapshot(feed, now)
    with connect(warehouse_path) as con:
        raw_written = store_snapshot(con, snapshot, RAW_TABLE)
        stored = read_snapshot(con, snapshot.snapshot_id, RAW_TABLE, missing_ok=True)
    feed_clock = feed.clock(now)
    checks = validate_snapshot(
        stored, feed_clock, max_quote_age_hours=max_quote_age_hours, spot_tolerance=spot_tolerance
    )
    curated = 0
    if all(c.passed for c in checks):
        with connect(warehouse_path) as con:
            curated = store_snapshot(
                con, snapshot_from_table(con, snapshot.snapshot_id, RAW_TABLE), CURATED_TABLE
            )
    return PollResult(snapshot, raw_written, curated, checks, feed_clock, feed.describe(now))


def cheapest_table(cheapest: Any, *, markdown: bool = False) -> str:
    """:func:`cheapest_per_model` output as a text table (command line, demo) or Markdown (asset metadata)."""
    head = ("GPU model", "eff $/GPU-h", "$/h", "market", "location", "instance", "topology")
    rows = []
    for r in cheapest.iter_rows(named=True):
        where = f"{r['provider']}/{r['region']}" + (f" ({r['zone']})" if r["zone"] else "")
        rows.append(
            (
                r["gpu_model"],
                f"{r['effective_gpu_hour_usd']:.4f}",
                f"{r['price_usd_hour']:.4f}",
                r["market"],
                where,
                r["instance_type"],
                f"{r['topology_score']:.0f}",
            )
        )
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|---|---|---|---:|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    right = {1, 2, 6}
    return "\n".join(
        "  ".join(
            x.rjust(w) if i in right else x.ljust(w) for i, (x, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in [head, *rows]
    )
