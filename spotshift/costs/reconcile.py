"""Reconciliation: a provider's FOCUS billing export against spotshift's cost estimates.

spotshift prices what it runs from quotes (``raw.compute_usage.usd``, ``raw.transfers.egress_usd``);
the provider bills it in a FOCUS export (AWS Data Exports, Azure Cost Management, GCP billing export
in FOCUS form). :func:`reconcile_export` reads such an export (CSV or Parquet, FOCUS 1.2 or 1.3) and
matches, per *resource group*:

* compute: billed ``Usage`` rows of ServiceCategory ``Compute`` priced in ``Hours``, keyed by
  provider (``ServiceProviderName``, else ``ProviderName``), ``RegionId``, instance type
  (``SkuPriceDetails.InstanceType`` or an ``x_instance_type`` column; a row without one matches any
  type) and charge period. spotshift's estimate of a group is the cost of every compute interval of
  the same provider, region (and type) prorated by time to the charge period;
* data transfer: billed ``Usage`` rows of ServiceCategory ``Networking`` priced in ``GB``, keyed by
  provider, region and charge period; the estimate is the egress of transfers that left that region
  within the charge period.

The billed amount of a row is its ``EffectiveCost`` (``BilledCost`` when the export has none):
usage covered by a commitment bills 0 but costs its amortized share, and spotshift's estimate is
what the resource costs. A billed row without an instance type matches only the intervals that no
typed row of the same region and window bills. Billed rows of one group are summed (several instances of one type bill one row each). A group is
*matched* when spotshift has an estimate for it; the error of a matched group is
``(estimate - billed) / billed`` and, per resource-hour, ``(estimate - billed) / hours``. The goal
is ``|error| <= 2 %``. Billed rows of other services (storage, databases, taxes, purchases) and
groups without an estimate are reported as unmatched billed rows, with the reason; spotshift's
intervals and transfers inside the export's time range that no billed row covers are unmatched
estimates.

The result is recorded in ``raw.reconciliations`` (idempotent by the content hashes of the export
and of the estimates); ``spotshift report`` shows the latest.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from spotshift.costs.focus_export import read_relation
from spotshift.costs.reconcile_match import GOAL_PCT, Reconciliation, load_estimates, match_estimates
from spotshift.errors import InputError, NotFoundError
from spotshift.warehouse import connect, record_facts

__all__ = ["GOAL_PCT", "Reconciliation", "format_reconciliation", "provider_id", "reconcile_export"]

#: provider names as FOCUS exports spell them -> spotshift's provider ids
PROVIDER_ALIASES: tuple[tuple[str, str], ...] = (
    ("amazon", "aws"),
    ("aws", "aws"),
    ("google", "gcp"),
    ("gcp", "gcp"),
    ("microsoft", "azure"),
    ("azure", "azure"),
    ("coreweave", "coreweave"),
    ("lambda", "lambda"),
)


def provider_id(name: str | None) -> str | None:
    """spotshift's provider id for a FOCUS provider name (``AWS``, ``Amazon Web Services`` -> ``aws``)."""
    if not name:
        return None
    low = name.strip().lower()
    for needle, pid in PROVIDER_ALIASES:
        if needle in low:
            return pid
    return low


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _col(cols: set[str], *names: str) -> str:
    for n in names:
        if n in cols:
            return f'"{n}"'
    return "NULL"


#: the export's rows in one shape (columns optional in FOCUS come out NULL when absent)
def _billed_sql(relation: str, cols: set[str]) -> str:
    provider = (
        f"coalesce(NULLIF({_col(cols, 'ServiceProviderName')}, ''), NULLIF({_col(cols, 'ProviderName')}, ''))"
    )
    itype = "NULL"
    if "x_instance_type" in cols:
        itype = "NULLIF(x_instance_type, '')"
    if "SkuPriceDetails" in cols:
        sku = "json_extract_string(TRY_CAST(NULLIF(\"SkuPriceDetails\", '') AS JSON), '$.InstanceType')"
        itype = sku if itype == "NULL" else f"coalesce({itype}, {sku})"
    return f"""
        SELECT
            row_number() OVER () AS billed_row,
            {provider} AS provider_name,
            NULLIF(CAST({_col(cols, "RegionId")} AS VARCHAR), '') AS region,
            {itype} AS instance_type,
            CAST({_col(cols, "ChargeCategory")} AS VARCHAR) AS charge_category,
            CAST({_col(cols, "ServiceCategory")} AS VARCHAR) AS service_category,
            CAST({_col(cols, "PricingUnit")} AS VARCHAR) AS pricing_unit,
            timezone('UTC', TRY_CAST({_col(cols, "ChargePeriodStart")} AS TIMESTAMPTZ)) AS cps,
            timezone('UTC', TRY_CAST({_col(cols, "ChargePeriodEnd")} AS TIMESTAMPTZ)) AS cpe,
            coalesce(TRY_CAST({_col(cols, "EffectiveCost")} AS DOUBLE),
                     TRY_CAST({_col(cols, "BilledCost")} AS DOUBLE)) AS billed_usd,
            coalesce(TRY_CAST({_col(cols, "PricingQuantity")} AS DOUBLE),
                     TRY_CAST({_col(cols, "ConsumedQuantity")} AS DOUBLE)) AS quantity,
            CAST({_col(cols, "ResourceId")} AS VARCHAR) AS resource_id
        FROM {relation}
    """


def _read_billed(con: Any, relation: str, export: str | os.PathLike[str], path: Path) -> None:
    """Temp table ``billed``: the export's rows in one shape, with spotshift's provider id and the
    kind of charge (``compute``, ``transfer`` or NULL); :class:`InputError` when it is not FOCUS."""
    import duckdb

    try:
        cols = {d[0] for d in con.execute(f"SELECT * FROM {relation} LIMIT 0").description}
    except duckdb.Error as exc:
        raise InputError(
            f"{export}: not a readable {path.suffix[1:]} file ({str(exc).splitlines()[0]})"
        ) from None
    missing = [c for c in ("BilledCost", "ChargePeriodStart", "ChargePeriodEnd", "RegionId") if c not in cols]
    if not {"ServiceProviderName", "ProviderName"} & cols:
        missing.append("ServiceProviderName or ProviderName")
    if missing:
        raise InputError(f"{export}: not a FOCUS cost and usage export (no {', '.join(missing)})")
    con.execute(f"CREATE TEMP TABLE billed AS {_billed_sql(relation, cols)}")
    bad = con.execute("SELECT count(*) FROM billed WHERE cps IS NULL OR cpe IS NULL").fetchall()[0][0]
    if bad:
        raise InputError(f"{export}: {bad} row(s) without a readable ChargePeriodStart/ChargePeriodEnd")
    providers = {
        r[0]: provider_id(r[0]) for r in con.execute("SELECT DISTINCT provider_name FROM billed").fetchall()
    }
    con.execute("CREATE TEMP TABLE provider_map (provider_name VARCHAR, provider VARCHAR)")
    if providers:
        con.executemany("INSERT INTO provider_map VALUES (?, ?)", list(providers.items()))
    con.execute(
        "ALTER TABLE billed ADD COLUMN provider VARCHAR; "
        "UPDATE billed SET provider = m.provider FROM provider_map m WHERE billed.provider_name = m.provider_name"
    )
    con.execute(
        """
        ALTER TABLE billed ADD COLUMN kind VARCHAR;
        UPDATE billed SET kind = CASE
            WHEN charge_category = 'Usage' AND service_category = 'Compute' AND pricing_unit = 'Hours' THEN 'compute'
            WHEN charge_category = 'Usage' AND service_category = 'Networking' AND pricing_unit = 'GB' THEN 'transfer'
        END
        """
    )


def reconcile_export(
    export: str | os.PathLike[str],
    warehouse: str | os.PathLike[str],
    *,
    record: bool = True,
    now: datetime | None = None,
) -> Reconciliation:
    """Match the FOCUS export ``export`` to the estimates in ``warehouse`` (rules in the module doc).

    :class:`InputError` for an unreadable export or one that is not FOCUS (no ``BilledCost``,
    ``ChargePeriodStart``, ``ChargePeriodEnd``, ``RegionId``, provider column);
    :class:`NotFoundError` when the export or the warehouse does not exist. With ``record`` the
    result goes to ``raw.reconciliations``.
    """
    import duckdb

    path = Path(export)
    relation = read_relation(path)  # unknown extension: InputError
    if not path.is_file():
        raise NotFoundError(f"{export}: no such billing export")
    wh = Path(warehouse)
    if not wh.is_file():
        raise NotFoundError(f"warehouse {wh} does not exist (nothing to reconcile against)")
    result = Reconciliation(str(export), _sha256(path), now or datetime.now(UTC))
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        _read_billed(con, relation, export, path)
        wpath = str(wh).replace("'", "''")
        try:
            con.execute(f"ATTACH '{wpath}' AS wh (READ_ONLY)")
        except duckdb.Error as exc:
            raise InputError(f"warehouse {wh}: not readable ({str(exc).splitlines()[0][:200]})") from None
        load_estimates(con)
        match_estimates(con, result)
    finally:
        con.close()
    if record:
        with connect(wh) as wcon:
            record_facts({"raw.reconciliations": [result.to_row()]}, con=wcon)
    return result


def format_reconciliation(r: Reconciliation) -> str:
    """Human-readable summary of ``r``."""

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f} %"

    lines = [
        f"reconciled {r.export_file} ({r.billed_rows} billed rows) with spotshift's estimates",
        f"  matched: {r.matched_rows} rows in {len(r.groups)} resource groups, {r.matched_hours:,.2f} resource-hours; "
        f"billed {r.billed_usd:,.4f} USD, estimated {r.estimated_usd:,.4f} USD",
        f"  error: {'-' if r.error_usd_per_hour is None else f'{r.error_usd_per_hour:+.6f}'} USD per resource-hour, "
        f"mean |error| {pct(r.mean_abs_error_pct)}, "
        f"{'-' if r.within_goal_share is None else f'{r.within_goal_share:.0%}'} of groups within {GOAL_PCT:g} %",
        f"  unmatched billed rows: {r.unmatched_billed_rows}",
    ]
    lines += [
        f"    {n} {why}" for why, n in sorted(r.unmatched_reasons.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    lines.append(f"  unmatched spotshift rows (no billed row covers them): {r.unmatched_estimate_rows}")
    for e in r.unmatched_estimates[:10]:
        lines.append(
            f"    {e['kind']} {e['id']} ({e['job']}) {e['provider']}/{e['region']} at {e['started_at']}"
        )
    return "\n".join(lines) + "\n"
