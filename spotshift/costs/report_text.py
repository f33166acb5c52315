"""The cost report as aligned plain text (what ``spotshift report`` prints), and the number
formats the text and Markdown renderings share. Reading the report: :mod:`spotshift.costs.report`.
"""

from __future__ import annotations

from typing import Any

from spotshift.costs.report import CostReport


def fmt_usd(v: float | None) -> str:
    """Dollars with thousands separators and cents; ``-`` for unknown."""
    return "-" if v is None else f"{v:,.2f}"


def fmt_pct(v: float | None) -> str:
    """A fraction as a percentage with one decimal; ``-`` for unknown."""
    return "-" if v is None else f"{100 * v:.1f} %"


def fmt_num(v: float | None) -> str:
    """A metric value: 4 significant digits below 1, grouped thousands above 1000; ``-`` for unknown."""
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


def _cutover_line(c: dict[str, Any]) -> str:
    where = f"{c['endpoint']} {c['from_locations']} -> {c['to_location']}"
    why = (
        f" at {c['rolled_back_at_stage']}"
        if c["status"] == "rolled_back" and c["rolled_back_at_stage"]
        else ""
    )
    return (
        f"{where}: {c['status']}{why} after {c['stages_passed']} stage(s); USD per million tokens "
        f"{fmt_num(c['usd_per_mtok_before'])} before, {fmt_num(c['usd_per_mtok_after'])} after "
        f"(saving {fmt_pct(c['saving_per_mtok'])})"
    )


def budget_lines(report: CostReport) -> list[str]:
    """Text lines of the budget burn and the latest reconciliation (empty when neither exists)."""
    lines: list[str] = []
    if report.budgets:
        lines += [
            "",
            "Budgets this month (spent / monthly limit; alert and limit levels raise raw.budget_alerts):",
        ]
        lines += [
            f"  {b['team']} {b['month']}: ${fmt_usd(b['spent_usd'])} of ${fmt_usd(b['monthly_usd'])} "
            f"({fmt_pct(b['burn'])}, {b['level']}); running jobs commit ${fmt_usd(b['committed_usd'])} more"
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
            f"rows matched, billed ${fmt_usd(r['billed_usd'])} vs estimated ${fmt_usd(r['estimated_usd'])}; error "
            f"{err_text} USD per resource-hour, mean |error| {mae_text}, "
            f"{fmt_pct(r['within_goal_share'])} of matched groups within 2 %; unmatched: "
            f"{r['unmatched_billed_rows']} billed, {r['unmatched_estimate_rows']} estimated",
        ]
    return lines


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [fmt(headers), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]


def _text_savings(report: CostReport) -> list[str]:
    """Header, totals and the savings table."""
    t = report.totals
    lines = [
        f"spotshift cost report — warehouse {report.warehouse}"
        + (f" (marts built {report.built_at:%Y-%m-%d %H:%M} UTC)" if report.built_at else ""),
        "",
        f"{t['jobs']} training job(s): actual ${fmt_usd(t['actual_usd'])} (compute ${fmt_usd(t['compute_usd'])} + egress "
        f"${fmt_usd(t['egress_usd'])})",
        f"  baseline always on demand ${fmt_usd(t['on_demand_usd'])} (saving {fmt_pct(t['saving_vs_on_demand'])})",
        f"  baseline stay on first spot, paying for its preemptions ${fmt_usd(t['stay_first_spot_usd'])} "
        f"(saving {fmt_pct(t['saving_vs_stay_first_spot'])})",
        f"  bound: first spot never preempted ${fmt_usd(t['first_spot_bound_usd'])} "
        "(what staying would cost if never preempted: a lower bound for staying, not a baseline)",
        "",
        "Savings per job (USD; baselines price the same productive work; bound = first spot never preempted)",
    ]
    rows = [
        [
            s["job"],
            fmt_usd(s["actual_usd"]),
            fmt_usd(s["on_demand_usd"]),
            fmt_pct(s["saving_vs_on_demand"]),
            fmt_usd(s["stay_first_spot_usd"]),
            fmt_pct(s["saving_vs_stay_first_spot"]),
            fmt_usd(s["first_spot_bound_usd"]),
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
    return lines


def _text_metrics_and_moves(report: CostReport) -> list[str]:
    """Cost metrics, migrations, amplification alerts, cutovers, FOCUS totals, budgets."""
    lines: list[str] = []
    lines += ["", "Cost metrics (! = data_transfer_amplification above 3.0)"]
    rows = [
        [
            ("fleet " if m["scope_kind"] == "fleet" else "") + m["scope"],
            m["metric"] + (" !" if m["alert"] else ""),
            fmt_num(m["value"]),
            m["unit"] or "",
        ]
        for m in report.metrics
    ]
    lines += _table(["scope", "metric", "value", "unit"], rows, {2})
    mg = report.migrations
    lines += [
        "",
        f"Migrations: {migration_breakdown(mg)}; price moves that paid off: {mg['paid_off']}, realized net "
        f"${fmt_usd(mg['realized_net_savings_usd'])}; moved {mg['bytes_moved'] / 1e9:,.1f} GB for ${fmt_usd(mg['egress_usd'])} egress",
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
        f"FOCUS 1.2/1.3: {f['rows']} charge rows, billed {f['currency'] or 'USD'} {fmt_usd(f['billed_cost'])} "
        f"(list {fmt_usd(f['list_cost'])}) over {f['billing_periods']} billing period(s); "
        "export with `spotshift focus export OUT.csv|OUT.parquet`",
    ]
    lines += budget_lines(report)
    return lines


def _text_tail(report: CostReport) -> list[str]:
    """Unpriced intervals, data warnings, private pools, dev environments and notes."""
    lines: list[str] = []
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
            f"{p['burst_hours']:.1f} burst hours; bursting ${fmt_usd(p['burst_cost_usd'])} vs waiting ${fmt_usd(p['waiting_cost_usd'])}",
        ]
    for team, w in sorted((report.devenvs.get("teams") or {}).items()):
        lines.append(
            f"Dev environments, team {team}: {w['gpu_hours']:,.1f} idle GPU-hours not paid, ${fmt_usd(w['usd'])} avoided"
        )
    lines += [f"note: {n}" for n in report.notes]
    return lines


def format_text(report: CostReport) -> str:
    """The report as aligned plain-text tables (what ``spotshift report`` prints)."""
    lines = _text_savings(report) + _text_metrics_and_moves(report) + _text_tail(report)
    return "\n".join(lines) + "\n"
