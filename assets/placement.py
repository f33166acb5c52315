"""``placement_plan``: per training job, every candidate of the latest quote snapshot ranked with each
term of its score, and the decision (place | move | stay | fallback_on_demand | queue) with reasons.

The decision row goes to ``raw.decisions`` and the scored candidates to ``main.placement_candidates``
(once per decision id); the same table and reasons are attached as metadata so the UI explains
every choice. The library does the work: :func:`spotshift.placement.inputs.decide_for_job`.
"""

import dagster as dg

from assets.partitions import jobs_partitions
from resources.warehouse import WarehouseResource
from spotshift.clock import virtual_now
from spotshift.jobs import get_job
from spotshift.placement.inputs import decide_for_job, record_decision
from spotshift.placement.report import (
    TABLE_COLUMNS,
    decision_markdown,
    limit_measures,
    limit_violations,
    table_rows,
)
from spotshift.units import usd

LIMITS_CHECK = "target_within_job_limits"
TABLE_ROWS = 25


@dg.asset(
    partitions_def=jobs_partitions,
    deps=[dg.AssetKey("gpu_quotes")],
    group_name="placement",
    kinds={"python", "duckdb"},
    check_specs=[dg.AssetCheckSpec(LIMITS_CHECK, asset="placement_plan", blocking=True)],
    description="Ranked placement candidates with every score term, and the move-or-stay decision, per job.",
)
def placement_plan(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    """Score the latest quotes for this job, decide, record the decision, explain it in metadata."""
    name = context.partition_key
    job = get_job(name)
    with warehouse.get_connection() as con:
        decision = decide_for_job(con, name, now=virtual_now())
        recorded = record_decision(con, decision)
    schema = dg.TableSchema(columns=[dg.TableColumn(n, t) for n, t in TABLE_COLUMNS])
    records = [dg.TableRecord(r) for r in table_rows(decision, TABLE_ROWS)]
    t = decision.terms
    yield dg.MaterializeResult(
        metadata={
            "action": decision.action,
            "target": decision.target_location or "",
            "snapshot_id": decision.snapshot_id,
            "decision_id": decision.decision_id,
            "recorded": recorded,
            "remaining_hours": decision.remaining_hours,
            "candidates": len(decision.candidates),
            "eligible": sum(1 for c in decision.candidates if c.eligible),
            "expected_savings_usd": dg.MetadataValue.float(usd(t.expected_savings_usd if t else 0.0) or 0.0),
            "move_cost_usd": dg.MetadataValue.float(usd(t.move_cost_usd if t else 0.0) or 0.0),
            "decision": dg.MetadataValue.md(decision_markdown(decision)),
            "ranked_candidates": dg.MetadataValue.table(records, schema),
        }
    )
    problems = limit_violations(decision, job)
    yield dg.AssetCheckResult(
        check_name=LIMITS_CHECK,
        passed=not problems,
        metadata={
            "violations": "; ".join(problems) or "none",
            "violation_count": dg.MetadataValue.int(len(problems)),
            **limit_metadata(decision, job),
        },
    )


def limit_metadata(decision: object, job: object) -> dict[str, dg.MetadataValue]:
    """The target's measured figures against the job's limits, as plottable numbers."""
    return {k: dg.MetadataValue.float(v) for k, v in limit_measures(decision, job).items()}  # type: ignore[arg-type]


defs = dg.Definitions(assets=[placement_plan])
