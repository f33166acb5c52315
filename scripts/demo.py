"""``make demo``: run spotshift end to end on the embedded defaults, one function per stage.

Issue 3 stages: initialise ``SPOTSHIFT_HOME``; choose the market (the real GCP history in
``../shared/data`` when present, else the synthetic multi-cloud market); set the shared virtual
clock inside it; materialize ``raw_price_quotes`` -> checks -> ``gpu_quotes`` through Dagster into
the instance at ``DAGSTER_HOME`` (``make ui`` shows the run); print the cheapest effective
GPU-hours per GPU model. Later issues add stages after :func:`stage_prices`.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def banner(title: str) -> None:
    """A visible stage header."""
    print(f"\n== {title}", flush=True)


def stage_home() -> Path:
    """Create ``SPOTSHIFT_HOME`` (Dagster instance config, stores, run dir) and point DAGSTER_HOME into it."""
    from spotshift.home import dagster_home, init_home

    home = init_home()
    os.environ.setdefault("DAGSTER_HOME", str(dagster_home()))
    banner("home")
    print(f"SPOTSHIFT_HOME {home}\nDAGSTER_HOME   {os.environ['DAGSTER_HOME']}")
    return home


def stage_market() -> Any:
    """Pick the price history the replay feed will serve, and say where it comes from."""
    from spotshift.pricing.feeds.replay import resolve_history
    from spotshift.pricing.synthetic import describe

    history = resolve_history()
    banner("market")
    first, last = history.frame["observed_at"].min(), history.frame["observed_at"].max()
    what = (
        describe() + " (SYNTHETIC: no ../shared/data)"
        if history.is_synthetic
        else f"real history {history.origin}"
    )
    print(f"{what}\n{history.frame.height} rows, {first:%Y-%m-%d} .. {last:%Y-%m-%d}")
    return history


def stage_clock(history: Any, *, speed: float = 1.0) -> datetime:
    """Start the shared virtual clock one hour after the newest observation of ``history``."""
    from spotshift.clock import VirtualClock

    start = history.frame["observed_at"].max() + timedelta(hours=1)
    VirtualClock.starting(start, speed).save()
    banner("clock")
    print(f"virtual clock starts at {start.isoformat()} (x{speed:g})")
    return start


def stage_prices(history: Any) -> Any:
    """Materialize ``raw_price_quotes`` -> blocking checks -> ``gpu_quotes`` with Dagster (job ``price_poll_job``)."""
    import dagster as dg

    os.environ["SPOTSHIFT_PRICE_FEED"] = "replay"
    if not history.is_synthetic:
        os.environ["SPOTSHIFT_PRICES"] = history.origin
    import definitions

    banner("prices: raw_price_quotes -> checks -> gpu_quotes")
    instance = dg.DagsterInstance.get()
    job = definitions.defs.resolve_job_def("price_poll_job")
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    result = job.execute_in_process(instance=instance, run_config=quiet, raise_on_error=False)
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            status = "passed" if evaluation.passed else "FAILED"
            print(f"  check {evaluation.check_name:30s} {status}")
    materialized = sorted(
        e.asset_key.to_user_string()
        for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION"
    )
    print(
        f"run {result.run_id}: {'success' if result.success else 'FAILED'}; materialized {', '.join(materialized)}"
    )
    if not result.success or "gpu_quotes" not in materialized:
        raise SystemExit("demo: the price poll failed; see the run in `make ui`")
    return result


def stage_cheapest() -> None:
    """Print the cheapest effective GPU-hour per GPU model from main.gpu_quotes (and for training)."""
    import polars as pl

    from spotshift.pricing.snapshots import cheapest_per_model, cheapest_table, latest_quotes
    from spotshift.warehouse import connect

    with connect(read_only=True) as con:
        quotes = latest_quotes(con)
    banner(f"cheapest effective GPU-hours ({quotes.height} validated quotes)")
    print(cheapest_table(cheapest_per_model(quotes)))
    banner("cheapest for distributed training (topology score >= 7: NVLink multi-GPU)")
    print(cheapest_table(cheapest_per_model(quotes.filter(pl.col("topology_score") >= 7))))


def stage_cost_report() -> None:
    """Run ``cost_report_job`` (dbt build of dbt_costs, then ``cost_report``) and print the report."""
    import contextlib
    import io

    import dagster as dg

    import definitions
    from spotshift.costs.marts import open_marts
    from spotshift.costs.report import format_text, read_report, reports_dir

    banner("costs: dbt_costs (dbt build) -> cost_report")
    instance = dg.DagsterInstance.get()
    job = definitions.defs.resolve_job_def("cost_report_job")
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    dbt_log = io.StringIO()  # dagster-dbt echoes dbt's log to stdout (a run's compute log)
    with contextlib.redirect_stdout(dbt_log):
        result = job.execute_in_process(instance=instance, run_config=quiet, raise_on_error=False)
    print(f"run {result.run_id}: {'success' if result.success else 'FAILED'}; report in {reports_dir()}")
    if not result.success:
        print("\n".join(dbt_log.getvalue().splitlines()[-30:]))
        raise SystemExit("demo: the cost report failed; see the run in `make ui`")
    with open_marts() as con:
        print(format_text(read_report(con, os.environ["SPOTSHIFT_WAREHOUSE"])), end="")


def main() -> int:
    """Run every stage in order."""
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    stage_home()
    history = stage_market()
    stage_clock(history)
    stage_prices(history)
    stage_cheapest()
    stage_cost_report()
    print(
        "\nnext: `make ui` (the runs above are in the instance), `spotshift quotes cheapest --gpu H100`, "
        "`spotshift report`, `spotshift focus export costs.csv`"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
