"""FinOps FOCUS 1.2 and 1.3: the rules a cost-and-usage dataset must meet, and the export of spotshift's view.

``dbt_costs`` builds the view ``focus_cost_and_usage``; :func:`export_focus` writes it as CSV
(timestamps ISO 8601 with ``Z``) or Parquet (UTC timestamps), atomically. :func:`focus_problems`
checks any relation DuckDB can read (the view, an exported file, a provider's own FOCUS export)
against the FOCUS requirements spotshift relies on, for the 1.2 column set and the 1.3 column set
(1.3 adds ``ServiceProviderName`` and ``HostProviderName`` and deprecates ``ProviderName`` and
``PublisherName``; spotshift emits both generations side by side, so one file serves readers of
either): every Mandatory column present, non-null where the spec forbids nulls, allowed values
(ServiceCategory, and ServiceSubcategory from the spec's list for its category), numbers in plain
decimal notation (no exponent), non-negative usage costs, ISO 4217 currency, charge periods ordered
and inside their billing period, custom columns prefixed ``x_``.

Every export states its ``FocusVersion`` in a metadata file beside it (``OUT.metadata.json``, the
spec's Schema metadata: ``FocusVersion``, ``CreationDate``, ``ColumnDefinition``) and, for Parquet,
in the file's key-value metadata.

Specs: https://focus.finops.org/focus-specification/v1-2/ and .../v1-3/ (rules encoded from the
published text; the tests also run an independent validator where one installs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

from spotshift.errors import InputError
from spotshift.warehouse import first_row

FOCUS_VIEW = "focus_cost_and_usage"

#: The FOCUS version an export states (its column set is a superset of the 1.2 one)
FOCUS_VERSION = "1.3"
#: The column generations spotshift emits side by side
FOCUS_VERSIONS: tuple[str, ...] = ("1.2", "1.3")
#: Decimal places of every numeric column of the export (money in USD, unit prices, quantities)
DECIMAL_PLACES = 10

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

#: FOCUS 1.3: the 1.2 Mandatory columns plus the provider split (ProviderName and PublisherName
#: stay Mandatory but deprecated in 1.3; 1.4 removes them)
MANDATORY_COLUMNS_1_3: tuple[str, ...] = (*MANDATORY_COLUMNS, "HostProviderName", "ServiceProviderName")

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
    "ServiceProviderName",
    "HostProviderName",
)

#: Every FOCUS 1.2/1.3 column spotshift may emit; anything else must be an ``x_`` custom column
KNOWN_COLUMNS: frozenset[str] = frozenset(
    MANDATORY_COLUMNS_1_3
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

#: ServiceSubcategory allowed values per ServiceCategory (FOCUS 1.2 and 1.3 appendix; same list)
SUBCATEGORIES: dict[str, tuple[str, ...]] = {
    "AI and Machine Learning": (
        "AI Platforms",
        "Bots",
        "Generative AI",
        "Machine Learning",
        "Natural Language Processing",
    ),
    "Analytics": (
        "Analytics Platforms",
        "Business Intelligence",
        "Data Processing",
        "Search",
        "Streaming Analytics",
    ),
    "Business Applications": ("Productivity and Collaboration",),
    "Compute": (
        "Containers",
        "End User Computing",
        "Quantum Compute",
        "Serverless Compute",
        "Virtual Machines",
    ),
    "Databases": (
        "Caching",
        "Data Warehouses",
        "Ledger Databases",
        "NoSQL Databases",
        "Relational Databases",
        "Time Series Databases",
    ),
    "Developer Tools": (
        "Developer Platforms",
        "Continuous Integration and Deployment",
        "Development Environments",
        "Source Code Management",
        "Quality Assurance",
    ),
    "Identity": ("Identity and Access Management",),
    "Integration": ("API Management", "Messaging", "Workflow Orchestration"),
    "Internet of Things": ("IoT Analytics", "IoT Platforms"),
    "Management and Governance": (
        "Architecture",
        "Compliance",
        "Cost Management",
        "Data Governance",
        "Disaster Recovery",
        "Endpoint Management",
        "Observability",
        "Support",
    ),
    "Media": ("Content Creation", "Gaming", "Media Streaming", "Mixed Reality"),
    "Migration": ("Data Migration", "Resource Migration"),
    "Mobile": (),
    "Multicloud": ("Multicloud Integration",),
    "Networking": (
        "Application Networking",
        "Content Delivery",
        "Network Connectivity",
        "Network Infrastructure",
        "Network Routing",
        "Network Security",
    ),
    "Security": ("Secret Management", "Security Posture Management", "Threat Detection and Response"),
    "Storage": ("Backup Storage", "Block Storage", "File Storage", "Object Storage", "Storage Platforms"),
    "Web": ("Application Platforms",),
    "Other": (),
}
# every category also allows "Other (<category>)"
SUBCATEGORIES = {cat: (*subs, f"Other ({cat})") for cat, subs in SUBCATEGORIES.items()}


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


def focus_problems(con: Any, relation: str = FOCUS_VIEW, version: str = FOCUS_VERSION) -> list[str]:
    """Every way ``relation`` (a table, view or ``read_csv(...)``/``read_parquet(...)`` expression)
    falls short of FOCUS ``version`` (``1.2`` or ``1.3``: which Mandatory column set is required),
    one line each with the number of offending rows; empty when valid.

    Values are cast before they are compared (``TRY_CAST``), so a CSV whose columns were read as
    text is checked like a typed table, and a value of the wrong type is itself a problem. A
    numeric value written with an exponent (``2.5e-05``) is a problem too: spotshift's exports use
    plain decimal notation, and so must a file that passes this check.
    """
    if version not in FOCUS_VERSIONS:
        raise InputError(f"FOCUS version {version!r}: use one of {', '.join(FOCUS_VERSIONS)}")
    mandatory = MANDATORY_COLUMNS if version == "1.2" else MANDATORY_COLUMNS_1_3
    columns = [r[0] for r in con.execute(f"SELECT * FROM {relation} LIMIT 0").description]
    have = set(columns)
    problems = [
        f"missing FOCUS {version} column {c}"
        for c in mandatory + APPLICABLE_CONDITIONAL_COLUMNS
        if c not in have
    ]
    problems += [
        f"column {c} is neither a FOCUS {version} column nor an x_ custom column"
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
        (
            f"{_q(c)} IS NOT NULL AND NOT regexp_full_match({text(c)}, '-?[0-9]+(\\.[0-9]+)?')",
            f"{c} not in plain decimal notation",
        )
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
    from spotshift.jobs import load_jobs
    from spotshift.serving.endpoints import load_endpoints

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
    import hashlib
    from datetime import datetime

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


def focus_format(out: str | os.PathLike[str]) -> str:
    """``csv`` or ``parquet`` from the output file's extension; :class:`InputError` otherwise."""
    suffix = Path(out).suffix.lower()
    formats = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
    if suffix not in formats:
        raise InputError(f"{out}: unknown extension {suffix or '(none)'!r}; use .csv or .parquet")
    return formats[suffix]


def export_focus(out: str | os.PathLike[str], warehouse: str | os.PathLike[str] | None = None) -> FocusExport:
    """Write the FOCUS view of ``warehouse`` to ``out`` (``.csv`` or ``.parquet``), atomically.

    Every FOCUS 1.2 and 1.3 column is written (the 1.2 provider columns beside the 1.3 ones),
    numbers as decimals with :data:`DECIMAL_PLACES` places, ``Tags`` with each job's and endpoint's
    ``spotshift/team``. ``OUT.metadata.json`` (written after the data file) states the
    ``FocusVersion``; Parquet files also carry it in their key-value metadata.

    Raises :class:`InputError` for an unknown extension or a missing output directory and
    :class:`NotFoundError` when the warehouse or the view does not exist (build the marts first).
    """
    import json

    from spotshift.atomic import atomic_write_text, fsync_dir, temp_path
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
            col = "f." + _q(name)
            if dtype.upper().startswith("TIMESTAMP"):
                if fmt == "csv":
                    select.append(f"strftime({col}, '%Y-%m-%dT%H:%M:%SZ') AS {_q(name)}")
                else:
                    select.append(f"timezone('UTC', {col}) AS {_q(name)}")
            elif name == "Tags":
                team = "coalesce(tj.team, te.team)"
                select.append(
                    f"CAST(CASE WHEN {team} IS NULL THEN {col}::JSON "
                    f"ELSE json_merge_patch(coalesce({col}::JSON, '{{}}'::JSON), json_object('spotshift/team', {team})) "
                    f"END AS VARCHAR) AS {_q(name)}"
                )
            else:
                select.append(col)
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


def read_relation(path: str | os.PathLike[str]) -> str:
    """The DuckDB relation expression that reads an exported FOCUS file."""
    fmt = focus_format(path)
    p = str(Path(path)).replace("'", "''")
    # CSV as text: the check sees numbers as written (an exponent is a problem), not as re-printed
    return f"read_csv('{p}', header = true, all_varchar = true)" if fmt == "csv" else f"read_parquet('{p}')"
