"""Raw provider prices -> validated :class:`~spotshift.pricing.quote.NormalizedGPUQuote` rows.

Every feed turns its native format into a *raw price frame* (:data:`RAW_PRICE_SCHEMA`: one row per
instance type, place and market, in the provider's currency) and hands it to
:func:`normalize_frame`, which joins the GPU catalog, prices the effective GPU-hour (DESIGN §3),
and rejects what cannot be trusted with a counted reason (:data:`REJECT_REASONS`). Nothing here
raises on bad *values*: a poll never crashes on one odd price or an instance type we do not know;
it reports them. Bad *structure* (missing fields, wrong types) is the parsers' job and raises
:class:`~spotshift.errors.InputError`.

The work is vectorized in polars, so normalizing a million history rows takes about a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from spotshift.pricing.catalog import canonical_gpu_model, load_catalog
from spotshift.pricing.quote import MARKETS, QUOTE_FIELDS, NormalizedGPUQuote

#: a quote above this many USD per GPU-hour is a feed error, not a price (the dearest list
#: price of any catalog GPU is ~$14/GPU-hour)
MAX_GPU_HOUR_USD = 200.0

#: why a raw price was refused, in the order they are tested
REJECT_REASONS = (
    "unknown_market",
    "non_usd",
    "not_a_number",
    "negative",
    "zero",
    "unknown_instance_type",
    "absurd",
)

#: columns of a quote that identify it within one snapshot
QUOTE_KEY = ("provider", "region", "zone", "instance_type", "market")


def raw_price_schema() -> dict[str, Any]:
    """Column -> polars dtype of a raw price frame (what parsers produce)."""
    import polars as pl

    return {
        "provider": pl.String,
        "region": pl.String,
        "zone": pl.String,
        "instance_type": pl.String,
        "market": pl.String,
        "price_per_hour": pl.Float64,
        "currency": pl.String,
        "observed_at": pl.Datetime("us", "UTC"),
        "source": pl.String,
        "gpu_model_hint": pl.String,
    }


def quote_schema() -> dict[str, Any]:
    """Column -> polars dtype of a normalized quote frame (exactly :data:`QUOTE_FIELDS`, in order)."""
    import polars as pl

    schema = {
        "provider": pl.String,
        "region": pl.String,
        "zone": pl.String,
        "instance_type": pl.String,
        "gpu_model": pl.String,
        "gpu_count": pl.Int32,
        "market": pl.String,
        "price_usd_hour": pl.Float64,
        "effective_gpu_hour_usd": pl.Float64,
        "net_gbps": pl.Float64,
        "storage_gbps": pl.Float64,
        "topology_score": pl.Float64,
        "observed_at": pl.Datetime("us", "UTC"),
        "source": pl.String,
    }
    assert tuple(schema) == QUOTE_FIELDS
    return schema


def raw_price_frame(rows: list[dict[str, Any]]) -> Any:
    """Build a raw price frame from dicts (missing ``zone``/``gpu_model_hint`` become empty/null)."""
    import polars as pl

    schema = raw_price_schema()
    if not rows:
        return pl.DataFrame(schema=schema)
    cols = {name: [r.get(name) for r in rows] for name in schema}
    cols["zone"] = [z or "" for z in cols["zone"]]
    return pl.DataFrame(cols, schema=schema)


@dataclass
class NormalizationReport:
    """What a normalization (or a whole poll) accepted and refused, and why."""

    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    unknown_instance_types: dict[str, int] = field(default_factory=dict)
    superseded: int = 0  # older prices of the same key replaced by a newer one in the same input
    gpu_model_disagreements: dict[str, int] = field(default_factory=dict)

    @property
    def rejected_total(self) -> int:
        """All refused prices, whatever the reason."""
        return sum(self.rejected.values())

    def merge(self, other: NormalizationReport) -> NormalizationReport:
        """The sum of two reports (feeds that normalize in several batches)."""

        def add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
            out = dict(a)
            for k, v in b.items():
                out[k] = out.get(k, 0) + v
            return out

        return NormalizationReport(
            accepted=self.accepted + other.accepted,
            rejected=add(self.rejected, other.rejected),
            unknown_instance_types=add(self.unknown_instance_types, other.unknown_instance_types),
            superseded=self.superseded + other.superseded,
            gpu_model_disagreements=add(self.gpu_model_disagreements, other.gpu_model_disagreements),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (reasons and unknown types sorted)."""
        return {
            "accepted": self.accepted,
            "rejected": dict(sorted(self.rejected.items())),
            "rejected_total": self.rejected_total,
            "unknown_instance_types": dict(sorted(self.unknown_instance_types.items())),
            "superseded": self.superseded,
            "gpu_model_disagreements": dict(sorted(self.gpu_model_disagreements.items())),
        }

    def summary(self) -> str:
        """One line for logs and the command line."""
        parts = [f"{self.accepted} accepted", f"{self.rejected_total} rejected"]
        if self.rejected:
            parts[-1] += " (" + ", ".join(f"{k}={v}" for k, v in sorted(self.rejected.items())) + ")"
        if self.unknown_instance_types:
            parts.append(f"{len(self.unknown_instance_types)} unknown instance type(s)")
        if self.superseded:
            parts.append(f"{self.superseded} superseded")
        return ", ".join(parts)


def normalize_frame(
    raw: Any, catalog: Any = None, *, max_gpu_hour_usd: float = MAX_GPU_HOUR_USD, latest_only: bool = True
) -> tuple[Any, NormalizationReport]:
    """Normalize a raw price frame; returns ``(quotes, report)``.

    ``quotes`` has exactly :data:`QUOTE_FIELDS` (:func:`quote_schema`). With ``latest_only`` (a
    poll: one price per :data:`QUOTE_KEY`) the newest ``observed_at`` wins and older prices count
    as ``superseded``; without it (normalizing a whole history) every accepted row is kept.
    GPU model, count, bandwidths and topology come from the catalog (the instance type is
    authoritative; a feed's own GPU spelling that disagrees is counted, not trusted).
    """
    import polars as pl

    df = _with_catalog(raw, catalog or load_catalog())
    df = df.with_columns(_reject_reason(max_gpu_hour_usd))
    report = NormalizationReport()
    _count_rejected(df.filter(pl.col("reject_reason").is_not_null()), report)
    ok = df.filter(pl.col("reject_reason").is_null())
    _count_gpu_model_disagreements(ok, report)
    if latest_only:
        before = ok.height
        ok = ok.sort("observed_at", maintain_order=True).unique(
            subset=list(QUOTE_KEY), keep="last", maintain_order=True
        )
        report.superseded = before - ok.height
    report.accepted = ok.height
    quotes = ok.with_columns(
        pl.col("price_per_hour").alias("price_usd_hour"),
        (pl.col("price_per_hour") * pl.col("effective_factor")).alias("effective_gpu_hour_usd"),
    ).select([pl.col(c).cast(t) for c, t in quote_schema().items()])
    return quotes, report


def _with_catalog(raw: Any, catalog: Any) -> Any:
    """``raw`` cast to :func:`raw_price_schema`, joined to the catalog's facts of its instance type
    (null where the type is unknown). :class:`ValueError` when a raw column is missing."""
    import polars as pl

    schema = raw_price_schema()
    missing = [c for c in schema if c not in raw.columns]
    if missing:
        raise ValueError(f"raw price frame lacks column(s) {missing}")
    df = raw.select([pl.col(c).cast(t) for c, t in schema.items()])
    cat = catalog.to_frame().select(
        "provider",
        "instance_type",
        "gpu_model",
        "gpu_count",
        "net_gbps",
        "storage_gbps",
        "topology_score",
        "effective_factor",
    )
    return df.join(cat, on=["provider", "instance_type"], how="left")


def _reject_reason(max_gpu_hour_usd: float) -> Any:
    """The ``reject_reason`` column: the first rule a row breaks, null for a row accepted."""
    import polars as pl

    price = pl.col("price_per_hour")
    return (
        pl.when(~pl.col("market").is_in(list(MARKETS)) | pl.col("market").is_null())
        .then(pl.lit("unknown_market"))
        .when(pl.col("currency").is_null() | (pl.col("currency") != "USD"))
        .then(pl.lit("non_usd"))
        .when(price.is_null() | price.is_nan() | price.is_infinite())
        .then(pl.lit("not_a_number"))
        .when(price < 0)
        .then(pl.lit("negative"))
        .when(price == 0)
        .then(pl.lit("zero"))
        .when(pl.col("gpu_model").is_null())
        .then(pl.lit("unknown_instance_type"))
        .when(price / pl.col("gpu_count") > max_gpu_hour_usd)
        .then(pl.lit("absurd"))
        .otherwise(pl.lit(None, dtype=pl.String))
        .alias("reject_reason")
    )


def _count_rejected(rejected: Any, report: NormalizationReport) -> None:
    """Count the rejected rows into ``report``: by reason, and the unknown instance types by name."""
    import polars as pl

    if not rejected.height:
        return
    counts = rejected.group_by("reject_reason").len()
    report.rejected = {r: int(n) for r, n in counts.iter_rows()}
    unknown = (
        rejected.filter(pl.col("reject_reason") == "unknown_instance_type")
        .group_by("provider", "instance_type")
        .len()
    )
    report.unknown_instance_types = {f"{p}/{t}": int(n) for p, t, n in unknown.iter_rows()}


def _count_gpu_model_disagreements(ok: Any, report: NormalizationReport) -> None:
    """Count into ``report`` the accepted rows whose feed GPU spelling is not the catalog's model."""
    import polars as pl

    # compare spellings per distinct combination, not per row (a history has millions of rows)
    hints = (
        ok.filter(pl.col("gpu_model_hint").is_not_null() & (pl.col("gpu_model_hint") != ""))
        .group_by("provider", "instance_type", "gpu_model_hint", "gpu_model")
        .len()
    )
    for p, t, h, m, n in hints.iter_rows():
        if canonical_gpu_model(h) != m:
            key = f"{p}/{t}: {h} -> {m}"
            report.gpu_model_disagreements[key] = report.gpu_model_disagreements.get(key, 0) + int(n)


def quotes_from_frame(quotes: Any) -> list[NormalizedGPUQuote]:
    """The rows of a normalized quote frame as :class:`NormalizedGPUQuote` objects."""
    return [NormalizedGPUQuote(**row) for row in quotes.iter_rows(named=True)]


def empty_quotes() -> Any:
    """A normalized quote frame with no rows."""
    import polars as pl

    return pl.DataFrame(schema=quote_schema())
