"""The cost report's plots (matplotlib, Agg backend, no display needed), from the marts.

* ``price_history.png`` — the effective spot price per GPU-hour of each region (what placement
  ranks: the cheapest instance of the jobs' GPU model and count at each poll, slow network and
  storage priced in) over the jobs' time span, with each migration marked where it landed;
* ``cumulative_cost.png`` — the fleet's cumulative actual cost (compute + egress) against always
  on demand and staying on each job's first spot location paying for its preemptions, with the
  never-preempted bound dashed, for the same work, over the jobs' own time span.

The data of each plot comes from a function of its own (:func:`price_series`,
:func:`cost_series`), so what a plot shows is tested without reading pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spotshift.atomic import atomic_write_bytes
from spotshift.warehouse import first_row

PRICE_PLOT = "price_history.png"
COST_PLOT = "cumulative_cost.png"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: at most this many quoted locations besides those the jobs used or moved between
PRICE_PLOT_LOCATIONS = 8


def price_series(con: Any) -> tuple[str | None, tuple[Any, Any], dict[str, tuple[list, list]]]:
    """(GPU model, time window, {location: (poll times, effective USD per GPU-hour)}) of the price plot.

    The price is the effective GPU-hour placement ranks candidates by (``effective_gpu_hour_usd``:
    slow network and storage priced in, DESIGN §3), of the cheapest spot instance of the jobs' GPU
    model and count at each poll — so the plot shows what the decisions saw, not raw list prices.
    """
    model, count = first_row(
        con,
        """SELECT coalesce(
               (SELECT gpu_model FROM fct_gpu_usage WHERE gpu_model IS NOT NULL
                GROUP BY 1 ORDER BY sum(gpu_hours) DESC, 1 LIMIT 1),
               (SELECT gpu_model FROM stg_spotshift__price_quotes WHERE market = 'spot' AND gpu_model IS NOT NULL
                GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1)),
           (SELECT gpu_count FROM fct_gpu_usage WHERE gpu_model IS NOT NULL
            GROUP BY 1 ORDER BY sum(gpu_hours) DESC, 1 LIMIT 1)""",
    )
    window = job_window(con)
    rows = con.execute(
        """WITH series AS (
               SELECT location, polled_at,
                      min(coalesce(effective_gpu_hour_usd, price_usd_hour / nullif(gpu_count, 0))) AS price
               FROM stg_spotshift__price_quotes
               WHERE market = 'spot' AND gpu_model = ?
                 AND (CAST(? AS INTEGER) IS NULL OR gpu_count = ?)
                 -- from the poll in force when the window opens (prices hold until the next poll)
                 AND (CAST(? AS TIMESTAMP) IS NULL OR polled_at BETWEEN coalesce(
                     (SELECT max(polled_at) FROM stg_spotshift__price_quotes WHERE polled_at <= ?), ?) AND ?)
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
        [model, count, count, window[0], window[0], window[0], window[1], PRICE_PLOT_LOCATIONS],
    ).fetchall()
    series: dict[str, tuple[list, list]] = {}
    for location, at, price in rows:
        xs, ys = series.setdefault(location, ([], []))
        xs.append(at)
        ys.append(price)
    return model, window, series


def job_window(con: Any) -> tuple[Any, Any]:
    """The jobs' time span with a day either side (None, None without compute usage): the plots' axis."""
    return first_row(
        con, "SELECT min(started_at) - INTERVAL 1 DAY, max(ended_at) + INTERVAL 1 DAY FROM fct_gpu_usage"
    )


def plot_price_history(con: Any, path: Path) -> Path:
    """Effective spot price per GPU-hour per region over time, migrations marked; PNG at ``path``.

    One GPU model: the one the jobs used most (else the most quoted). One line per location
    (:func:`price_series`). Shown: every location a job ran in or moved between, plus the cheapest
    others on average; the time axis covers the jobs' runs when there are any (with a day either
    side), else all quotes.
    """
    import bisect

    plt = _pyplot()
    model, window, series = price_series(con)
    moves = con.execute(
        "SELECT trigger, status, ended_at, to_location FROM fct_migrations ORDER BY ended_at, migration_id"
    ).fetchall()
    # a price holds until the next poll: carry each line to the end of the window
    end = window[1] or max((xs[-1] for xs, _ in series.values()), default=None)
    fig, ax = plt.subplots(figsize=(11, 4.8), dpi=100)
    for name, (xs, ys) in series.items():
        if end is not None and xs[-1] < end:
            xs, ys = [*xs, end], [*ys, ys[-1]]
        ax.step(xs, ys, where="post", label=name, linewidth=1.2, marker="o", markersize=2, markevery=[0])
    styles = {
        "place": ("o", "tab:blue", "initial placement"),
        "price": ("^", "tab:green", "price move"),
        "preemption": ("x", "tab:red", "preemption recovery"),
    }
    seen: set[str] = set()
    for trigger, status, at, to in moves:
        xs, ys = series.get(to, ([], []))
        i = bisect.bisect_right(xs, at) - 1
        if i < 0:
            continue
        marker, color, label = styles.get(trigger, ("o", "tab:gray", f"trigger {trigger}"))
        if status == "rolled_back":  # a move that was undone keeps its trigger's name
            marker, color, label = "v", "tab:purple", f"{label}, rolled back"
        ax.scatter(
            [at], [ys[i]], marker=marker, color=color, s=46, zorder=3, label=None if label in seen else label
        )
        seen.add(label)
    ax.set_title(f"Effective spot price per GPU-hour by region ({model or 'no quotes'}), with migrations")
    ax.set_ylabel("USD per effective GPU-hour (as placement ranks)")
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


def cost_series(con: Any) -> list[tuple[Any, float, float, float, float]]:
    """Hourly cumulative (time, actual, always on demand, stay on first spot, first-spot bound), USD.

    Over the jobs' own time span: a transfer dated outside it (a clock mix-up in its writer) counts
    at the nearest end of the span instead of stretching the axis to another year. Stay on first
    spot is each interval's never-preempted figure times its job's preemption factor (mart_savings).
    """
    return con.execute(
        """WITH span AS (
               SELECT min(started_at) AS t0, max(ended_at) AS t1 FROM fct_gpu_usage
           ),
           factor AS (
               SELECT job, stay_first_spot_usd / nullif(first_spot_bound_usd, 0) AS f FROM mart_savings
           ),
           events AS (
               SELECT u.ended_at AS ts, u.usd AS actual, u.on_demand_usd AS on_demand,
                      u.first_spot_usd * f.f AS stay, u.first_spot_usd AS bound
               FROM fct_gpu_usage AS u LEFT JOIN factor AS f ON u.job = f.job
               UNION ALL
               SELECT least(greatest(t.started_at, s.t0), s.t1), t.egress_usd, 0, 0, 0
               FROM fct_data_transfer AS t, span AS s WHERE t.job IS NOT NULL
           ),
           hourly AS (
               SELECT date_trunc('hour', ts) + INTERVAL 1 HOUR AS ts, sum(actual) AS actual,
                      sum(on_demand) AS on_demand, sum(stay) AS stay, sum(bound) AS bound
               FROM events GROUP BY 1
           )
           SELECT ts, sum(actual) OVER w, sum(on_demand) OVER w, sum(stay) OVER w, sum(bound) OVER w
           FROM hourly WINDOW w AS (ORDER BY ts ROWS UNBOUNDED PRECEDING) ORDER BY ts"""
    ).fetchall()


def plot_cumulative_cost(con: Any, path: Path) -> Path:
    """Cumulative actual cost against the baselines and the bound over the jobs' time (hourly); PNG."""
    plt = _pyplot()
    rows = cost_series(con)
    fig, ax = plt.subplots(figsize=(10, 4.8), dpi=100)
    if rows:
        xs = [r[0] for r in rows]
        ax.step(xs, [r[2] for r in rows], where="post", label="always on demand", color="tab:red")
        if all(r[3] is not None for r in rows):
            ax.step(
                xs,
                [r[3] for r in rows],
                where="post",
                label="stay on first spot, paying for its preemptions",
                color="tab:orange",
            )
        ax.step(
            xs,
            [r[4] for r in rows],
            where="post",
            label="bound: first spot never preempted",
            color="tab:gray",
            linestyle="--",
        )
        ax.step(
            xs, [r[1] for r in rows], where="post", label="actual (spotshift)", color="tab:blue", linewidth=2
        )
        ax.set_xlim(xs[0] - (xs[-1] - xs[0]) * 0.02, xs[-1] + (xs[-1] - xs[0]) * 0.02)
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

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    _pyplot().close(fig)
    return atomic_write_bytes(path, buf.getvalue())
