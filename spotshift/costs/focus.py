"""FinOps FOCUS 1.2 and 1.3: the rules a cost-and-usage dataset must meet, and their check.

``dbt_costs`` builds the view ``focus_cost_and_usage``;
:func:`spotshift.costs.focus_export.export_focus` writes it as CSV (timestamps ISO 8601 with
``Z``) or Parquet (UTC timestamps), atomically. :func:`focus_problems`
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


def quote_column(name: str) -> str:
    """``name`` as a double-quoted SQL identifier."""
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


def _text(c: str) -> str:
    return f"CAST({quote_column(c)} AS VARCHAR)"


def _num(c: str) -> str:
    return f"TRY_CAST({quote_column(c)} AS DOUBLE)"


def _when(c: str) -> str:
    return f"TRY_CAST({quote_column(c)} AS TIMESTAMPTZ)"


def _value_rules(have: set[str]) -> list[tuple[str, str]]:
    """(condition, label) per column-level rule: nulls, numbers, datetimes, allowed values."""
    rules: list[tuple[str, str]] = []
    rules += [(f"{quote_column(c)} IS NULL", f"{c} is null") for c in NON_NULL_COLUMNS if c in have]
    rules += [
        (f"{quote_column(c)} IS NOT NULL AND {_num(c)} IS NULL", f"{c} not a number")
        for c in NUMERIC_COLUMNS
        if c in have
    ]
    rules += [
        (
            f"{quote_column(c)} IS NOT NULL AND NOT regexp_full_match({_text(c)}, '-?[0-9]+(\\.[0-9]+)?')",
            f"{c} not in plain decimal notation",
        )
        for c in NUMERIC_COLUMNS
        if c in have
    ]
    rules += [
        (f"{quote_column(c)} IS NOT NULL AND {_when(c)} IS NULL", f"{c} not an ISO 8601 datetime")
        for c in DATETIME_COLUMNS
        if c in have
    ]
    for col, values in ALLOWED_VALUES.items():
        if col in have:
            allowed = ", ".join("'" + v + "'" for v in values)
            rules.append((f"{_text(col)} NOT IN ({allowed})", f"{col} not an allowed value"))
    if {"ServiceSubcategory", "ServiceCategory"} <= have:
        for cat, subs in SUBCATEGORIES.items():
            allowed = ", ".join("'" + v + "'" for v in subs)
            rules.append(
                (
                    f"{_text('ServiceCategory')} = '{cat}' AND {_text('ServiceSubcategory')} NOT IN ({allowed})",
                    f"ServiceSubcategory not allowed under {cat}",
                )
            )
    return rules


def _row_rules(have: set[str]) -> list[tuple[str, str]]:
    """(condition, label) per rule across columns: usage rows, commitments, currency, periods."""
    rules: list[tuple[str, str]] = []
    if "ChargeCategory" in have:
        usage = f"{_text('ChargeCategory')} IN ('Usage', 'Purchase')" + (
            ' AND "ChargeClass" IS NULL' if "ChargeClass" in have else ""
        )
        for col in ("PricingCategory", "PricingQuantity", "PricingUnit"):
            if col in have:
                rules.append(
                    (f"{usage} AND {quote_column(col)} IS NULL", f"{col} is null on a usage or purchase row")
                )
        for col in ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "PricingQuantity"):
            if col in have:
                rules.append((f"{usage} AND {_num(col)} < 0", f"{col} negative on a usage or purchase row"))
    if {"PricingCategory", "CommitmentDiscountId"} <= have:
        rules.append(
            (
                f"{_text('PricingCategory')} = 'Committed' AND \"CommitmentDiscountId\" IS NULL",
                "Committed without CommitmentDiscountId",
            )
        )
    if "BillingCurrency" in have:
        rules.append(
            (
                f"NOT regexp_full_match({_text('BillingCurrency')}, '[A-Z]{{3}}')",
                "BillingCurrency not an ISO 4217 code",
            )
        )
    pairs = (
        (("ChargePeriodStart", "ChargePeriodEnd"), "ChargePeriodStart not before ChargePeriodEnd"),
        (("BillingPeriodStart", "BillingPeriodEnd"), "BillingPeriodStart not before BillingPeriodEnd"),
    )
    for (start, end), label in pairs:
        if {start, end} <= have:
            rules.append((f"{_when(start)} >= {_when(end)}", label))
    if set(DATETIME_COLUMNS) <= have:
        rules.append(
            (
                f"{_when('ChargePeriodStart')} < {_when('BillingPeriodStart')} "
                f"OR {_when('ChargePeriodEnd')} > {_when('BillingPeriodEnd')}",
                "charge period outside its billing period",
            )
        )
    return rules


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
    rules = _value_rules(have) + _row_rules(have)
    if not rules:
        return problems
    counts = first_row(
        con,
        "SELECT " + ", ".join(f"count(*) FILTER (WHERE {cond})" for cond, _ in rules) + f" FROM {relation}",
    )
    problems += [f"{label}: {n} row(s)" for (_, label), n in zip(rules, counts, strict=True) if n]
    return problems
