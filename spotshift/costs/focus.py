"""FinOps FOCUS 1.2: the rules a cost-and-usage dataset must meet, and the export of spotshift's view.

``dbt_costs`` builds the view ``focus_cost_and_usage``; :func:`export_focus` writes it as CSV
(timestamps ISO 8601 with ``Z``) or Parquet (UTC timestamps), atomically. :func:`focus_problems`
checks any relation DuckDB can read (the view, an exported file, a provider's own FOCUS export)
against the FOCUS 1.2 requirements spotshift relies on: every Mandatory column present, non-null
where the spec forbids nulls, allowed values, non-negative usage costs, ISO 4217 currency, charge
periods ordered and inside their billing period, custom columns prefixed ``x_``.
Spec: https://focus.finops.org/focus-specification/v1-2/
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spotshift.errors import InputError
from spotshift.warehouse import first_row

FOCUS_VIEW = "focus_cost_and_usage"

#: Columns whose feature level is Mandatory in FOCUS 1.2
MANDATORY_COLUMNS: tuple[str, ...] = (
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "ContractedCost",
    "EffectiveCost",
    "InvoiceIssuerName",
    "ListCost",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "ServiceCategory",
    "ServiceName",
)

#: Conditional columns whose condition holds for spotshift's data (spot and on-demand pricing)
APPLICABLE_CONDITIONAL_COLUMNS: tuple[str, ...] = ("PricingCategory",)

#: Mandatory columns that MUST NOT be null on any row
NON_NULL_COLUMNS: tuple[str, ...] = (
    "BilledCost",
    "BillingAccountId",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "ContractedCost",
    "EffectiveCost",
    "InvoiceIssuerName",
    "ListCost",
    "ProviderName",
    "ServiceCategory",
    "ServiceName",
)

#: Every FOCUS 1.2 column spotshift may emit; anything else must be an ``x_`` custom column
KNOWN_COLUMNS: frozenset[str] = frozenset(
    MANDATORY_COLUMNS
    + APPLICABLE_CONDITIONAL_COLUMNS
    + (
        "AvailabilityZone",
        "BillingAccountType",
        "ChargeFrequency",
        "CommitmentDiscountCategory",
        "CommitmentDiscountId",
        "CommitmentDiscountName",
        "CommitmentDiscountQuantity",
        "CommitmentDiscountStatus",
        "CommitmentDiscountType",
        "CommitmentDiscountUnit",
        "ConsumedQuantity",
        "ConsumedUnit",
        "ContractedUnitPrice",
        "InvoiceId",
        "ListUnitPrice",
        "PricingCurrency",
        "RegionId",
        "RegionName",
        "ResourceId",
        "ResourceName",
        "ResourceType",
        "ServiceSubcategory",
        "SkuId",
        "SkuMeter",
        "SkuPriceDetails",
        "SkuPriceId",
        "SubAccountId",
        "SubAccountName",
        "SubAccountType",
        "Tags",
    )
)

ALLOWED_VALUES: dict[str, tuple[str, ...]] = {
    "ChargeCategory": ("Usage", "Purchase", "Tax", "Credit", "Adjustment"),
    "ChargeClass": ("Correction",),
    "ChargeFrequency": ("One-Time", "Recurring", "Usage-Based"),
    "PricingCategory": ("Standard", "Dynamic", "Committed", "Other"),
    "CommitmentDiscountStatus": ("Used", "Unused"),
    "CommitmentDiscountCategory": ("Spend", "Usage"),
    "ServiceCategory": (
        "AI and Machine Learning",
        "Analytics",
        "Business Applications",
        "Compute",
        "Databases",
        "Developer Tools",
        "Multicloud",
        "Identity",
        "Integration",
        "Internet of Things",
        "Management and Governance",
        "Media",
        "Migration",
        "Mobile",
        "Networking",
        "Security",
        "Storage",
        "Web",
        "Other",
    ),
}

#: ServiceSubcategory values of the categories spotshift emits (FOCUS 1.2 allowed values)
SUBCATEGORIES: dict[str, tuple[str, ...]] = {
    "Compute": (
        "Containers",
        "End User Computing",
        "Quantum",
        "Serverless Compute",
        "Virtual Machines",
        "Other (Compute)",
    ),
    "Networking": (
        "Content Delivery",
        "Data Transfer",
        "Load Balancing",
        "Network Management",
        "Network Security",
        "Other (Networking)",
    ),
}


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


#: FOCUS metric columns (Decimal in the spec) and datetime columns (ISO 8601, UTC)
NUMERIC_COLUMNS: tuple[str, ...] = (
    "BilledCost",
    "EffectiveCost",
    "ListCost",
    "ContractedCost",
    "PricingQuantity",
    "ConsumedQuantity",
    "ListUnitPrice",
    "ContractedUnitPrice",
)
DATETIME_COLUMNS: tuple[str, ...] = (
    "BillingPeriodStart",
    "BillingPeriodEnd",
    "ChargePeriodStart",
    "ChargePeriodEnd",
)


def focus_problems(con: Any, relation: str = FOCUS_VIEW) -> list[str]:
    """Every way ``relation`` (a table, view or ``read_csv(...)``/``read_parquet(...)`` expression)
    falls short of FOCUS 1.2, one line each with the number of offending rows; empty when valid.

    Values are cast before they are compared (``TRY_CAST``), so a CSV whose columns were read as
    text is checked like a typed table, and a value of the wrong type is itself a problem.
    """
    columns = [r[0] for r in con.execute(f"SELECT * FROM {relation} LIMIT 0").description]
    have = set(columns)
    problems = [
        f"missing FOCUS 1.2 column {c}"
        for c in MANDATORY_COLUMNS + APPLICABLE_CONDITIONAL_COLUMNS
        if c not in have
    ]
    problems += [
        f"column {c} is neither a FOCUS 1.2 column nor an x_ custom column"
        for c in columns
        if c not in KNOWN_COLUMNS and not c.startswith("x_")
    ]

    def text(c: str) -> str:
        return f"CAST({_q(c)} AS VARCHAR)"

    def num(c: str) -> str:
        return f"TRY_CAST({_q(c)} AS DOUBLE)"

    def when(c: str) -> str:
        return f"TRY_CAST({_q(c)} AS TIMESTAMPTZ)"

    rules: list[tuple[str, str]] = []
    rules += [(f"{_q(c)} IS NULL", f"{c} is null") for c in NON_NULL_COLUMNS if c in have]
    rules += [
        (f"{_q(c)} IS NOT NULL AND {num(c)} IS NULL", f"{c} not a number")
        for c in NUMERIC_COLUMNS
        if c in have
    ]
    rules += [
        (f"{_q(c)} IS NOT NULL AND {when(c)} IS NULL", f"{c} not an ISO 8601 datetime")
        for c in DATETIME_COLUMNS
        if c in have
    ]
    for col, values in ALLOWED_VALUES.items():
        if col in have:
            allowed = ", ".join("'" + v + "'" for v in values)
            rules.append((f"{text(col)} NOT IN ({allowed})", f"{col} not an allowed value"))
    if {"ServiceSubcategory", "ServiceCategory"} <= have:
        for cat, subs in SUBCATEGORIES.items():
            allowed = ", ".join("'" + v + "'" for v in subs)
            rules.append(
                (
                    f"{text('ServiceCategory')} = '{cat}' AND {text('ServiceSubcategory')} NOT IN ({allowed})",
                    f"ServiceSubcategory not allowed under {cat}",
                )
            )
    if "ChargeCategory" in have:
        usage = f"{text('ChargeCategory')} IN ('Usage', 'Purchase')" + (
            ' AND "ChargeClass" IS NULL' if "ChargeClass" in have else ""
        )
        for col in ("PricingCategory", "PricingQuantity", "PricingUnit"):
            if col in have:
                rules.append((f"{usage} AND {_q(col)} IS NULL", f"{col} is null on a usage or purchase row"))
        for col in ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "PricingQuantity"):
            if col in have:
                rules.append((f"{usage} AND {num(col)} < 0", f"{col} negative on a usage or purchase row"))
    if {"PricingCategory", "CommitmentDiscountId"} <= have:
        rules.append(
            (
                f"{text('PricingCategory')} = 'Committed' AND \"CommitmentDiscountId\" IS NULL",
                "Committed without CommitmentDiscountId",
            )
        )
    if "BillingCurrency" in have:
        rules.append(
            (
                f"NOT regexp_full_match({text('BillingCurrency')}, '[A-Z]{{3}}')",
                "BillingCurrency not an ISO 4217 code",
            )
        )
    pairs = (
        (("ChargePeriodStart", "ChargePeriodEnd"), "ChargePeriodStart not before ChargePeriodEnd"),
        (("BillingPeriodStart", "BillingPeriodEnd"), "BillingPeriodStart not before BillingPeriodEnd"),
    )
    for (start, end), label in pairs:
        if {start, end} <= have:
            rules.append((f"{when(start)} >= {when(end)}", label))
    if set(DATETIME_COLUMNS) <= have:
        rules.append(
            (
                f"{when('ChargePeriodStart')} < {when('BillingPeriodStart')} "
                f"OR {when('ChargePeriodEnd')} > {when('BillingPeriodEnd')}",
                "charge period outside its billing period",
            )
        )
    if not rules:
        return problems
    counts = first_row(
        con,
        "SELECT " + ", ".join(f"count(*) FILTER (WHERE {cond})" for cond, _ in rules) + f" FROM {relation}",
    )
    problems += [f"{label}: {n} row(s)" for (_, label), n in zip(rules, counts, strict=True) if n]
    return problems


@dataclass(frozen=True)
class FocusExport:
    """What :func:`export_focus` wrote."""

    path: Path
    format: str
    rows: int
    billed_cost: float
    currency: str


def focus_format(out: str | os.PathLike[str]) -> str:
    """``csv`` or ``parquet`` from the output file's extension; :class:`InputError` otherwise."""
    suffix = Path(out).suffix.lower()
    formats = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
    if suffix not in formats:
        raise InputError(f"{out}: unknown extension {suffix or '(none)'!r}; use .csv or .parquet")
    return formats[suffix]


def export_focus(out: str | os.PathLike[str], warehouse: str | os.PathLike[str] | None = None) -> FocusExport:
    """Write the FOCUS view of ``warehouse`` to ``out`` (``.csv`` or ``.parquet``), atomically.

    Raises :class:`InputError` for an unknown extension or a missing output directory and
    :class:`NotFoundError` when the warehouse or the view does not exist (build the marts first).
    """
    from spotshift.atomic import fsync_dir, temp_path
    from spotshift.costs.marts import open_marts

    fmt = focus_format(out)
    target = Path(out).expanduser().resolve()
    if not target.parent.is_dir():
        raise InputError(f"{out}: directory {target.parent} does not exist")
    with open_marts(warehouse, require=(FOCUS_VIEW,)) as con:
        con.execute("SET TimeZone = 'UTC'")
        described = con.execute(f"DESCRIBE {FOCUS_VIEW}").fetchall()
        select = []
        for name, dtype, *_ in described:
            col = _q(name)
            if dtype.upper().startswith("TIMESTAMP"):
                if fmt == "csv":
                    select.append(f"strftime({col}, '%Y-%m-%dT%H:%M:%SZ') AS {col}")
                else:
                    select.append(f"timezone('UTC', {col}) AS {col}")
            else:
                select.append(col)
        query = (
            f'SELECT {", ".join(select)} FROM {FOCUS_VIEW} ORDER BY "ChargePeriodStart", "ChargeDescription"'
        )
        options = "FORMAT csv, HEADER true" if fmt == "csv" else "FORMAT parquet, COMPRESSION zstd"
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
    return FocusExport(target, fmt, int(rows), float(billed), str(currency))


def read_relation(path: str | os.PathLike[str]) -> str:
    """The DuckDB relation expression that reads an exported FOCUS file."""
    fmt = focus_format(path)
    p = str(Path(path)).replace("'", "''")
    return f"read_csv('{p}', header = true)" if fmt == "csv" else f"read_parquet('{p}')"
