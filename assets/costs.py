"""Cost analytics: the dbt_costs models as assets (dagster-dbt) and the ``cost_report`` asset.

dbt sources map to the Dagster assets that write them (``meta.dagster_writers`` in
dbt_costs/models/sources.yml), so every staging model sits downstream of its raw-fact writers.
``cost_report`` renders Markdown and PNG plots from the marts into ``$SPOTSHIFT_HOME/reports/``
and attaches them as metadata; ``cost_report_schedule`` rebuilds marts and report daily.
"""

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource, dbt_assets

from resources.dbt import dbt_project
from resources.warehouse import WarehouseResource
from spotshift.costs.dbt import prepare_build
from spotshift.warehouse import first_row

GROUP = "cost_analytics"


def _writers(props: Mapping[str, Any]) -> list[str]:
    meta = {**(props.get("meta") or {}), **((props.get("config") or {}).get("meta") or {})}
    return list(meta.get("dagster_writers") or [])


class SpotshiftDbtTranslator(DagsterDbtTranslator):
    """Raw-fact sources take the key of the asset that writes them; models join group cost_analytics."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            writers = _writers(dbt_resource_props)
            if writers:
                return dg.AssetKey(writers[0])
        return super().get_asset_key(dbt_resource_props)

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return GROUP

    def get_asset_spec(self, manifest: Mapping[str, Any], unique_id: str, project: Any) -> dg.AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        if unique_id.startswith("source."):
            return spec
        # a raw table with several writers (raw.transfers) makes its readers depend on all of them
        props = self.get_resource_props(manifest, unique_id)
        extra = []
        for parent in props.get("depends_on", {}).get("nodes", []):
            if parent.startswith("source."):
                extra += [dg.AssetKey(w) for w in _writers(manifest["sources"][parent])[1:]]
        known = {d.asset_key for d in spec.deps}
        extra = [k for k in dict.fromkeys(extra) if k not in known]
        return spec.merge_attributes(deps=extra) if extra else spec


translator = SpotshiftDbtTranslator(
    # dbt data tests (models and sources) are asset checks; source tests land on the writer asset
    settings=DagsterDbtTranslatorSettings(
        enable_duplicate_source_asset_keys=True, enable_asset_checks=True, enable_source_tests_as_checks=True
    )
)


@contextlib.contextmanager
def _warehouse_env(path: str) -> Iterator[None]:
    """dbt (a child process) reads the warehouse from SPOTSHIFT_WAREHOUSE: point it at the resource's file."""
    old = os.environ.get("SPOTSHIFT_WAREHOUSE")
    os.environ["SPOTSHIFT_WAREHOUSE"] = os.path.abspath(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SPOTSHIFT_WAREHOUSE", None)
        else:
            os.environ["SPOTSHIFT_WAREHOUSE"] = old


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    dagster_dbt_translator=translator,
    name="dbt_costs",
)
def dbt_costs(context: AssetExecutionContext, dbt: DbtCliResource, warehouse: WarehouseResource):
    """``dbt build`` of the selected dbt_costs models (data tests become asset checks)."""
    prepare_build(warehouse.database)  # schema raw (sources resolve) and the simulated baselines
    with _warehouse_env(warehouse.database):
        invocation = dbt.cli(["build"], context=context)
    yield from invocation.stream()


MART_KEYS = [
    dg.AssetKey(k)
    for k in (
        "mart_cost_metrics",
        "mart_savings",
        "fct_migrations",
        "fct_data_transfer",
        "focus_cost_and_usage",
        "fct_unpriced_usage",
    )
]


@dg.asset(
    deps=[*MART_KEYS, dg.AssetKey("stg_spotshift__price_quotes"), dg.AssetKey("mart_build_state")],
    group_name=GROUP,
    kinds={"duckdb", "matplotlib"},
    description="Markdown cost report with plots (price history with migrations; cumulative cost vs baselines), "
    "written to $SPOTSHIFT_HOME/reports/.",
)
def cost_report(context: AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    from spotshift.costs.report import read_report, reports_dir
    from spotshift.costs.report_markdown import write_cost_report

    with warehouse.get_connection() as con:
        files = write_cost_report(con, reports_dir(), warehouse.database)
        report = read_report(con, warehouse.database)
    t = report.totals
    context.log.info(f"cost report written to {files.markdown_path}")
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.md(files.markdown_inline),
            "markdown_path": dg.MetadataValue.path(str(files.markdown_path)),
            **{
                name.replace(".png", "_png"): dg.MetadataValue.path(str(p)) for name, p in files.plots.items()
            },
            "jobs": dg.MetadataValue.int(int(t["jobs"])),
            **report_numbers(t),
            "amplification_alerts": dg.MetadataValue.int(len(report.amplification_alerts)),
            "focus_rows": dg.MetadataValue.int(int(report.focus["rows"])),
            "unpriced_intervals": dg.MetadataValue.int(sum(int(u["intervals"]) for u in report.unpriced)),
        }
    )


def report_numbers(totals: Mapping[str, Any]) -> dict[str, dg.MetadataValue]:
    """The report's headline as plottable numbers: USD to the cent, savings in percent.

    A baseline the marts could not compute is left out (never shown as 0). The never-preempted
    first-spot figure is a bound, named so.
    """
    from spotshift.units import percent, usd

    out: dict[str, dg.MetadataValue] = {}
    for key in ("actual_usd", "compute_usd", "egress_usd", "on_demand_usd", "stay_first_spot_usd"):
        if totals.get(key) is not None:
            out[key] = dg.MetadataValue.float(usd(totals[key]))  # type: ignore[arg-type]
    if totals.get("first_spot_bound_usd") is not None:
        out["bound_first_spot_never_preempted_usd"] = dg.MetadataValue.float(
            usd(totals["first_spot_bound_usd"])
        )  # type: ignore[arg-type]
    for base in ("on_demand", "stay_first_spot"):
        if totals.get(f"saving_vs_{base}") is not None:
            out[f"saving_vs_{base}_pct"] = dg.MetadataValue.float(percent(totals[f"saving_vs_{base}"]))  # type: ignore[arg-type]
    return out


@dg.asset_check(asset=dg.AssetKey("focus_cost_and_usage"), name="focus_1_2_conformance")
def focus_1_2_conformance(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    """Every row of the FOCUS view meets the FOCUS 1.2 rules of spotshift.costs.focus."""
    from spotshift.costs.focus import FOCUS_VIEW, focus_problems

    with warehouse.get_connection() as con:
        problems = focus_problems(con, FOCUS_VIEW)
        rows = first_row(con, f"SELECT count(*) FROM {FOCUS_VIEW}")[0]
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "rows": dg.MetadataValue.int(int(rows)),
            "problem_count": dg.MetadataValue.int(len(problems)),
            "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"),
        },
    )


cost_report_job = dg.define_asset_job(
    "cost_report_job",
    # with the dbt source tests: checks of the writer assets, run by dbt_costs
    selection=dg.AssetSelection.assets(dbt_costs, cost_report)
    | dg.AssetSelection.checks(*dbt_costs.check_keys),
    description="Rebuild the dbt_costs marts (with their tests) and render the cost report.",
)

cost_report_schedule = dg.ScheduleDefinition(
    name="cost_report_schedule",
    job=cost_report_job,
    cron_schedule="0 6 * * *",
    execution_timezone="UTC",
    description="Daily at 06:00 UTC: dbt build of dbt_costs, then cost_report.",
)

defs = dg.Definitions(
    assets=[dbt_costs, cost_report],
    asset_checks=[focus_1_2_conformance],
    jobs=[cost_report_job],
    schedules=[cost_report_schedule],
)
