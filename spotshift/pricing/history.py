"""Price-history CSVs of the shape of ``../shared/data/gcp_gpu_prices_2022_2024.csv``.

Columns: ``observed_at`` (ISO-8601), ``instance_type``, ``gpu_model``, ``gpu_count``, ``region``,
``ondemand_hour``, ``spot_hour`` (USD per hour; ``spot_hour`` may be empty where no spot price
was published). Optional ``provider`` (default ``gcp``) and ``zone`` columns are accepted, so one
file can describe a multi-cloud market. Any slice of the shape is accepted: other years, regions
and instance types, unsorted rows.

Both the replay feed and the simulator read histories through :func:`read_price_history`, which
refuses malformed files with one line naming the file, the line and the column.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from spotshift.clock import parse_utc
from spotshift.errors import ConfigError, InputError

REQUIRED_COLUMNS = (
    "observed_at",
    "instance_type",
    "gpu_model",
    "gpu_count",
    "region",
    "ondemand_hour",
    "spot_hour",
)
OPTIONAL_COLUMNS = ("provider", "zone", "source")


def _iso_utc(text: str) -> datetime | None:
    """An ISO-8601 date or timestamp as aware UTC (naive means UTC); ``None`` when not ISO-8601."""
    try:
        return parse_utc(text)
    except ConfigError:
        return None


def read_price_history(path: str | Path) -> Any:
    """Load and validate a history CSV as a polars DataFrame sorted by ``observed_at``.

    Result columns: observed_at (Datetime UTC), provider, region, zone, instance_type, gpu_model,
    gpu_count (Int32), ondemand_hour (Float64), spot_hour (Float64, null when absent), source.
    Raises :class:`InputError` for a missing file, missing columns, unparseable values, a
    non-positive GPU count or negative prices.
    """
    import polars as pl

    p = Path(path)
    raw = _read_raw(p)
    for col in ("instance_type", "gpu_model", "region"):
        _bad_line(raw, p, raw[col].is_null() | (raw[col].str.strip_chars() == ""), col, "is empty")
    observed = _observed_at(raw, p)
    gpu_count = _gpu_count(raw, p)
    ondemand, spot = _prices(raw, p)
    out = pl.DataFrame(
        {
            "observed_at": observed,
            "provider": _text_or(raw, "provider", "gcp"),
            "region": raw["region"].str.strip_chars(),
            "zone": _text_or(raw, "zone", ""),
            "instance_type": raw["instance_type"].str.strip_chars(),
            "gpu_model": raw["gpu_model"].str.strip_chars(),
            "gpu_count": gpu_count,
            "ondemand_hour": ondemand,
            "spot_hour": spot,
            "source": _text_or(raw, "source", "replay"),
        }
    )
    return out.sort("observed_at", maintain_order=True)


def _read_raw(p: Path) -> Any:
    """The CSV as text columns; :class:`InputError` when missing, unreadable, short of a column or empty."""
    import polars as pl

    if not p.is_file():
        raise InputError(f"price history {p}: no such file")
    try:
        raw = pl.read_csv(p, infer_schema=False, truncate_ragged_lines=False)
    except Exception as exc:  # polars raises ComputeError/NoDataError with multi-line text
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"price history {p}: not a readable CSV ({first[:160]})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise InputError(f"price history {p}: missing column(s) {', '.join(missing)}")
    if raw.height == 0:
        raise InputError(f"price history {p}: no rows")
    return raw


def _bad_line(raw: Any, p: Path, mask: Any, column: str, what: str) -> None:
    """:class:`InputError` naming the first line where ``mask`` holds (line 1 is the header)."""
    idx = mask.arg_true()
    if len(idx):
        i = int(idx[0])
        value = raw[column][i]
        raise InputError(f"price history {p} line {i + 2}: {column} {value!r} {what}")


def _observed_at(raw: Any, p: Path) -> Any:
    """``observed_at`` as aware UTC datetimes, any ISO-8601 spelling."""
    import polars as pl

    stamps = raw["observed_at"].str.strip_chars()
    # fast vectorized path for the usual full form with offset; any other ISO-8601 spelling (a date,
    # no offset, "Z", a space separator) is parsed once per distinct value, so rows may mix forms
    observed = stamps.str.to_datetime(format="%Y-%m-%dT%H:%M:%S%.f%z", time_zone="UTC", strict=False)
    rest = stamps.filter(observed.is_null() & stamps.is_not_null()).unique()
    if len(rest):
        parsed = {s: _iso_utc(s) for s in rest.to_list()}
        observed = observed.fill_null(
            stamps.replace_strict(parsed, default=None, return_dtype=pl.Datetime("us", "UTC"))
        )
    _bad_line(raw, p, observed.is_null(), "observed_at", "is not an ISO-8601 timestamp")
    return observed


def _gpu_count(raw: Any, p: Path) -> Any:
    """``gpu_count`` as positive Int32."""
    import polars as pl

    gpu_count = raw["gpu_count"].str.strip_chars().cast(pl.Int32, strict=False)
    _bad_line(raw, p, gpu_count.is_null() | (gpu_count <= 0), "gpu_count", "is not a positive integer")
    return gpu_count


def _prices(raw: Any, p: Path) -> tuple[Any, Any]:
    """``(ondemand_hour, spot_hour)`` as finite Float64 >= 0 (spot null where the cell is empty)."""
    import polars as pl

    ondemand = raw["ondemand_hour"].str.strip_chars().cast(pl.Float64, strict=False)
    _bad_line(
        raw,
        p,
        ondemand.is_null() | ~ondemand.is_finite() | (ondemand < 0),
        "ondemand_hour",
        "is not a price >= 0",
    )
    spot_text = raw["spot_hour"].fill_null("").str.strip_chars()
    spot = spot_text.cast(pl.Float64, strict=False)
    _bad_line(
        raw,
        p,
        (spot_text != "") & (spot.is_null() | ~spot.is_finite() | (spot < 0)),
        "spot_hour",
        "is not a price >= 0",
    )
    return ondemand, spot


def _text_or(raw: Any, col: str, default: str) -> Any:
    """Optional text column ``col`` (nulls as ``default``; provider lower-cased), or ``default`` throughout."""
    import polars as pl

    if col in raw.columns:
        return (
            raw[col].fill_null(default).str.strip_chars().str.to_lowercase()
            if col == "provider"
            else raw[col].fill_null(default)
        )
    return pl.Series(col, [default] * raw.height)
