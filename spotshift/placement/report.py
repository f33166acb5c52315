"""Human-readable views of a decision: Markdown for the Dagster UI and an independent limits check."""

from __future__ import annotations

from spotshift.jobs import TrainingJob
from spotshift.placement.decision import Decision
from spotshift.pricing.catalog import gpu_model_matches

#: candidate-table columns shown in the UI (subset of :meth:`Candidate.to_row`), in order
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("rank", "string"),
    ("location", "string"),
    ("market", "string"),
    ("instance_type", "string"),
    ("price_usd_hour", "float"),
    ("effective_gpu_hour_usd", "float"),
    ("transfer_penalty_gpu_hour_usd", "float"),
    ("locality_bonus_gpu_hour_usd", "float"),
    ("score_gpu_hour_usd", "float"),
    ("risk_gpu_hour_usd", "float"),
    ("expected_gpu_hour_usd", "float"),
    ("egress_usd", "float"),
    ("eligible", "bool"),
    ("rejected_reasons", "string"),
)


def table_rows(d: Decision, limit: int) -> list[dict[str, object]]:
    """The first ``limit`` candidates with the :data:`TABLE_COLUMNS` only (rank ``-`` when rejected)."""
    rows = []
    for c in d.candidates[:limit]:
        row = c.to_row()
        out: dict[str, object] = {n: row[n] for n, _ in TABLE_COLUMNS}
        out["rank"] = str(c.rank) if c.rank is not None else "-"
        rows.append(out)
    return rows


def decision_markdown(d: Decision) -> str:
    """The decision, its reasons and its move terms as Markdown."""
    lines = [f"**{d.action}** -> `{d.target_location or '-'}` (snapshot `{d.snapshot_id or '-'}`)", ""]
    if d.current is not None:
        state = "running" if d.current_running else "not running"
        lines.append(
            f"Current: `{d.current.location}` {d.current.market} {d.current.instance_type} ({state})"
        )
    lines.append(f"Work left: {d.remaining_hours:.2f} h")
    if d.deadline_slack_hours is not None:
        lines.append(f"Deadline slack: {d.deadline_slack_hours:.2f} h")
    lines += ["", "Reasons:"] + [f"- {r}" for r in d.reasons]
    if d.terms is not None:
        lines += ["", "| term | USD |", "| --- | ---: |"]
        lines += [f"| {k} | {v:,.2f} |" for k, v in d.terms.to_dict().items()]
    return "\n".join(lines)


def limit_violations(d: Decision, job: TrainingJob) -> list[str]:
    """Re-check the decision's target against the job declaration, independently of the scorer.

    Empty when the target (if any) is an allowed location, the right GPU model and count, at or above
    the minimum topology score, spot only when allowed, and within ``max_usd_per_hour``.
    """
    t = d.target
    if t is None:
        return []
    q = t.quote
    out = []
    if not job.allows(q.location):
        out.append(f"{q.location} is not an allowed location")
    if not gpu_model_matches(job.gpu_model, q.gpu_model) or q.gpu_count != job.gpu_count:
        out.append(f"{q.gpu_count}x {q.gpu_model} does not match {job.gpu_count}x {job.gpu_model or 'any'}")
    if q.topology_score < job.min_topology_score:
        out.append(f"topology {q.topology_score:g} < {job.min_topology_score:g}")
    if q.market == "spot" and not job.spot_allowed:
        out.append("spot chosen for an on-demand-only job")
    if job.max_usd_per_hour is not None and t.score_gpu_hour_usd * q.gpu_count > job.max_usd_per_hour + 1e-9:
        out.append(f"all-in {t.score_gpu_hour_usd * q.gpu_count:.2f} USD/h over {job.max_usd_per_hour:g}")
    return out


def limit_measures(d: Decision, job: TrainingJob) -> dict[str, float]:
    """The figures :func:`limit_violations` compares, as numbers (empty without a target).

    ``target_usd_per_hour`` is the target's all-in hourly score next to ``max_usd_per_hour`` (when
    the job sets one), and its topology score next to ``min_topology_score``.
    """
    t = d.target
    if t is None:
        return {}
    q = t.quote
    out = {
        "target_usd_per_hour": round(t.score_gpu_hour_usd * q.gpu_count, 2),
        "target_topology_score": float(q.topology_score),
        "min_topology_score": float(job.min_topology_score),
    }
    if job.max_usd_per_hour is not None:
        out["max_usd_per_hour"] = round(float(job.max_usd_per_hour), 2)
    return out
