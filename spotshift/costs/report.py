"""The cost report: its tables read from the marts (:func:`read_report`), JSON-ready.

Rendered as text by :mod:`spotshift.costs.report_text` (``spotshift report``) and as Markdown with
PNG plots by :mod:`spotshift.costs.report_markdown` (the ``cost_report`` asset).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spotshift.budgets import budget_status, load_budgets, table_exists
from spotshift.clock import virtual_now
from spotshift.costs.marts import fetch_dicts
from spotshift.devenvs.env import load_devenvs
from spotshift.devenvs.runtime import waste_report
from spotshift.home import spotshift_home
from spotshift.pools.pool import load_pools
from spotshift.pools.scheduler import pool_report
from spotshift.warehouse import first_row

REPORT_MD = "cost_report.md"


def reports_dir() -> Path:
    """Where the ``cost_report`` asset writes: ``$SPOTSHIFT_HOME/reports``."""
    return spotshift_home() / "reports"


@dataclass
class CostReport:
    """Everything ``spotshift report`` prints, read from the marts in one go."""

    warehouse: str
    built_at: str | None
    totals: dict[str, Any]
    savings: list[dict[str, Any]]
    metrics: list[dict[str, Any]]
    migrations: dict[str, Any]
    amplification_alerts: list[dict[str, Any]]
    focus: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    #: intervals no quote could priced (fct_unpriced_usage), grouped by job, location and reason
    unpriced: list[dict[str, Any]] = field(default_factory=list)
    #: data tests of the last build that found problems in the data (dbt warnings), one line each
    data_warnings: list[str] = field(default_factory=list)
    #: private pools (spotshift pools): utilisation, queue waits, burst hours, bursting vs waiting
    pools: list[dict[str, Any]] = field(default_factory=list)
    #: dev environments (spotshift devenvs): idle GPU-hours and dollars not paid, per team
    devenvs: dict[str, Any] = field(default_factory=dict)
    #: gradual cutovers of inference endpoints (fct_cutovers): outcome, cost per million tokens before/after
    cutovers: list[dict[str, Any]] = field(default_factory=list)
    #: each team budget's burn this month (:meth:`spotshift.budgets.BudgetStatus.to_dict`)
    budgets: list[dict[str, Any]] = field(default_factory=list)
    #: the latest ``spotshift reconcile`` result (raw.reconciliations), None when never run
    reconciliation: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (timestamps as ISO strings)."""
        return _jsonable(asdict(self))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    if isinstance(obj, float) and obj != obj:  # NaN
        return None
    return obj


def _read_savings(con: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(savings per job, their totals with the saving against each baseline)."""
    savings = fetch_dicts(
        con,
        """SELECT job, first_started_at, last_ended_at, first_spot_location, intervals, preemptions,
                  migrations, gpu_hours, productive_gpu_hours, compute_usd, egress_usd, actual_usd,
                  on_demand_usd, stay_first_spot_usd, stay_first_spot_basis, stay_first_spot_preemptions,
                  first_spot_bound_usd, saving_vs_on_demand_usd, saving_vs_on_demand,
                  saving_vs_stay_first_spot_usd, saving_vs_stay_first_spot
           FROM mart_savings ORDER BY job""",
    )
    totals = fetch_dicts(
        con,
        """SELECT count(*) AS jobs,
                  coalesce(sum(actual_usd), 0) AS actual_usd,
                  coalesce(sum(compute_usd), 0) AS compute_usd,
                  coalesce(sum(egress_usd), 0) AS egress_usd,
                  CASE WHEN count(on_demand_usd) = count(*) THEN sum(on_demand_usd) END AS on_demand_usd,
                  CASE WHEN count(stay_first_spot_usd) = count(*) THEN sum(stay_first_spot_usd) END
                      AS stay_first_spot_usd,
                  CASE WHEN count(first_spot_bound_usd) = count(*) THEN sum(first_spot_bound_usd) END
                      AS first_spot_bound_usd
           FROM mart_savings""",
    )[0]
    for base in ("on_demand", "stay_first_spot"):
        b = totals[f"{base}_usd"]
        totals[f"saving_vs_{base}"] = (b - totals["actual_usd"]) / b if b else None
    return savings, totals


def _read_migrations(con: Any) -> dict[str, Any]:
    """Migration totals, their breakdown by trigger and every migration."""
    mig = fetch_dicts(
        con,
        """SELECT count(*) AS migrations,
                  count(*) FILTER (WHERE trigger = 'place') AS placements,
                  count(*) FILTER (WHERE trigger = 'price') AS price_moves,
                  count(*) FILTER (WHERE trigger = 'preemption') AS preemption_recoveries,
                  count(*) FILTER (WHERE status = 'rolled_back') AS rolled_back,
                  count(*) FILTER (WHERE paid_off) AS paid_off,
                  coalesce(sum(realized_net_savings_usd), 0) AS realized_net_savings_usd,
                  coalesce(sum(egress_usd), 0) AS egress_usd,
                  coalesce(sum(bytes_moved), 0) AS bytes_moved
           FROM fct_migrations""",
    )[0]
    mig["by_trigger"] = fetch_dicts(
        con,
        """SELECT trigger, count(*) AS migrations,
                  count(*) FILTER (WHERE status = 'cut_over') AS cut_over,
                  count(*) FILTER (WHERE status = 'rolled_back') AS rolled_back,
                  count(*) FILTER (WHERE status NOT IN ('cut_over', 'rolled_back')) AS other
           FROM fct_migrations GROUP BY trigger
           ORDER BY CASE trigger WHEN 'place' THEN 0 WHEN 'price' THEN 1 WHEN 'preemption' THEN 2 ELSE 3 END,
                    trigger""",
    )
    mig["rows"] = fetch_dicts(
        con,
        """SELECT migration_id, job, trigger, status, from_location, to_location, started_at, downtime_s,
                  bytes_moved, egress_usd, shadow_passed, realized_net_savings_usd, paid_off
           FROM fct_migrations ORDER BY started_at, migration_id""",
    )
    return mig


def _notes(savings: list[dict[str, Any]]) -> list[str]:
    """What the savings table cannot show, and why."""
    notes = []
    if any(s["on_demand_usd"] is None for s in savings):
        notes.append("some intervals have no known on-demand price: their jobs show no on-demand baseline")
    missing = [s for s in savings if s["stay_first_spot_usd"] is None and s["stay_first_spot_basis"]]
    if missing:
        notes.append(
            f"stay on first spot is not shown for {len(missing)} job(s) ({missing[0]['stay_first_spot_basis']}): "
            "put that location's availability trace in $SPOTSHIFT_HOME/traces/ to simulate it"
        )
    return notes


def read_report(con: Any, warehouse: str | os.PathLike[str] = "") -> CostReport:
    """Read the report tables from a connection to a warehouse with built marts."""
    built_at = first_row(con, "SELECT max(built_at) FROM mart_build_state")[0]
    savings, totals = _read_savings(con)
    metrics = fetch_dicts(
        con,
        """SELECT scope_kind, scope, metric, value, unit, numerator, denominator, alert, alert_threshold
           FROM mart_cost_metrics
           ORDER BY CASE scope_kind WHEN 'fleet' THEN 0 WHEN 'job' THEN 1 ELSE 2 END, scope, metric""",
    )
    mig = _read_migrations(con)
    alerts = fetch_dicts(
        con,
        """SELECT transfer_id, job, kind, entity, method, src_location, dst_location, started_at,
                  bytes_sent, bytes_changed, transfer_amplification
           FROM fct_data_transfer WHERE amplification_alert ORDER BY started_at, transfer_id""",
    )
    focus = fetch_dicts(
        con,
        """SELECT count(*) AS rows, coalesce(sum("BilledCost"), 0)::DOUBLE AS billed_cost,
                  coalesce(sum("ListCost"), 0)::DOUBLE AS list_cost, min("BillingCurrency") AS currency,
                  count(DISTINCT "BillingPeriodStart") AS billing_periods
           FROM focus_cost_and_usage""",
    )[0]
    unpriced = fetch_dicts(
        con,
        """SELECT job, location, reason, count(*) AS intervals, sum(steps) AS steps,
                  sum(wall_hours) AS wall_hours, min(started_at) AS first_started_at
           FROM fct_unpriced_usage GROUP BY ALL ORDER BY job, location, reason""",
    )
    notes = _notes(savings)
    cutovers = fetch_dicts(
        con,
        """SELECT cutover_id, endpoint, from_locations, to_location, status, stages_passed, rolled_back_at_stage,
                  reason, usd_per_mtok_before, usd_per_mtok_after, saving_per_mtok, replica_hours_saved, started_at
           FROM fct_cutovers ORDER BY started_at, cutover_id""",
    )
    pools, devenvs = hybrid_sections()
    report = CostReport(
        str(warehouse),
        built_at,
        totals,
        savings,
        metrics,
        mig,
        alerts,
        focus,
        notes,
        unpriced,
        pools=pools,
        devenvs=devenvs,
        cutovers=cutovers,
    )
    report.budgets = read_budgets(con)
    report.reconciliation = read_reconciliation(con)
    return report


def read_budgets(con: Any) -> list[dict[str, Any]]:
    """This month's burn of every declared team budget (virtual clock), from the raw facts of ``con``."""
    now = virtual_now()
    return [budget_status(con, b, now).to_dict() for b in load_budgets()]


def read_reconciliation(con: Any) -> dict[str, Any] | None:
    """The latest recorded reconciliation (without its per-row detail); None when there is none."""
    if not table_exists(con, "raw", "reconciliations"):
        return None
    rows = fetch_dicts(
        con,
        """SELECT reconcile_id, reconciled_at, export_file, billed_rows, matched_rows, unmatched_billed_rows,
                  unmatched_estimate_rows, billed_usd, estimated_usd, matched_hours, error_usd_per_hour,
                  mean_abs_error_pct, within_goal_share
           FROM raw.reconciliations ORDER BY reconciled_at DESC, reconcile_id LIMIT 1""",
    )
    return rows[0] if rows else None


def hybrid_sections() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The private pools' reports and the dev environments' waste avoided per team, as of the virtual
    clock's now (empty when none is declared); they live in their own state files, not the marts."""
    now = virtual_now()
    pools = [pool_report(p.name, now=now) for p in load_pools()]
    return pools, (waste_report(now=now) if load_devenvs() else {})
