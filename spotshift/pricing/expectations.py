"""Quality checks of a quote snapshot, as Great Expectations 1.x suites (ephemeral context).

Five checks, each one GX suite run over a pandas view of the snapshot (:data:`CHECKS`):

``quotes_keys_not_null``         at least one quote; no null key or price; known provider and market
``quotes_price_ranges``          every GPU model is known and its list price per GPU-hour lies in
                                 :data:`PRICE_RANGE_PER_GPU_HOUR`; effective GPU-hour > 0
``quotes_spot_below_on_demand``  spot <= on-demand x (1 + tolerance) for the same provider, region
                                 and instance type (providers cap spot at on-demand)
``quotes_unique_per_snapshot``   no (snapshot, provider, region, zone, instance, market) twice
``quotes_fresh``                 the newest quote is at most ``max_quote_age_hours`` older than
                                 the feed's clock (``PriceFeed.clock``: the virtual clock for live
                                 feeds, the replayed time for a replay), and none is from the future

Great Expectations takes ~6 s to import, so it is imported inside the functions that build and run
the suites (:func:`validate_snapshot`'s steps), never at module load (Dagster loads this code
location often).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from spotshift.pricing.catalog import GPU_MODELS, PROVIDERS
from spotshift.pricing.normalize import QUOTE_KEY
from spotshift.pricing.quote import MARKETS

CHECKS: dict[str, str] = {
    "quotes_keys_not_null": "At least one quote; keys and prices are never null; provider and market are known.",
    "quotes_price_ranges": "Each GPU model's price per GPU-hour lies in its plausible range.",
    "quotes_spot_below_on_demand": "Spot <= on-demand (within tolerance) for the same instance type and region.",
    "quotes_unique_per_snapshot": "No quote key appears twice in a snapshot.",
    "quotes_fresh": "The newest quote is recent on the feed's clock, and none is from the future.",
}

#: what to do when a check fails (appended to the failed check's summary)
CHECK_REMEDIES: dict[str, str] = {
    "quotes_keys_not_null": "the feed returned no usable quotes or incomplete rows: check the feed's "
    "credentials and region list, or the history file (spotshift quotes normalize shows every row)",
    "quotes_price_ranges": "a price per GPU-hour is implausible (a parsing or currency error): inspect the "
    "feed's rows with spotshift quotes normalize",
    "quotes_spot_below_on_demand": "a spot price exceeds on-demand for the same instance: the feed mixes "
    "up markets or regions; inspect it with spotshift quotes normalize",
    "quotes_unique_per_snapshot": "the feed returned the same quote twice: report it as a feed bug",
    "quotes_fresh": "the feed's newest quote is older than the limit (it stopped publishing) or dated in "
    "the future: check the feed, or raise the limit with SPOTSHIFT_MAX_QUOTE_AGE_H",
}

#: plausible instance price per GPU-hour (USD), spot and on-demand, any region. Outside this a
#: quote is a feed or parsing error (a missing GPU component, a per-month price, a currency mix-up).
PRICE_RANGE_PER_GPU_HOUR: dict[str, tuple[float, float]] = {
    "T4-16GB": (0.02, 3.0),
    "L4-24GB": (0.02, 4.0),
    "A10G-24GB": (0.03, 6.0),
    "L40S-48GB": (0.05, 10.0),
    "A100-40GB": (0.10, 12.0),
    "A100-80GB": (0.10, 15.0),
    "H100-80GB": (0.20, 25.0),
    "H200-141GB": (0.25, 30.0),
}
assert set(PRICE_RANGE_PER_GPU_HOUR) == set(GPU_MODELS)

KEY_COLUMNS = (
    "snapshot_id",
    "polled_at",
    "provider",
    "region",
    "zone",
    "instance_type",
    "gpu_model",
    "gpu_count",
    "market",
    "price_usd_hour",
    "effective_gpu_hour_usd",
    "observed_at",
    "source",
)
#: replay histories are weekly with gaps of up to two weeks; live feeds publish continuously
DEFAULT_MAX_QUOTE_AGE_HOURS = {"replay": 15 * 24.0, "live": 72.0}


@dataclass
class CheckOutcome:
    """Result of one check: passed or not, and what failed (expectation, column, count, examples)."""

    name: str
    passed: bool
    description: str
    failures: list[dict[str, Any]] = field(default_factory=list)
    evaluated: int = 0  # rows the suite looked at
    #: what the check measured, by name with its unit (``quote_age_hours``, ``unexpected_values``...):
    #: numbers a UI can plot over time, passed or not
    measured: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """One line."""
        if self.passed:
            return f"{self.name}: passed ({self.evaluated} rows)"
        parts = []
        for f in self.failures:
            target = f.get("column") or f.get("column_list") or f.get("column_B") or ""
            count = f.get("unexpected_count", f.get("observed_value", "?"))
            parts.append(f"{f['expectation']}({target}): {count}")
        remedy = CHECK_REMEDIES.get(self.name)
        return f"{self.name}: FAILED " + "; ".join(parts) + (f" ({remedy})" if remedy else "")


def spot_vs_on_demand(snapshot: Any, tolerance: float) -> Any:
    """Spot quotes joined to the lowest on-demand price of the same provider, region and instance type."""
    import polars as pl

    keys = ["provider", "region", "instance_type"]
    on_demand = (
        snapshot.filter(pl.col("market") == "on_demand")
        .group_by(keys)
        .agg(pl.col("price_usd_hour").min().alias("on_demand_usd_hour"))
    )
    return (
        snapshot.filter(pl.col("market") == "spot")
        .join(on_demand, on=keys, how="inner")
        .select(
            *keys,
            "zone",
            pl.col("price_usd_hour").alias("spot_usd_hour"),
            "on_demand_usd_hour",
            (pl.col("on_demand_usd_hour") * (1 + tolerance)).alias("on_demand_limit_usd_hour"),
        )
    )


def _failures(result: Any) -> list[dict[str, Any]]:
    out = []
    for r in result.results:
        if r.success:
            continue
        kwargs = dict(r.expectation_config.kwargs)
        detail: dict[str, Any] = {"expectation": r.expectation_config.type}
        for key in ("column", "column_A", "column_B", "column_list", "min_value", "max_value"):
            if kwargs.get(key) is not None:
                detail[key] = kwargs[key]
        condition = kwargs.get("row_condition")
        if condition is not None:
            detail["row_condition"] = str(condition)
        res = r.result or {}
        for key in ("unexpected_count", "observed_value"):
            if key in res:
                detail[key] = res[key]
        if res.get("partial_unexpected_list"):
            detail["examples"] = [str(x) for x in res["partial_unexpected_list"][:5]]
        out.append(detail)
    return out


def validate_snapshot(
    snapshot: Any,
    now: datetime,
    *,
    max_quote_age_hours: float = DEFAULT_MAX_QUOTE_AGE_HOURS["replay"],
    spot_tolerance: float = 0.01,
    future_tolerance_hours: float = 1.0,
) -> list[CheckOutcome]:
    """Run the five suites of :data:`CHECKS` over a snapshot frame (warehouse row shape, polars).

    ``now`` is the feed's clock (:meth:`spotshift.pricing.feeds.PriceFeed.clock`). Returns one :class:`CheckOutcome` per check, in
    :data:`CHECKS` order.
    """
    context, batches = _ephemeral_context()

    def run(name: str, frame: Any, expectations: list[Any]) -> CheckOutcome:
        return _run_suite(context, batches, name, frame, expectations, max_quote_age_hours)

    per_gpu = _with_price_per_gpu(snapshot)
    return [
        run("quotes_keys_not_null", snapshot, _keys_not_null_expectations()),
        run("quotes_price_ranges", per_gpu, _price_range_expectations(per_gpu)),
        run(
            "quotes_spot_below_on_demand",
            spot_vs_on_demand(snapshot, spot_tolerance),
            _spot_below_on_demand_expectations(),
        ),
        run("quotes_unique_per_snapshot", snapshot, _unique_expectations()),
        run(
            "quotes_fresh",
            _quote_ages(snapshot, now),
            _fresh_expectations(max_quote_age_hours, future_tolerance_hours),
        ),
    ]


def _ephemeral_context() -> tuple[Any, Any]:
    """A Great Expectations ephemeral context (quiet, no progress bars) and its pandas data source."""
    import logging

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context, context.data_sources.add_pandas("spotshift_quotes")


def _run_suite(
    context: Any, batches: Any, name: str, frame: Any, expectations: list[Any], max_quote_age_hours: float
) -> CheckOutcome:
    """Check ``name``: its expectations as one suite over ``frame``, with what it measured."""
    import great_expectations as gx

    asset = batches.add_dataframe_asset(name)
    batch = asset.add_batch_definition_whole_dataframe(f"{name}_whole")
    suite = context.suites.add(gx.ExpectationSuite(name=f"{name}_suite"))
    for e in expectations:
        suite.add_expectation(e)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=name, data=batch, suite=suite)
    )
    result = definition.run(batch_parameters={"dataframe": frame.to_pandas()})
    failures = _failures(result)
    unexpected = sum(int(f.get("unexpected_count") or 0) for f in failures)
    measured = {"unexpected_values": float(unexpected), **_measure(name, frame, max_quote_age_hours)}
    return CheckOutcome(name, bool(result.success), CHECKS[name], failures, frame.height, measured)


def _measure(name: str, frame: Any, max_quote_age_hours: float) -> dict[str, float]:
    """The check's own measurement (the figure its expectations bound), for plotting."""
    if frame.height == 0:
        return {}
    if name == "quotes_price_ranges":
        return {"max_price_per_gpu_hour_usd": float(frame["price_per_gpu_hour_usd"].max() or 0.0)}
    if name == "quotes_spot_below_on_demand":
        ratio = (frame["spot_usd_hour"] / frame["on_demand_usd_hour"]).max()
        return {"max_spot_to_on_demand_ratio": float(ratio or 0.0)}
    if name == "quotes_unique_per_snapshot":
        keys = ["snapshot_id", *QUOTE_KEY]
        return {"duplicate_quotes": float(frame.height - frame.select(keys).unique().height)}
    if name == "quotes_fresh":
        return {
            "quote_age_hours": float(frame["quote_age_hours"].min()),
            "oldest_quote_age_hours": float(frame["quote_age_hours"].max()),
            "max_quote_age_hours": float(max_quote_age_hours),
        }
    return {}


def _keys_not_null_expectations() -> list[Any]:
    """``quotes_keys_not_null``: at least one row, no null key, known provider and market."""
    import great_expectations.expectations as gxe

    return (
        [gxe.ExpectTableRowCountToBeBetween(min_value=1)]
        + [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in KEY_COLUMNS]
        + [
            gxe.ExpectColumnValuesToBeInSet(column="provider", value_set=list(PROVIDERS)),
            gxe.ExpectColumnValuesToBeInSet(column="market", value_set=list(MARKETS)),
        ]
    )


def _with_price_per_gpu(snapshot: Any) -> Any:
    """The snapshot with ``price_per_gpu_hour_usd`` (the figure :data:`PRICE_RANGE_PER_GPU_HOUR` bounds)."""
    import polars as pl

    return snapshot.with_columns(
        (pl.col("price_usd_hour") / pl.col("gpu_count").cast(pl.Float64)).alias("price_per_gpu_hour_usd")
    )


def _price_range_expectations(per_gpu: Any) -> list[Any]:
    """``quotes_price_ranges``: known GPU models, effective GPU-hour > 0, each present model in range."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    present = sorted(set(per_gpu["gpu_model"].drop_nulls().to_list()) & set(PRICE_RANGE_PER_GPU_HOUR))
    return [
        gxe.ExpectColumnValuesToBeInSet(column="gpu_model", value_set=list(PRICE_RANGE_PER_GPU_HOUR)),
        gxe.ExpectColumnValuesToBeBetween(column="effective_gpu_hour_usd", min_value=0, strict_min=True),
    ] + [
        gxe.ExpectColumnValuesToBeBetween(
            column="price_per_gpu_hour_usd",
            min_value=PRICE_RANGE_PER_GPU_HOUR[m][0],
            max_value=PRICE_RANGE_PER_GPU_HOUR[m][1],
            row_condition=Column("gpu_model") == m,
        )
        for m in present
    ]


def _spot_below_on_demand_expectations() -> list[Any]:
    """``quotes_spot_below_on_demand``, over :func:`spot_vs_on_demand`'s rows."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="on_demand_limit_usd_hour", column_B="spot_usd_hour", or_equal=True
        )
    ]


def _unique_expectations() -> list[Any]:
    """``quotes_unique_per_snapshot``: each quote key once per snapshot."""
    import great_expectations.expectations as gxe

    return [gxe.ExpectCompoundColumnsToBeUnique(column_list=["snapshot_id", *QUOTE_KEY])]


def _quote_ages(snapshot: Any, now: datetime) -> Any:
    """One column, ``quote_age_hours``: how long before ``now`` each quote was observed."""
    import polars as pl

    return snapshot.select(
        (
            (pl.lit(now).cast(pl.Datetime("us", "UTC")) - pl.col("observed_at")).dt.total_seconds() / 3600.0
        ).alias("quote_age_hours")
    )


def _fresh_expectations(max_quote_age_hours: float, future_tolerance_hours: float) -> list[Any]:
    """``quotes_fresh``: the newest quote recent enough, none further in the future than the tolerance."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnMinToBeBetween(column="quote_age_hours", max_value=max_quote_age_hours),
        gxe.ExpectColumnValuesToBeBetween(column="quote_age_hours", min_value=-future_tolerance_hours),
    ]
