"""``cutover_validation``: an inference endpoint's cutover stage judged, one blocking check per criterion.

``cutover_job`` records it for every finished stage (``ops/cutover.py``); materializing it by hand
validates the endpoint's latest finished stage (or the one named). The checks read the verdicts of
the stage's analysis windows (:func:`spotshift.serving.cutover.stage_verdicts`): a check fails when
any window of the stage failed its criterion.
"""

import json
import warnings

import dagster as dg

from ops.cutover import CUTOVER_VALIDATION, stage_checks
from spotshift.migration import endpoint_cutover as ec
from spotshift.serving import cutover as co


class ValidationConfig(dg.Config):
    """Which endpoint's cutover, and which stage (default: the latest finished one)."""

    endpoint: str
    stage: str = ""


@dg.asset(name="cutover_validation", group_name="inference", kinds={"python"})
def cutover_validation(context: dg.AssetExecutionContext, config: ValidationConfig) -> dg.MaterializeResult:
    """The stage's figures (P99 per side, error rates, cost per million tokens, agreement) and verdicts."""
    st = co.require_state(config.endpoint)
    stage = config.stage or (ec.finished_stages(st) or [st.current.label if st.current else ""])[-1]
    meta, _ = stage_checks(st, stage)
    context.log.info(f"cutover {st.cutover_id} of {st.endpoint}, stage {stage}: {st.phase}")
    return dg.MaterializeResult(metadata=meta)


def _check(name: str) -> dg.AssetChecksDefinition:
    def check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=CUTOVER_VALIDATION), limit=1
        ).records
        mat = records[0].asset_materialization if records else None
        if mat is None:
            raise dg.Failure("cutover_validation has no materialization to check")
        verdicts = mat.metadata["verdicts"].value
        v = (verdicts if isinstance(verdicts, dict) else json.loads(verdicts))[name]
        return dg.AssetCheckResult(
            passed=v["passed"] is not False,
            severity=dg.AssetCheckSeverity.ERROR,
            description=v["detail"],
            metadata={"failed_windows": v["failed_windows"], "passed_windows": v["passed_windows"]},
        )

    check.__name__ = name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dg.asset_check(asset=cutover_validation, name=name, blocking=True)(check)


p99_latency = _check("p99_latency")
error_rate = _check("error_rate")
cost_per_million_tokens = _check("cost_per_million_tokens")
output_agreement = _check("output_agreement")

defs = dg.Definitions(
    assets=[cutover_validation],
    asset_checks=[p99_latency, error_rate, cost_per_million_tokens, output_agreement],
)
