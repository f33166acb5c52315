"""The cost report: tables from the marts, as text (``spotshift report``), JSON, and Markdown with
PNG plots (the ``cost_report`` asset).

Plots: :mod:`spotshift.costs.plots`.
"""

from __future__ import annotations

import base64
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spotshift.costs.marts import fetch_dicts
from spotshift.costs.plots import COST_PLOT, PRICE_PLOT, plot_cumulative_cost, plot_price_history
from spotshift.warehouse import first_row

REPORT_MD = "cost_report.md"


def reports_dir() -> Path:
    """Where the ``cost_report`` asset writes: ``$SPOTSHIFT_HOME/reports``."""
    from spotshift.home import spotshift_home

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


def read_report(con: Any, warehouse: str | os.PathLike[str] = "") -> CostReport:
    """Read the report tables from a connection to a warehouse with built marts."""
    built_at = first_row(con, "SELECT max(built_at) FROM mart_build_state")[0]
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
    metrics = fetch_dicts(
        con,
        """SELECT scope_kind, scope, metric, value, unit, numerator, denominator, alert, alert_threshold
           FROM mart_cost_metrics
           ORDER BY CASE scope_kind WHEN 'fleet' THEN 0 WHEN 'job' THEN 1 ELSE 2 END, scope, metric""",
    )
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
    notes = []
    if any(s["on_demand_usd"] is None for s in savings):
        notes.append("some intervals have no known on-demand price: their jobs show no on-demand baseline")
    missing = [s for s in savings if s["stay_first_spot_usd"] is None and s["stay_first_spot_basis"]]
    if missing:
        notes.append(
            f"stay on first spot is not shown for {len(missing)} job(s) ({missing[0]['stay_first_spot_basis']}): "
            "put that location's availability trace in $SPOTSHIFT_HOME/traces/ to simulate it"
        )
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
    from spotshift.budgets import budget_status, load_budgets
    from spotshift.clock import virtual_now

    now = virtual_now()
    return [budget_status(con, b, now).to_dict() for b in load_budgets()]


def read_reconciliation(con: Any) -> dict[str, Any] | None:
    """The latest recorded reconciliation (without its per-row detail); None when there is none."""
    from spotshift.budgets import table_exists

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


def budget_lines(report: CostReport) -> list[str]:
    """Text lines of the budget burn and the latest reconciliation (empty when neither exists)."""
    lines: list[str] = []
    if report.budgets:
        lines += [
            "",
            "Budgets this month (spent / monthly limit; alert and limit levels raise raw.budget_alerts):",
        ]
        lines += [
            f"  {b['team']} {b['month']}: ${_usd(b['spent_usd'])} of ${_usd(b['monthly_usd'])} "
            f"({_pct(b['burn'])}, {b['level']}); running jobs commit ${_usd(b['committed_usd'])} more"
            for b in report.budgets
        ]
    r = report.reconciliation
    if r:
        err, mae = r["error_usd_per_hour"], r["mean_abs_error_pct"]
        err_text = "-" if err is None else f"{err:+.4f}"
        mae_text = "-" if mae is None else f"{mae:.2f} %"
        lines += [
            "",
            f"Reconciliation with the invoice ({r['export_file']}): {r['matched_rows']} of {r['billed_rows']} billed "
            f"rows matched, billed ${_usd(r['billed_usd'])} vs estimated ${_usd(r['estimated_usd'])}; error "
            f"{err_text} USD per resource-hour, mean |error| {mae_text}, "
            f"{_pct(r['within_goal_share'])} of matched groups within 2 %; unmatched: "
            f"{r['unmatched_billed_rows']} billed, {r['unmatched_estimate_rows']} estimated",
        ]
    return lines


def hybrid_sections() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The private pools' reports and the dev environments' waste avoided per team, as of the virtual
    clock's now (empty when none is declared); they live in their own state files, not the marts."""
    from spotshift.clock import virtual_now
    from spotshift.devenvs.env import load_devenvs
    from spotshift.devenvs.runtime import waste_report
    from spotshift.pools.pool import load_pools
    from spotshift.pools.scheduler import pool_report

    now = virtual_now()
    pools = [pool_report(p.name, now=now) for p in load_pools()]
    return pools, (waste_report(now=now) if load_devenvs() else {})


def _cutover_line(c: dict[str, Any]) -> str:
    where = f"{c['endpoint']} {c['from_locations']} -> {c['to_location']}"
    why = (
        f" at {c['rolled_back_at_stage']}"
        if c["status"] == "rolled_back" and c["rolled_back_at_stage"]
        else ""
    )
    return (
        f"{where}: {c['status']}{why} after {c['stages_passed']} stage(s); USD per million tokens "
        f"{_num(c['usd_per_mtok_before'])} before, {_num(c['usd_per_mtok_after'])} after "
        f"(saving {_pct(c['saving_per_mtok'])})"
    )


def _usd(v: float | None) -> str:
    return "-" if v is None else f"{v:,.2f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.4g}" if abs(v) < 1 else f"{v:,.2f}"


#: how the report names each migration trigger (an unknown one is shown as ``trigger <name>``)
TRIGGER_LABELS = {
    "place": "initial placement",
    "price": "price move",
    "preemption": "preemption recovery",
    "burst": "burst from a private pool",
    "return": "return to a private pool",
}


def migration_breakdown(mg: dict[str, Any]) -> str:
    """``5 migrations = 1 initial placement + 2 price moves (1 rolled back) + 2 preemption recoveries``.

    Every migration is counted under its trigger, so the parts add up to the total; a move that was
    rolled back stays under the trigger that started it, with its status in brackets.
    """
    parts = []
    for t in mg.get("by_trigger") or []:
        label = TRIGGER_LABELS.get(t["trigger"], f"trigger {t['trigger']}")
        n = int(t["migrations"])
        plural = (
            label if n == 1 else ("preemption recoveries" if t["trigger"] == "preemption" else label + "s")
        )
        status = [f"{int(t[k])} {k.replace('_', ' ')}" for k in ("rolled_back", "other") if t[k]]
        status = [x.replace(" other", " failed") for x in status]
        parts.append(f"{n} {plural}" + (f" ({', '.join(status)})" if status else ""))
    total = int(mg["migrations"])
    head = f"{total} migration{'s' if total != 1 else ''}"
    return head + (" = " + " + ".join(parts) if parts else "")


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [fmt(headers), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]


def format_text(report: CostReport) -> str:
    """The report as aligned plain-text tables (what ``spotshift report`` prints)."""
    t = report.totals
    lines = [
        f"spotshift cost report — warehouse {report.warehouse}"
        + (f" (marts built {report.built_at:%Y-%m-%d %H:%M} UTC)" if report.built_at else ""),
        "",
        f"{t['jobs']} training job(s): actual ${_usd(t['actual_usd'])} (compute ${_usd(t['compute_usd'])} + egress "
        f"${_usd(t['egress_usd'])})",
        f"  baseline always on demand ${_usd(t['on_demand_usd'])} (saving {_pct(t['saving_vs_on_demand'])})",
        f"  baseline stay on first spot, paying for its preemptions ${_usd(t['stay_first_spot_usd'])} "
        f"(saving {_pct(t['saving_vs_stay_first_spot'])})",
        f"  bound: first spot never preempted ${_usd(t['first_spot_bound_usd'])} "
        "(what staying would cost if never preempted: a lower bound for staying, not a baseline)",
        "",
        "Savings per job (USD; baselines price the same productive work; bound = first spot never preempted)",
    ]
    rows = [
        [
            s["job"],
            _usd(s["actual_usd"]),
            _usd(s["on_demand_usd"]),
            _pct(s["saving_vs_on_demand"]),
            _usd(s["stay_first_spot_usd"]),
            _pct(s["saving_vs_stay_first_spot"]),
            _usd(s["first_spot_bound_usd"]),
            f"{s['gpu_hours']:,.1f}",
            str(s["preemptions"]),
            str(s["migrations"]),
        ]
        for s in report.savings
    ]
    lines += _table(
        [
            "job",
            "actual",
            "on-demand",
            "saving",
            "stay-first-spot",
            "saving",
            "bound",
            "GPU-h",
            "preempted",
            "moves",
        ],
        rows,
        set(range(1, 10)),
    )
    lines += ["", "Cost metrics (! = data_transfer_amplification above 3.0)"]
    rows = [
        [
            ("fleet " if m["scope_kind"] == "fleet" else "") + m["scope"],
            m["metric"] + (" !" if m["alert"] else ""),
            _num(m["value"]),
            m["unit"] or "",
        ]
        for m in report.metrics
    ]
    lines += _table(["scope", "metric", "value", "unit"], rows, {2})
    mg = report.migrations
    lines += [
        "",
        f"Migrations: {migration_breakdown(mg)}; price moves that paid off: {mg['paid_off']}, realized net "
        f"${_usd(mg['realized_net_savings_usd'])}; moved {mg['bytes_moved'] / 1e9:,.1f} GB for ${_usd(mg['egress_usd'])} egress",
    ]
    if report.amplification_alerts:
        lines.append(
            f"Amplification alerts: {len(report.amplification_alerts)} transfer(s) sent > 3x what changed:"
        )
        for a in report.amplification_alerts[:10]:
            lines.append(
                f"  {a['kind']} {a['entity']} {a['src_location']} -> {a['dst_location']} ({a['method']}): "
                f"{a['transfer_amplification']:.1f}x"
            )
    if report.cutovers:
        lines += ["", f"Inference cutovers: {len(report.cutovers)}"]
        lines += [f"  {_cutover_line(c)}" for c in report.cutovers]
    f = report.focus
    lines += [
        "",
        f"FOCUS 1.2/1.3: {f['rows']} charge rows, billed {f['currency'] or 'USD'} {_usd(f['billed_cost'])} "
        f"(list {_usd(f['list_cost'])}) over {f['billing_periods']} billing period(s); "
        "export with `spotshift focus export OUT.csv|OUT.parquet`",
    ]
    lines += budget_lines(report)
    if report.unpriced:
        lines += [
            "",
            f"Unpriced: {sum(u['intervals'] for u in report.unpriced)} compute interval(s) could not be "
            "priced and are left out of every cost above:",
        ]
        lines += [
            f"  {u['job']} in {u['location']}: {u['intervals']} interval(s), {u['steps']} steps — {u['reason']}"
            for u in report.unpriced
        ]
        lines.append(
            "  price them by training where the feed quotes the job's GPUs (`spotshift placement plan`), "
            "after `spotshift quotes poll`"
        )
    if report.data_warnings:
        lines += ["", f"Data warnings: {len(report.data_warnings)} data test(s) found problems in the facts:"]
        lines += [f"  {w}" for w in report.data_warnings[:10]]
        if len(report.data_warnings) > 10:
            lines.append(
                f"  ... and {len(report.data_warnings) - 10} more (spotshift report --json lists all)"
            )
    for p in report.pools:
        lines += [
            "",
            f"Private pool {p['pool']} ({p['gpus']} GPUs at {p['location']}): utilisation {p['utilisation']:.0%} "
            f"(owning pays above ~{p['breakeven_utilisation']:.0%}), queue waits mean {p['queue_wait_hours_mean']:.2f} h / "
            f"max {p['queue_wait_hours_max']:.2f} h; {p['bursts']} burst(s), {p['repatriations']} back, "
            f"{p['burst_hours']:.1f} burst hours; bursting ${_usd(p['burst_cost_usd'])} vs waiting ${_usd(p['waiting_cost_usd'])}",
        ]
    for team, w in sorted((report.devenvs.get("teams") or {}).items()):
        lines.append(
            f"Dev environments, team {team}: {w['gpu_hours']:,.1f} idle GPU-hours not paid, ${_usd(w['usd'])} avoided"
        )
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ markdown


@dataclass(frozen=True)
class ReportFiles:
    """The rendered report: Markdown on disk (PNG links) and for Dagster (PNGs inlined)."""

    markdown_path: Path
    plots: dict[str, Path]
    markdown: str
    markdown_inline: str


def render_markdown(report: CostReport, images: dict[str, str]) -> str:
    """The report as Markdown; ``images`` maps plot file names to the URL to show them with."""
    t = report.totals
    out = [
        "# spotshift cost report",
        "",
        f"Marts built {report.built_at:%Y-%m-%d %H:%M} UTC." if report.built_at else "",
        "",
        f"**{t['jobs']} training job(s): actual ${_usd(t['actual_usd'])}** — baselines for the same work: always "
        f"on demand ${_usd(t['on_demand_usd'])} (saving {_pct(t['saving_vs_on_demand'])}); stay on first spot, "
        f"paying for its preemptions, ${_usd(t['stay_first_spot_usd'])} (saving {_pct(t['saving_vs_stay_first_spot'])}). "
        f"Bound, not a baseline: first spot never preempted ${_usd(t['first_spot_bound_usd'])}.",
        "",
        "## Savings per job",
        "",
        "| job | actual $ | on-demand $ | saving | stay-first-spot $ | saving | bound $ (never preempted) "
        "| GPU-h | preempted | moves |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in report.savings:
        out.append(
            f"| {s['job']} | {_usd(s['actual_usd'])} | {_usd(s['on_demand_usd'])} | {_pct(s['saving_vs_on_demand'])} "
            f"| {_usd(s['stay_first_spot_usd'])} | {_pct(s['saving_vs_stay_first_spot'])} "
            f"| {_usd(s['first_spot_bound_usd'])} | {s['gpu_hours']:,.1f} | {s['preemptions']} | {s['migrations']} |"
        )
    out += ["", *(f"- {s['job']}: stay on first spot — {s['stay_first_spot_basis']}" for s in report.savings)]
    out += ["", f"![cumulative cost]({images[COST_PLOT]})", "", "## Cost metrics", ""]
    out += ["| scope | metric | value | unit | alert |", "|---|---|---:|---|---|"]
    for m in report.metrics:
        scope = ("fleet " if m["scope_kind"] == "fleet" else "") + m["scope"]
        out.append(
            f"| {scope} | {m['metric']} | {_num(m['value'])} | {m['unit'] or ''} | {'**> 3.0**' if m['alert'] else ''} |"
        )
    mg = report.migrations
    out += [
        "",
        "## Migrations",
        "",
        f"{migration_breakdown(mg)}; price moves that paid off: {mg['paid_off']} (realized net "
        f"${_usd(mg['realized_net_savings_usd'])}); {mg['bytes_moved'] / 1e9:,.1f} GB moved for "
        f"${_usd(mg['egress_usd'])} egress.",
        "",
        f"![price history]({images[PRICE_PLOT]})",
        "",
    ]
    if report.amplification_alerts:
        out += ["## Transfer amplification alerts", "", "| transfer | from | to | method | amplification |"]
        out += ["|---|---|---|---|---:|"]
        for a in report.amplification_alerts[:20]:
            out.append(
                f"| {a['kind']} {a['entity']} | {a['src_location']} | {a['dst_location']} | {a['method']} "
                f"| {a['transfer_amplification']:.1f}x |"
            )
        out.append("")
    if report.cutovers:
        out += [
            "## Inference cutovers",
            "",
            "| endpoint | from | to | outcome | stages passed | USD/Mtok before | USD/Mtok after | saving |",
            "|---|---|---|---|---:|---:|---:|---:|",
        ]
        for c in report.cutovers:
            status = c["status"] + (f" at {c['rolled_back_at_stage']}" if c["rolled_back_at_stage"] else "")
            out.append(
                f"| {c['endpoint']} | {c['from_locations']} | {c['to_location']} | {status} | {c['stages_passed']} "
                f"| {_num(c['usd_per_mtok_before'])} | {_num(c['usd_per_mtok_after'])} | {_pct(c['saving_per_mtok'])} |"
            )
        out.append("")
    f = report.focus
    out += [
        "## FOCUS 1.2/1.3",
        "",
        f"{f['rows']} charge rows, billed {f['currency'] or 'USD'} {_usd(f['billed_cost'])} over "
        f"{f['billing_periods']} billing period(s): `spotshift focus export OUT.csv`.",
    ]
    extra = budget_lines(report)
    if extra:
        out += ["", "## Budgets and reconciliation", ""]
        out += [f"- {ln.strip()}" for ln in extra if ln.strip()]
    if report.unpriced:
        out += ["", "## Unpriced intervals", "", "Left out of every cost above.", ""]
        out += ["| job | location | intervals | steps | why |", "|---|---|---:|---:|---|"]
        out += [
            f"| {u['job']} | {u['location']} | {u['intervals']} | {u['steps']} | {u['reason']} |"
            for u in report.unpriced
        ]
    if report.pools:
        out += [
            "",
            "## Private pools",
            "",
            "| pool | GPUs | utilisation | mean / max queue wait h | bursts | back | burst h | bursting $ | waiting $ |",
        ]
        out += ["|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        out += [
            f"| {p['pool']} | {p['gpus']} | {p['utilisation']:.0%} | {p['queue_wait_hours_mean']:.2f} / "
            f"{p['queue_wait_hours_max']:.2f} | {p['bursts']} | {p['repatriations']} | {p['burst_hours']:.1f} | "
            f"{_usd(p['burst_cost_usd'])} | {_usd(p['waiting_cost_usd'])} |"
            for p in report.pools
        ]
    if report.devenvs.get("teams"):
        out += [
            "",
            "## Dev environments: waste avoided",
            "",
            "| team | idle GPU-hours not paid | USD avoided |",
        ]
        out += ["|---|---:|---:|"]
        out += [
            f"| {team} | {w['gpu_hours']:,.1f} | {_usd(w['usd'])} |"
            for team, w in sorted(report.devenvs["teams"].items())
        ]
    out += [f"\n_Note: {n}._" for n in report.notes]
    return "\n".join(out) + "\n"


def write_cost_report(con: Any, out_dir: str | os.PathLike[str], warehouse: str = "") -> ReportFiles:
    """Render both plots and the Markdown report into ``out_dir`` (atomic writes) and return them.

    ``markdown`` links the PNGs by file name (for the file on disk); ``markdown_inline`` embeds them
    as base64 data URLs (for Dagster's Markdown metadata, which has no file server).
    """
    from spotshift.atomic import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = read_report(con, warehouse)
    plots = {
        PRICE_PLOT: plot_price_history(con, out / PRICE_PLOT),
        COST_PLOT: plot_cumulative_cost(con, out / COST_PLOT),
    }
    markdown = render_markdown(report, {name: name for name in plots})
    inline = render_markdown(
        report,
        {
            name: "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode()
            for name, p in plots.items()
        },
    )
    md_path = atomic_write_text(out / REPORT_MD, markdown)
    return ReportFiles(md_path, plots, markdown, inline)
