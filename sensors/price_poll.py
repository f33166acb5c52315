"""``price_poll_schedule``: poll the price feed every minute (DESIGN: "polls spot pricing APIs every 60 s").

Each tick materializes ``raw_price_quotes`` -> checks -> ``gpu_quotes`` (job ``price_poll_job``).
The run key is the tick's scheduled minute, so a re-evaluated tick never starts a second run;
an unchanged market produces the same snapshot id and writes nothing. Off by default: start it in
the UI (Automation) or with ``dagster schedule start price_poll_schedule``.
"""

import dagster as dg

from assets.quotes import gpu_quotes, raw_price_quotes, raw_price_quotes_quality

price_poll_job = dg.define_asset_job(
    "price_poll_job",
    # the snapshot's own quality checks; the dbt source tests on raw_price_quotes run with the marts
    selection=dg.AssetSelection.assets(raw_price_quotes, gpu_quotes).without_checks()
    | dg.AssetSelection.checks(raw_price_quotes_quality),
    description="Poll the configured price feed, validate the snapshot, publish main.gpu_quotes.",
    tags={"spotshift/domain": "prices"},
)


@dg.schedule(
    name="price_poll_schedule",
    job=price_poll_job,
    cron_schedule="* * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Poll GPU prices every minute.",
)
def price_poll_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    tick = context.scheduled_execution_time
    run_key = f"price-poll-{tick:%Y%m%dT%H%M}Z" if tick is not None else None
    return dg.RunRequest(run_key=run_key, tags={"spotshift/trigger": "price_poll_schedule"})


defs = dg.Definitions(jobs=[price_poll_job], schedules=[price_poll_schedule])
