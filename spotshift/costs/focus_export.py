"""The FOCUS export of spotshift's view ``focus_cost_and_usage``: CSV or Parquet written atomically,
with its metadata file beside it. The rules and their check: :mod:`spotshift.costs.focus`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from spotshift.atomic import atomic_write_text, fsync_dir, temp_path
from spotshift.costs.focus import (
    DECIMAL_PLACES,
    FOCUS_VERSION,
    FOCUS_VIEW,
    KNOWN_COLUMNS,
    quote_column,
)
from spotshift.costs.marts import open_marts
from spotshift.errors import InputError
from spotshift.jobs import load_jobs
from spotshift.serving.endpoints import load_endpoints
from spotshift.warehouse import first_row


@dataclass(frozen=True)
class FocusExport:
    """What :func:`export_focus` wrote: the data file and its metadata file beside it."""

    path: Path
    format: str
    rows: int
    billed_cost: float
    currency: str
    metadata_path: Path | None = None
    focus_version: str = FOCUS_VERSION


def metadata_path_for(out: str | os.PathLike[str]) -> Path:
    """Where the metadata of the export ``out`` goes: ``OUT.metadata.json`` beside it."""
    p = Path(out)
    return p.with_name(p.name + ".metadata.json")


def _sql_text(value: str | None) -> str:
    return "NULL" if value is None else "'" + str(value).replace("'", "''") + "'"


def team_tags_relation() -> str:
    """A SQL relation ``(kind, name, team)`` of every declared job and endpoint that names a team."""
    rows = [("job", j.name, j.team) for j in load_jobs() if j.team]
    rows += [("endpoint", e.name, e.team) for e in load_endpoints() if e.team]
    if not rows:
        return "(SELECT NULL::VARCHAR AS kind, NULL::VARCHAR AS name, NULL::VARCHAR AS team WHERE false)"
    values = ", ".join(f"({_sql_text(k)}, {_sql_text(n)}, {_sql_text(t)})" for k, n, t in rows)
    return f"(SELECT * FROM (VALUES {values}) AS v(kind, name, team))"


def focus_metadata(columns: list[tuple[str, str]], rows: int) -> dict[str, Any]:
    """The export's metadata document: FOCUS version, the column generations and each column's type.

    ``columns``: (name, DuckDB type) of the exported relation.
    """
    names = [n for n, _ in columns]
    schema_id = hashlib.sha256("\n".join(f"{n} {t}" for n, t in columns).encode()).hexdigest()[:16]

    def definition(name: str, dtype: str) -> dict[str, Any]:
        d: dict[str, Any] = {"ColumnName": name}
        u = dtype.upper()
        if u.startswith("DECIMAL"):
            d.update(DataType="Decimal", NumberScale=DECIMAL_PLACES)
        elif u.startswith("TIMESTAMP"):
            d.update(DataType="DateTime")
        elif u in ("BIGINT", "INTEGER", "DOUBLE"):
            d.update(DataType="Numeric")
        elif u == "BOOLEAN":
            d.update(DataType="Boolean")
        elif name == "Tags" or u == "JSON":
            d.update(DataType="JSON")
        else:
            d.update(DataType="String")
        if name.startswith("x_"):
            d["ProviderTagPrefixes"] = ["x_"]
        return d

    return {
        "FocusVersion": FOCUS_VERSION,
        "ColumnGenerations": {
            "1.2": [
                c
                for c in names
                if c in KNOWN_COLUMNS and c not in ("HostProviderName", "ServiceProviderName")
            ],
            "1.3": [c for c in names if c in KNOWN_COLUMNS],
        },
        "DeprecatedColumns": {"ProviderName": "1.3", "PublisherName": "1.3"},
        "DataGenerator": {"DataGenerator": "spotshift"},
        "Schema": {
            "SchemaId": schema_id,
            "FocusVersion": FOCUS_VERSION,
            "CreationDate": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "ColumnDefinition": [definition(n, t) for n, t in columns],
        },
        "NumericPrecision": {"DecimalPlaces": DECIMAL_PLACES, "Notation": "plain decimal (no exponent)"},
        "Rows": rows,
    }


def _export_columns(described: list[tuple[Any, ...]], fmt: str) -> list[str]:
    """The SELECT list of the export: timestamps as UTC text (CSV) or UTC instants (Parquet), ``Tags``
    merged with the job's or endpoint's ``spotshift/team`` (joined as ``tj``/``te``)."""
    select = []
    for name, dtype, *_ in described:
        col = "f." + quote_column(name)
        if dtype.upper().startswith("TIMESTAMP"):
            if fmt == "csv":
                select.append(f"strftime({col}, '%Y-%m-%dT%H:%M:%SZ') AS {quote_column(name)}")
            else:
                select.append(f"timezone('UTC', {col}) AS {quote_column(name)}")
        elif name == "Tags":
            team = "coalesce(tj.team, te.team)"
            select.append(
                f"CAST(CASE WHEN {team} IS NULL THEN {col}::JSON "
                f"ELSE json_merge_patch(coalesce({col}::JSON, '{{}}'::JSON), json_object('spotshift/team', {team})) "
                f"END AS VARCHAR) AS {quote_column(name)}"
            )
        else:
            select.append(col)
    return select


def export_focus(out: str | os.PathLike[str], warehouse: str | os.PathLike[str] | None = None) -> FocusExport:
    """Write the FOCUS view of ``warehouse`` to ``out`` (``.csv`` or ``.parquet``), atomically.

    Every FOCUS 1.2 and 1.3 column is written (the 1.2 provider columns beside the 1.3 ones),
    numbers as decimals with :data:`DECIMAL_PLACES` places, ``Tags`` with each job's and endpoint's
    ``spotshift/team``. ``OUT.metadata.json`` (written after the data file) states the
    ``FocusVersion``; Parquet files also carry it in their key-value metadata.

    Raises :class:`InputError` for an unknown extension or a missing output directory and
    :class:`NotFoundError` when the warehouse or the view does not exist (build the marts first).
    """
    fmt = focus_format(out)
    target = Path(out).expanduser().resolve()
    if not target.parent.is_dir():
        raise InputError(f"{out}: directory {target.parent} does not exist")
    with open_marts(warehouse, require=(FOCUS_VIEW,)) as con:
        con.execute("SET TimeZone = 'UTC'")
        described = con.execute(f"DESCRIBE {FOCUS_VIEW}").fetchall()
        select = _export_columns(described, fmt)
        teams = team_tags_relation()
        query = (
            f"SELECT {', '.join(select)} FROM {FOCUS_VIEW} AS f "
            f"LEFT JOIN {teams} AS tj ON tj.kind = 'job' AND tj.name = f.x_job "
            f"LEFT JOIN {teams} AS te ON te.kind = 'endpoint' AND te.name = f.x_endpoint "
            'ORDER BY f."ChargePeriodStart", f."ChargeDescription"'
        )
        meta = focus_metadata([(n, t) for n, t, *_ in described], 0)
        if fmt == "csv":
            options = "FORMAT csv, HEADER true"
        else:
            options = f"FORMAT parquet, COMPRESSION zstd, KV_METADATA {{FocusVersion: '{FOCUS_VERSION}'}}"
        tmp = temp_path(target.parent)  # pid-named: a killed export's leftover is recognisable
        try:
            con.execute(f"COPY ({query}) TO '{str(tmp).replace(chr(39), chr(39) * 2)}' ({options})")
            rows, billed, currency = first_row(
                con,
                f'SELECT count(*), coalesce(sum("BilledCost"), 0), coalesce(min("BillingCurrency"), \'USD\') FROM {FOCUS_VIEW}',
            )
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    fsync_dir(target.parent)
    meta["Rows"] = int(rows)
    meta_path = atomic_write_text(metadata_path_for(target), json.dumps(meta, indent=2) + "\n")
    return FocusExport(target, fmt, int(rows), float(billed), str(currency), Path(meta_path), FOCUS_VERSION)


def focus_format(out: str | os.PathLike[str]) -> str:
    """``csv`` or ``parquet`` from the output file's extension; :class:`InputError` otherwise."""
    suffix = Path(out).suffix.lower()
    formats = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
    if suffix not in formats:
        raise InputError(f"{out}: unknown extension {suffix or '(none)'!r}; use .csv or .parquet")
    return formats[suffix]


def read_relation(path: str | os.PathLike[str]) -> str:
    """The DuckDB relation expression that reads an exported FOCUS file."""
    fmt = focus_format(path)
    p = str(Path(path)).replace("'", "''")
    # CSV as text: the check sees numbers as written (an exponent is a problem), not as re-printed
    return f"read_csv('{p}', header = true, all_varchar = true)" if fmt == "csv" else f"read_parquet('{p}')"
