"""GPU price discovery assets: ``raw_price_quotes`` -> blocking quality checks -> ``gpu_quotes``.

``raw_price_quotes`` polls the configured feed (resource ``prices``) at the virtual clock's time
and appends the normalized snapshot to ``raw.price_quotes``; five blocking Great Expectations
checks validate it; only then does ``gpu_quotes`` append it to ``main.gpu_quotes`` (what placement
reads) and register every quoted ``provider/region`` as a ``regions`` dynamic partition. Snapshots
are content-addressed, so re-polling an unchanged market writes nothing.
"""

import json
from typing import Any

import dagster as dg

from assets.partitions import regions_partitions
from resources.prices import PriceFeedResource
from resources.warehouse import WarehouseResource
from spotshift.pricing import snapshots
from spotshift.pricing.expectations import CHECKS

GROUP = "prices"


@dg.asset(
    group_name=GROUP,
    kinds={"python", "duckdb"},
    description="One poll of the configured price feed, normalized to NormalizedGPUQuote rows in raw.price_quotes.",
)
def raw_price_quotes(
    context: dg.AssetExecutionContext, prices: PriceFeedResource, warehouse: WarehouseResource
) -> dg.Output[dict[str, Any]]:
    now = prices.now()
    snapshot = snapshots.take_snapshot(prices.open_feed(), now)
    with warehouse.get_connection() as con:
        written = snapshots.store_snapshot(con, snapshot, snapshots.RAW_TABLE)
    report = snapshot.report
    context.log.info(f"snapshot {snapshot.snapshot_id} from {snapshot.feed}: {report.summary()}")
    cheapest = snapshots.cheapest_per_model(snapshot.quotes)
    return dg.Output(
        {"snapshot_id": snapshot.snapshot_id, "polled_at": now.isoformat(), "feed": snapshot.feed},
        metadata={
            "snapshot_id": snapshot.snapshot_id,
            "feed": snapshot.feed,
            "polled_at": now.isoformat(),
            "quotes": snapshot.quotes.height,
            "rows_written": written,
            "new_snapshot": written > 0,
            "accepted": report.accepted,
            "rejected": report.rejected_total,
            "rejected_by_reason": dg.MetadataValue.json(report.rejected),
            "unknown_instance_types": dg.MetadataValue.json(report.unknown_instance_types),
            "locations": len(snapshot.locations),
            "cheapest_per_gpu_model": dg.MetadataValue.md(snapshots.cheapest_table(cheapest, markdown=True)),
        },
    )


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(name, asset=raw_price_quotes, blocking=True, description=description)
        for name, description in CHECKS.items()
    ],
    ins={"raw_price_quotes": dg.AssetIn(key=raw_price_quotes.key)},
    description="Great Expectations suites over the polled snapshot; a failure blocks gpu_quotes.",
)
def raw_price_quotes_quality(
    raw_price_quotes: dict[str, Any], prices: PriceFeedResource, warehouse: WarehouseResource
):
    from spotshift.pricing.expectations import validate_snapshot

    config = prices.config()
    with warehouse.get_connection() as con:
        frame = snapshots.read_snapshot(
            con, raw_price_quotes["snapshot_id"], snapshots.RAW_TABLE, missing_ok=True
        )
    outcomes = validate_snapshot(
        frame,
        prices.open_feed().clock(prices.now()),  # freshness on the feed's own clock
        max_quote_age_hours=config.quote_age_limit_hours,
        spot_tolerance=config.spot_tolerance,
    )
    for outcome in outcomes:
        yield dg.AssetCheckResult(
            asset_key="raw_price_quotes",
            check_name=outcome.name,
            passed=outcome.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=outcome.summary(),
            metadata={
                "snapshot_id": raw_price_quotes["snapshot_id"],
                "rows": dg.MetadataValue.int(outcome.evaluated),
                # the measured figures as numbers, so the UI plots them (quote age, not row counts)
                **{key: dg.MetadataValue.float(value) for key, value in outcome.measured.items()},
                "failures": dg.MetadataValue.json(json.loads(json.dumps(outcome.failures, default=str))),
            },
        )


@dg.asset(
    group_name=GROUP,
    kinds={"duckdb"},
    ins={"raw_price_quotes": dg.AssetIn(key=raw_price_quotes.key)},
    description="Validated GPU quotes (main.gpu_quotes): the latest checked snapshot placement reads.",
)
def gpu_quotes(
    context: dg.AssetExecutionContext, raw_price_quotes: dict[str, Any], warehouse: WarehouseResource
) -> dg.Output[dict[str, Any]]:
    snapshot_id = raw_price_quotes["snapshot_id"]
    with warehouse.get_connection() as con:
        snapshot = snapshots.snapshot_from_table(con, snapshot_id, snapshots.RAW_TABLE)
        written = snapshots.store_snapshot(con, snapshot, snapshots.CURATED_TABLE)
    known = set(context.instance.get_dynamic_partitions(regions_partitions.name))
    new_regions = [loc for loc in snapshot.locations if loc not in known]
    if new_regions:
        context.instance.add_dynamic_partitions(regions_partitions.name, new_regions)
    cheapest = snapshots.cheapest_per_model(snapshot.quotes)
    return dg.Output(
        {"snapshot_id": snapshot_id},
        metadata={
            "snapshot_id": snapshot_id,
            "quotes": snapshot.quotes.height,
            "rows_written": written,
            "new_snapshot": written > 0,
            "locations": len(snapshot.locations),
            "regions_registered": len(new_regions),
            "cheapest_per_gpu_model": dg.MetadataValue.md(snapshots.cheapest_table(cheapest, markdown=True)),
            "cheapest": dg.MetadataValue.json(
                [
                    {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()}
                    for r in cheapest.iter_rows(named=True)
                ]
            ),
        },
    )


defs = dg.Definitions(assets=[raw_price_quotes, gpu_quotes], asset_checks=[raw_price_quotes_quality])
