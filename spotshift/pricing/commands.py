"""``spotshift quotes ...``: normalize native price files, poll a feed, query the cheapest GPU-hours.

Standard library only at module level (the CLI's start-up time is measured); polars, boto3,
DuckDB and Great Expectations are imported inside the handlers that need them.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

PROVIDERS = ("aws", "gcp", "azure", "replay")
MARKET_CHOICES = ("spot", "on_demand")


def register(subparsers: Any) -> None:
    """Add the ``quotes`` command group."""
    quotes = subparsers.add_parser(
        "quotes",
        help="GPU price discovery: normalize provider price files, poll feeds, cheapest GPU-hours",
        description="GPU price discovery across AWS, GCP and Azure (see README, 'Price discovery').",
    )
    sub = quotes.add_subparsers(dest="quotes_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser(
        "normalize",
        help="print one normalized quote per price in a saved provider response or history CSV",
        description=(
            "Parse FILE in the provider's native format and print one NormalizedGPUQuote per accepted "
            "price (fields: provider, region, zone, instance_type, gpu_model, gpu_count, market, "
            "price_usd_hour, effective_gpu_hour_usd, net_gbps, storage_gbps, topology_score, "
            "observed_at, source). aws: a describe_spot_price_history or pricing get_products response "
            "(detected); gcp: a Cloud Billing Catalog skus.list response; azure: a Retail Prices API "
            "response; replay: a price-history CSV. A JSON list of response pages is accepted too. "
            "Rejected prices and unknown instance types are counted on stderr."
        ),
    )
    p.add_argument("--provider", required=True, choices=PROVIDERS, help="format of FILE")
    p.add_argument("file", metavar="FILE", help="saved API response (JSON) or price history (CSV)")
    p.add_argument(
        "--format", choices=("csv", "json"), default="csv", help="csv with header (default) or JSON lines"
    )
    p.set_defaults(handler=_normalize)

    p = sub.add_parser(
        "cheapest",
        help="cheapest effective GPU-hour per GPU model in the warehouse (latest snapshot of each feed)",
    )
    p.add_argument("--gpu", metavar="MODEL", help="only this GPU model (e.g. A100-80GB, h100, l4)")
    p.add_argument("--market", choices=MARKET_CHOICES, help="only spot or only on-demand quotes")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_cheapest)

    p = sub.add_parser(
        "poll",
        help="poll the configured feed once into the warehouse (validated, no Dagster)",
        description=(
            "Poll a feed at the virtual clock's time, append the snapshot to raw.price_quotes, run the "
            "quality checks and, when they pass, append it to main.gpu_quotes. Exit 1 when a check fails. "
            "The replay feed past the end of its history serves its last week as a frozen market (with "
            "its true dates; freshness is judged on the replay's clock). "
            "Feed options come from SPOTSHIFT_* variables (see README)."
        ),
    )
    p.add_argument(
        "--feed", choices=PROVIDERS[::-1], help="feed to poll (default: $SPOTSHIFT_PRICE_FEED or replay)"
    )
    p.add_argument(
        "--prices",
        metavar="FILE",
        help="history CSV for the replay feed (default: shared real history, else synthetic)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_poll)

    p = sub.add_parser(
        "synthetic",
        help="write the generated (synthetic) multi-cloud market as a price-history CSV",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="CSV to write (atomically)")
    p.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seed of the generated market (default 0)"
    )
    p.add_argument(
        "--start", default="2023-01-04", metavar="DATE", help="first week, ISO date (default 2023-01-04)"
    )
    p.add_argument("--weeks", type=int, default=104, metavar="N", help="weeks of prices (default 104)")
    p.set_defaults(handler=_synthetic)

    p = sub.add_parser("catalog", help="list the GPU instance catalog with topology scores")
    p.add_argument("--provider", choices=PROVIDERS[:3], help="only this provider's instance types")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_catalog)


def _read_native(provider: str, path: str) -> Any:
    if provider == "aws":
        from spotshift.pricing.feeds.aws import read_aws_file

        return read_aws_file(path)
    if provider == "gcp":
        from spotshift.pricing.feeds.gcp import read_gcp_file

        return read_gcp_file(path)
    if provider == "azure":
        from spotshift.pricing.feeds.azure import read_azure_file

        return read_azure_file(path)
    from spotshift.pricing.feeds.replay import history_to_raw, load_history_file

    return history_to_raw(load_history_file(path))


def _normalize(args: argparse.Namespace) -> int:
    import csv
    import json

    from spotshift.pricing.normalize import normalize_frame, quotes_from_frame
    from spotshift.pricing.quote import QUOTE_FIELDS

    raw = _read_native(args.provider, args.file)
    quotes, report = normalize_frame(raw, latest_only=False)
    out = sys.stdout
    if args.format == "csv":
        writer = csv.DictWriter(out, fieldnames=list(QUOTE_FIELDS), lineterminator="\n")
        writer.writeheader()
        for q in quotes_from_frame(quotes):
            writer.writerow(q.to_dict())
    else:
        for q in quotes_from_frame(quotes):
            out.write(json.dumps(q.to_dict(), sort_keys=False) + "\n")
    out.flush()
    sys.stderr.write(f"spotshift: {args.file}: {report.summary()}\n")
    return 0


def _cheapest(args: argparse.Namespace) -> int:
    from spotshift.cliutil import emit_json
    from spotshift.errors import ConfigError, NotFoundError
    from spotshift.home import warehouse_path
    from spotshift.pricing.catalog import GPU_MODELS, canonical_gpu_model
    from spotshift.pricing.snapshots import cheapest_per_model, cheapest_table, latest_quotes
    from spotshift.warehouse import connect

    gpu = None
    if args.gpu:
        gpu = canonical_gpu_model(args.gpu)
        if gpu is None:
            raise ConfigError(f"--gpu {args.gpu!r} is not a known GPU model (known: {', '.join(GPU_MODELS)})")
    path = warehouse_path()
    if not path.exists():
        raise NotFoundError(
            f"warehouse {path} does not exist yet: run `spotshift quotes poll` or `make demo`"
        )
    import duckdb

    try:
        with connect(path, read_only=True) as con:
            quotes = latest_quotes(con)
    except duckdb.CatalogException:
        raise NotFoundError(
            f"warehouse {path} has no gpu_quotes table yet: run `spotshift quotes poll`"
        ) from None
    best = cheapest_per_model(quotes, gpu_model=gpu, market=args.market)
    rows = [
        {**r, "observed_at": r["observed_at"].isoformat(), "polled_at": r["polled_at"].isoformat()}
        for r in best.iter_rows(named=True)
    ]
    if args.json:
        emit_json({"snapshots": sorted(set(quotes["snapshot_id"].to_list())), "cheapest": rows})
        return 0
    print(cheapest_table(best) if rows else "no quotes match")
    return 0


def _poll(args: argparse.Namespace) -> int:
    from spotshift.cliutil import emit_json
    from spotshift.clock import virtual_now
    from spotshift.pricing.config import FeedConfig
    from spotshift.pricing.snapshots import poll_into_warehouse

    config = FeedConfig.from_env(feed=args.feed, history_path=args.prices)
    now = virtual_now()
    result = poll_into_warehouse(
        config.open(),
        now,
        max_quote_age_hours=config.quote_age_limit_hours,
        spot_tolerance=config.spot_tolerance,
    )
    snap = result.snapshot
    if args.json:
        emit_json(
            {
                "snapshot_id": snap.snapshot_id,
                "feed": snap.feed,
                "polled_at": now.isoformat(),
                "quotes": snap.quotes.height,
                "raw_rows_written": result.raw_rows_written,
                "curated_rows_written": result.curated_rows_written,
                "report": snap.report.to_dict(),
                "checks": {c.name: {"passed": c.passed, "failures": c.failures} for c in result.checks},
                "passed": result.passed,
                "feed_clock": result.feed_clock.isoformat() if result.feed_clock else None,
                "feed_note": result.feed_note,
            }
        )
    else:
        print(f"snapshot {snap.snapshot_id} from {snap.feed} at {now.isoformat()}: {snap.report.summary()}")
        if result.feed_note:
            print(f"  {result.feed_note}")
        print(
            f"raw.price_quotes +{result.raw_rows_written} rows, main.gpu_quotes +{result.curated_rows_written} rows"
        )
        for c in result.checks:
            print(f"  {c.summary()}")
        if not result.passed:
            print(
                "the snapshot failed its checks and stays in raw.price_quotes only; placement reads "
                "main.gpu_quotes, so fix what failed above and poll again"
            )
    return 0 if result.passed else 1


def _synthetic(args: argparse.Namespace) -> int:
    from spotshift.pricing.synthetic import describe, write_synthetic_history

    path = write_synthetic_history(args.out, seed=args.seed, start=args.start, weeks=args.weeks)
    print(f"wrote {path} ({describe()}, {args.weeks} weeks from {args.start}, seed {args.seed}; SYNTHETIC)")
    return 0


def _catalog(args: argparse.Namespace) -> int:
    from spotshift.cliutil import emit_json
    from spotshift.pricing.catalog import load_catalog

    entries = [e for e in load_catalog() if not args.provider or e.provider == args.provider]
    if args.json:
        emit_json({"instances": [{**e.__dict__, "topology_score": e.topology_score} for e in entries]})
        return 0
    print(
        f"{'provider':8s} {'instance_type':27s} {'gpu':11s} {'n':>2s} {'nvlink':6s} {'net':>6s} {'disk':>6s} topo"
    )
    for e in entries:
        print(
            f"{e.provider:8s} {e.instance_type:27s} {e.gpu_model:11s} {e.gpu_count:2d} "
            f"{'yes' if e.nvlink else 'no':6s} {e.net_gbps:6.0f} {e.storage_gbps:6.1f} {e.topology_score:.0f}"
        )
    return 0
