"""The cost report as Markdown with PNG plots (the ``cost_report`` asset), written atomically.
Reading the report: :mod:`spotshift.costs.report`; plots: :mod:`spotshift.costs.plots`.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spotshift.atomic import atomic_write_text
from spotshift.costs.plots import COST_PLOT, PRICE_PLOT, plot_cumulative_cost, plot_price_history
from spotshift.costs.report import REPORT_MD, CostReport, read_report
from spotshift.costs.report_text import budget_lines, fmt_num, fmt_pct, fmt_usd, migration_breakdown


@dataclass(frozen=True)
class ReportFiles:
    """The rendered report: Markdown on disk (PNG links) and for Dagster (PNGs inlined)."""

    markdown_path: Path
    plots: dict[str, Path]
    markdown: str
    markdown_inline: str


def _md_savings_and_metrics(report: CostReport, images: dict[str, str]) -> list[str]:
    """Title, totals, savings per job, the cost plot and the metrics table."""
    t = report.totals
    out = [
        "# spotshift cost report",
        "",
        f"Marts built {report.built_at:%Y-%m-%d %H:%M} UTC." if report.built_at else "",
        "",
        f"**{t['jobs']} training job(s): actual ${fmt_usd(t['actual_usd'])}** — baselines for the same work: always "
        f"on demand ${fmt_usd(t['on_demand_usd'])} (saving {fmt_pct(t['saving_vs_on_demand'])}); stay on first spot, "
        f"paying for its preemptions, ${fmt_usd(t['stay_first_spot_usd'])} (saving {fmt_pct(t['saving_vs_stay_first_spot'])}). "
        f"Bound, not a baseline: first spot never preempted ${fmt_usd(t['first_spot_bound_usd'])}.",
        "",
        "## Savings per job",
        "",
        "| job | actual $ | on-demand $ | saving | stay-first-spot $ | saving | bound $ (never preempted) "
        "| GPU-h | preempted | moves |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in report.savings:
        out.append(
            f"| {s['job']} | {fmt_usd(s['actual_usd'])} | {fmt_usd(s['on_demand_usd'])} | {fmt_pct(s['saving_vs_on_demand'])} "
            f"| {fmt_usd(s['stay_first_spot_usd'])} | {fmt_pct(s['saving_vs_stay_first_spot'])} "
            f"| {fmt_usd(s['first_spot_bound_usd'])} | {s['gpu_hours']:,.1f} | {s['preemptions']} | {s['migrations']} |"
        )
    out += ["", *(f"- {s['job']}: stay on first spot — {s['stay_first_spot_basis']}" for s in report.savings)]
    out += ["", f"![cumulative cost]({images[COST_PLOT]})", "", "## Cost metrics", ""]
    out += ["| scope | metric | value | unit | alert |", "|---|---|---:|---|---|"]
    for m in report.metrics:
        scope = ("fleet " if m["scope_kind"] == "fleet" else "") + m["scope"]
        out.append(
            f"| {scope} | {m['metric']} | {fmt_num(m['value'])} | {m['unit'] or ''} | {'**> 3.0**' if m['alert'] else ''} |"
        )
    return out


def _md_moves(report: CostReport, images: dict[str, str]) -> list[str]:
    """Migrations with the price plot, amplification alerts, cutovers, FOCUS totals, budgets."""
    out: list[str] = []
    mg = report.migrations
    out += [
        "",
        "## Migrations",
        "",
        f"{migration_breakdown(mg)}; price moves that paid off: {mg['paid_off']} (realized net "
        f"${fmt_usd(mg['realized_net_savings_usd'])}); {mg['bytes_moved'] / 1e9:,.1f} GB moved for "
        f"${fmt_usd(mg['egress_usd'])} egress.",
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
                f"| {fmt_num(c['usd_per_mtok_before'])} | {fmt_num(c['usd_per_mtok_after'])} | {fmt_pct(c['saving_per_mtok'])} |"
            )
        out.append("")
    f = report.focus
    out += [
        "## FOCUS 1.2/1.3",
        "",
        f"{f['rows']} charge rows, billed {f['currency'] or 'USD'} {fmt_usd(f['billed_cost'])} over "
        f"{f['billing_periods']} billing period(s): `spotshift focus export OUT.csv`.",
    ]
    extra = budget_lines(report)
    if extra:
        out += ["", "## Budgets and reconciliation", ""]
        out += [f"- {ln.strip()}" for ln in extra if ln.strip()]
    return out


def _md_tail(report: CostReport) -> list[str]:
    """Unpriced intervals, private pools, dev environments and notes."""
    out: list[str] = []
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
            f"{fmt_usd(p['burst_cost_usd'])} | {fmt_usd(p['waiting_cost_usd'])} |"
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
            f"| {team} | {w['gpu_hours']:,.1f} | {fmt_usd(w['usd'])} |"
            for team, w in sorted(report.devenvs["teams"].items())
        ]
    out += [f"\n_Note: {n}._" for n in report.notes]
    return out


def render_markdown(report: CostReport, images: dict[str, str]) -> str:
    """The report as Markdown; ``images`` maps plot file names to the URL to show them with."""
    out = _md_savings_and_metrics(report, images) + _md_moves(report, images) + _md_tail(report)
    return "\n".join(out) + "\n"


def write_cost_report(con: Any, out_dir: str | os.PathLike[str], warehouse: str = "") -> ReportFiles:
    """Render both plots and the Markdown report into ``out_dir`` (atomic writes) and return them.

    ``markdown`` links the PNGs by file name (for the file on disk); ``markdown_inline`` embeds them
    as base64 data URLs (for Dagster's Markdown metadata, which has no file server).
    """
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
