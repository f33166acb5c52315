"""The cost report: tables from the marts, as text (``spotshift report``), JSON, and Markdown with
PNG plots (the ``cost_report`` asset).

Plots (matplotlib, Agg backend, no display needed):

* ``price_history.png`` — the spot price per GPU-hour of each region (cheapest instance of the
  jobs' GPU model at each poll) over the jobs' time span, with each migration marked where it landed;
* ``cumulative_cost.png`` — the fleet's cumulative actual cost (compute + egress) against always
  on demand and staying on each job's first spot location, for the same work.
"""

from __future__ import annotations

import base64
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spotshift.costs.marts import fetch_dicts
from spotshift.warehouse import first_row

PRICE_PLOT = "price_history.png"
COST_PLOT = "cumulative_cost.png"
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
                  on_demand_usd, first_spot_usd, saving_vs_on_demand_usd, saving_vs_on_demand,
                  saving_vs_first_spot_usd, saving_vs_first_spot
           FROM mart_savings ORDER BY job""",
    )
    totals = fetch_dicts(
        con,
        """SELECT count(*) AS jobs,
                  coalesce(sum(actual_usd), 0) AS actual_usd,
                  coalesce(sum(compute_usd), 0) AS compute_usd,
                  coalesce(sum(egress_usd), 0) AS egress_usd,
                  CASE WHEN count(on_demand_usd) = count(*) THEN sum(on_demand_usd) END AS on_demand_usd,
                  CASE WHEN count(first_spot_usd) = count(*) THEN sum(first_spot_usd) END AS first_spot_usd
           FROM mart_savings""",
    )[0]
    for base in ("on_demand", "first_spot"):
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
                  count(*) FILTER (WHERE trigger = 'price') AS price_moves,
                  count(*) FILTER (WHERE trigger = 'preemption') AS preemption_recoveries,
                  count(*) FILTER (WHERE status = 'rolled_back') AS rolled_back,
                  count(*) FILTER (WHERE paid_off) AS paid_off,
                  coalesce(sum(realized_net_savings_usd), 0) AS realized_net_savings_usd,
                  coalesce(sum(egress_usd), 0) AS egress_usd,
                  coalesce(sum(bytes_moved), 0) AS bytes_moved
           FROM fct_migrations""",
    )[0]
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
        """SELECT count(*) AS rows, coalesce(sum("BilledCost"), 0) AS billed_cost,
                  coalesce(sum("ListCost"), 0) AS list_cost, min("BillingCurrency") AS currency,
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
    return CostReport(str(warehouse), built_at, totals, savings, metrics, mig, alerts, focus, notes, unpriced)


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
        f"${_usd(t['egress_usd'])}); always on demand ${_usd(t['on_demand_usd'])} (saving {_pct(t['saving_vs_on_demand'])}); "
        f"stay on first spot ${_usd(t['first_spot_usd'])} (saving {_pct(t['saving_vs_first_spot'])})",
        "",
        "Savings per job (USD; baselines price the same productive work)",
    ]
    rows = [
        [
            s["job"],
            _usd(s["actual_usd"]),
            _usd(s["on_demand_usd"]),
            _pct(s["saving_vs_on_demand"]),
            _usd(s["first_spot_usd"]),
            _pct(s["saving_vs_first_spot"]),
            f"{s['gpu_hours']:,.1f}",
            str(s["preemptions"]),
            str(s["migrations"]),
        ]
        for s in report.savings
    ]
    lines += _table(
        ["job", "actual", "on-demand", "saving", "first-spot", "saving", "GPU-h", "preempted", "moves"],
        rows,
        set(range(1, 9)),
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
        f"Migrations: {mg['migrations']} ({mg['price_moves']} on price, {mg['preemption_recoveries']} preemption "
        f"recoveries, {mg['rolled_back']} rolled back); price moves that paid off: {mg['paid_off']}, realized net "
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
    f = report.focus
    lines += [
        "",
        f"FOCUS 1.2: {f['rows']} charge rows, billed {f['currency'] or 'USD'} {_usd(f['billed_cost'])} "
        f"(list {_usd(f['list_cost'])}) over {f['billing_periods']} billing period(s); "
        "export with `spotshift focus export OUT.csv|OUT.parquet`",
    ]
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
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: at most this many quoted locations besides those the jobs used or moved between
PRICE_PLOT_LOCATIONS = 8


def plot_price_history(con: Any, path: Path) -> Path:
    """Spot price per GPU-hour per region over time, migrations marked; PNG at ``path``.

    One GPU model: the one the jobs used most (else the most quoted). One line per location: the
    cheapest spot instance of that model at each poll. Shown: every location a job ran in or moved
    between, plus the cheapest others on average; the time axis covers the jobs' runs when there
    are any (with a day either side), else all quotes.
    """
    import bisect

    plt = _pyplot()
    model = first_row(
        con,
        """SELECT coalesce(
               (SELECT gpu_model FROM fct_gpu_usage WHERE gpu_model IS NOT NULL
                GROUP BY 1 ORDER BY sum(gpu_hours) DESC, 1 LIMIT 1),
               (SELECT gpu_model FROM stg_spotshift__price_quotes WHERE market = 'spot' AND gpu_model IS NOT NULL
                GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1))""",
    )[0]
    window = first_row(
        con, "SELECT min(started_at) - INTERVAL 1 DAY, max(ended_at) + INTERVAL 1 DAY FROM fct_gpu_usage"
    )
    rows = con.execute(
        """WITH series AS (
               SELECT location, polled_at, min(price_usd_gpu_hour) AS price
               FROM stg_spotshift__price_quotes
               WHERE market = 'spot' AND gpu_model = ?
                 AND (CAST(? AS TIMESTAMP) IS NULL OR polled_at BETWEEN ? AND ?)
               GROUP BY ALL
           ),
           involved AS (
               SELECT location FROM fct_gpu_usage
               UNION SELECT from_location FROM fct_migrations
               UNION SELECT to_location FROM fct_migrations
           ),
           cheapest AS (
               SELECT location FROM series GROUP BY 1 ORDER BY avg(price), 1 LIMIT ?
           )
           SELECT location, polled_at, price FROM series
           WHERE location IN (SELECT location FROM involved UNION SELECT location FROM cheapest)
           ORDER BY location, polled_at""",
        [model, window[0], window[0], window[1], PRICE_PLOT_LOCATIONS],
    ).fetchall()
    moves = con.execute(
        "SELECT trigger, status, ended_at, to_location FROM fct_migrations ORDER BY ended_at, migration_id"
    ).fetchall()
    series: dict[str, tuple[list, list]] = {}
    for location, at, price in rows:
        xs, ys = series.setdefault(location, ([], []))
        xs.append(at)
        ys.append(price)
    # a price holds until the next poll: carry each line to the end of the window
    end = window[1] or max((xs[-1] for xs, _ in series.values()), default=None)
    fig, ax = plt.subplots(figsize=(11, 4.8), dpi=100)
    for name, (xs, ys) in series.items():
        if end is not None and xs[-1] < end:
            xs, ys = [*xs, end], [*ys, ys[-1]]
        ax.step(xs, ys, where="post", label=name, linewidth=1.2, marker="o", markersize=2, markevery=[0])
    styles = {
        "price": ("^", "tab:green", "price move"),
        "preemption": ("x", "tab:red", "preemption recovery"),
        "rollback": ("v", "tab:purple", "rollback"),
    }
    seen: set[str] = set()
    for trigger, status, at, to in moves:
        xs, ys = series.get(to, ([], []))
        i = bisect.bisect_right(xs, at) - 1
        if i < 0:
            continue
        marker, color, label = styles.get(trigger, ("o", "tab:gray", trigger))
        if status == "rolled_back":
            marker, color, label = "v", "tab:purple", "rolled back"
        ax.scatter(
            [at], [ys[i]], marker=marker, color=color, s=46, zorder=3, label=None if label in seen else label
        )
        seen.add(label)
    ax.set_title(f"Spot price per GPU-hour by region ({model or 'no quotes'}), with migrations")
    ax.set_ylabel("USD per GPU-hour (cheapest instance)")
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.text(
            0.5,
            0.5,
            "no spot price quotes in the warehouse",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    fig.autofmt_xdate()
    fig.tight_layout()
    return _save(fig, path)


def plot_cumulative_cost(con: Any, path: Path) -> Path:
    """Cumulative actual cost against the two baselines over time (hourly buckets); PNG at ``path``."""
    plt = _pyplot()
    rows = con.execute(
        """WITH events AS (
               SELECT ended_at AS ts, usd AS actual, on_demand_usd AS on_demand, first_spot_usd AS first_spot
               FROM fct_gpu_usage
               UNION ALL
               SELECT started_at, egress_usd, 0, 0 FROM fct_data_transfer WHERE job IS NOT NULL
           ),
           hourly AS (
               SELECT date_trunc('hour', ts) + INTERVAL 1 HOUR AS ts, sum(actual) AS actual,
                      sum(on_demand) AS on_demand, sum(first_spot) AS first_spot
               FROM events GROUP BY 1
           )
           SELECT ts,
                  sum(actual) OVER w, sum(on_demand) OVER w, sum(first_spot) OVER w
           FROM hourly WINDOW w AS (ORDER BY ts ROWS UNBOUNDED PRECEDING) ORDER BY ts"""
    ).fetchall()
    fig, ax = plt.subplots(figsize=(10, 4.8), dpi=100)
    if rows:
        xs = [r[0] for r in rows]
        ax.step(xs, [r[2] for r in rows], where="post", label="always on demand", color="tab:red")
        ax.step(
            xs, [r[3] for r in rows], where="post", label="stay on first spot location", color="tab:orange"
        )
        ax.step(
            xs, [r[1] for r in rows], where="post", label="actual (spotshift)", color="tab:blue", linewidth=2
        )
        ax.legend(loc="upper left")
    else:
        ax.text(
            0.5, 0.5, "no compute usage in the warehouse", ha="center", va="center", transform=ax.transAxes
        )
    ax.set_title("Cumulative cost of the same work: actual vs baselines")
    ax.set_ylabel("USD")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    import io

    from spotshift.atomic import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    _pyplot().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


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
        f"**{t['jobs']} training job(s): actual ${_usd(t['actual_usd'])}** — always on demand "
        f"${_usd(t['on_demand_usd'])} (saving {_pct(t['saving_vs_on_demand'])}), stay on first spot "
        f"${_usd(t['first_spot_usd'])} (saving {_pct(t['saving_vs_first_spot'])}).",
        "",
        "## Savings per job",
        "",
        "| job | actual $ | on-demand $ | saving | first-spot $ | saving | GPU-h | preempted | moves |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in report.savings:
        out.append(
            f"| {s['job']} | {_usd(s['actual_usd'])} | {_usd(s['on_demand_usd'])} | {_pct(s['saving_vs_on_demand'])} "
            f"| {_usd(s['first_spot_usd'])} | {_pct(s['saving_vs_first_spot'])} | {s['gpu_hours']:,.1f} "
            f"| {s['preemptions']} | {s['migrations']} |"
        )
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
        f"{mg['migrations']} migration(s): {mg['price_moves']} on price ({mg['paid_off']} paid off, realized net "
        f"${_usd(mg['realized_net_savings_usd'])}), {mg['preemption_recoveries']} preemption recoveries, "
        f"{mg['rolled_back']} rolled back; {mg['bytes_moved'] / 1e9:,.1f} GB moved for ${_usd(mg['egress_usd'])} egress.",
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
    f = report.focus
    out += [
        "## FOCUS 1.2",
        "",
        f"{f['rows']} charge rows, billed {f['currency'] or 'USD'} {_usd(f['billed_cost'])} over "
        f"{f['billing_periods']} billing period(s): `spotshift focus export OUT.csv`.",
    ]
    if report.unpriced:
        out += ["", "## Unpriced intervals", "", "Left out of every cost above.", ""]
        out += ["| job | location | intervals | steps | why |", "|---|---|---:|---:|---|"]
        out += [
            f"| {u['job']} | {u['location']} | {u['intervals']} | {u['steps']} | {u['reason']} |"
            for u in report.unpriced
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
