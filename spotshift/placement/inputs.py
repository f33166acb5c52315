"""Assemble :class:`~spotshift.placement.decision.DecisionInputs` for a declared job from the
warehouse and the job's placement state, decide, and record the decision.

This is what ``placement_plan`` and ``price_change_sensor`` call::

    with warehouse.connect() as con:
        decision = decide_for_job(con, "llm-ft", now=virtual_now())
        record_decision(con, decision)
    if decision.action == "move":
        RunRequest(run_key=decision.run_key(), ...)

Where each input comes from:

* quotes — the latest snapshot of ``main.gpu_quotes`` (greatest ``polled_at``);
* current placement, cooldown, unfit targets — :mod:`spotshift.placement.state`;
* work left — the job's latest checkpoint in ``raw.checkpoints`` (steps x ``hours_per_step``),
  minus the time run since that checkpoint (or since the placement started, if later);
* bytes present per location — :mod:`spotshift.placement.footprint` (dataset and checkpoint
  replicas from ``raw.transfers`` and ``raw.checkpoints``);
* preemption risk — the notices of ``raw.preemptions`` and the spot runs of ``raw.compute_usage``
  replayed into the simulator's availability model
  (:func:`spotshift.placement.availability.model_from_history`: hazards, co-interruptions, a
  predicted near-term interruption), the prior for unobserved locations;
* spot capacity gone — locations with a preemption notice more recent than their estimated
  mean outage.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from spotshift import warehouse
from spotshift.budgets import budget_status, find_budget, gate_decision, record_alerts
from spotshift.clock import as_utc, parse_utc
from spotshift.errors import NotFoundError
from spotshift.jobs import TrainingJob, get_job
from spotshift.placement.availability import model_from_history
from spotshift.placement.decision import Decision, DecisionInputs, Placement
from spotshift.placement.economics import decide
from spotshift.placement.footprint import load_footprint
from spotshift.placement.params import PlacementParams
from spotshift.placement.risk import RegionRisk
from spotshift.placement.scoring import gpu_model_matches
from spotshift.placement.state import PlacementState, load_state
from spotshift.placement.topology import apply_measured
from spotshift.pools.site import is_private_site, site_usage
from spotshift.pricing.quote import QUOTE_FIELDS, NormalizedGPUQuote
from spotshift.warehouse import first_row as _first
from spotshift.warehouse import record_facts

NO_SPOT_REASON = "no spot capacity (preempted)"


def _utc(dt: datetime | None) -> datetime | None:
    return None if dt is None else as_utc(dt)


def latest_snapshot(con: Any, as_of: datetime | None = None) -> tuple[str, datetime] | None:
    """(snapshot id, polled_at) of the most recent quote snapshot in ``main.gpu_quotes``; with
    ``as_of``, the snapshot in force at that time (the newest polled at or before it)."""
    having = "HAVING max(polled_at) <= ?" if as_of is not None else ""
    row = _first(
        con,
        f"SELECT snapshot_id, max(polled_at) AS t FROM main.gpu_quotes GROUP BY snapshot_id {having} "
        "ORDER BY t DESC NULLS LAST, snapshot_id DESC LIMIT 1",
        [as_utc(as_of).replace(tzinfo=None)] if as_of is not None else None,
    )
    if row is None:
        return None
    return str(row[0]), _utc(row[1]) or datetime.min.replace(tzinfo=UTC)


def load_quotes(con: Any, snapshot_id: str) -> list[NormalizedGPUQuote]:
    """Every quote of one snapshot as contract objects, with the topology score measured on that
    instance type in that location (``spotshift topology``, a move's probation) where one is kept."""
    cols = ", ".join(f'"{c}"' for c in QUOTE_FIELDS)
    rows = con.execute(f"SELECT {cols} FROM main.gpu_quotes WHERE snapshot_id = ?", [snapshot_id]).fetchall()
    out = []
    for r in rows:
        d = dict(zip(QUOTE_FIELDS, r, strict=True))
        d["zone"] = d["zone"] or ""
        d["observed_at"] = _utc(d["observed_at"]) or datetime.min.replace(tzinfo=UTC)
        d["source"] = d["source"] or ""
        for k in ("net_gbps", "storage_gbps", "topology_score"):
            d[k] = float(d[k]) if d[k] is not None else 0.0
        out.append(NormalizedGPUQuote(**d))

    return apply_measured(out)  # measured topology scores beat the catalog's documented ones


def load_progress(con: Any, job: TrainingJob, state: PlacementState, now: datetime) -> tuple[float, float]:
    """(instance-hours of work left, hours of work since the last checkpoint)."""
    row = _first(
        con,
        "SELECT step, created_at FROM raw.checkpoints WHERE job = ? ORDER BY step DESC, created_at DESC LIMIT 1",
        [job.name],
    )
    return progress_from(job, state, now, row)


def progress_from(
    job: TrainingJob, state: PlacementState, now: datetime, latest: tuple[Any, ...] | None
) -> tuple[float, float]:
    """:func:`load_progress` from the job's latest checkpoint ``(step, created_at)`` (None: none yet)."""
    step, ckpt_at = (int(latest[0] or 0), _utc(latest[1])) if latest else (0, None)
    left = max(0.0, (job.total_steps - step) * job.hours_per_step)
    age = 0.0
    if state.running:
        since = [t for t in (ckpt_at, _utc(_parse(state.placed_at))) if t is not None]
        if since:
            age = max(0.0, (now - max(since)).total_seconds() / 3600.0)
        age = min(age, left)
    return max(0.0, left - age), age


def _parse(text: str | None) -> datetime | None:
    return parse_utc(text) if text else None


def load_risks(con: Any, locations: list[str], now: datetime | None = None) -> dict[str, RegionRisk]:
    """Per-location risk learned from the warehouse by the simulator's availability model
    (:func:`spotshift.placement.availability.model_from_history`): the notices of
    ``raw.preemptions`` (with their recovery) and the spot runs of ``raw.compute_usage`` replayed up
    to ``now`` (default: the latest notice or usage seen), so hazards, co-interruptions and a
    predicted near-term interruption come from one place; the prior for ``locations`` never observed."""
    notices = con.execute("SELECT location, noticed_at, recovered_at FROM raw.preemptions").fetchall()
    runs = con.execute(
        "SELECT provider || '/' || region, started_at, ended_at FROM raw.compute_usage "
        "WHERE market = 'spot' AND started_at IS NOT NULL"
    ).fetchall()
    if now is None:
        seen = [t for _, t, _ in notices if t is not None] + [
            t for _, a, b in runs for t in (a, b) if t is not None
        ]
        now = max((_utc(t) for t in seen), default=datetime.now(UTC))  # type: ignore[type-var]
    model = model_from_history(
        [(loc, t0, t1) for loc, t0, t1 in notices if loc and t0 is not None],
        [(loc, t0, t1) for loc, t0, t1 in runs if loc],
        now=now,
        locations=locations,
    )
    return model.risks()


def recently_preempted(con: Any, risks: dict[str, RegionRisk], now: datetime) -> dict[str, str]:
    """Locations whose last preemption notice is younger than their estimated mean outage."""
    out = {}
    for loc, last in con.execute(
        "SELECT location, max(noticed_at) FROM raw.preemptions GROUP BY location"
    ).fetchall():
        t = _utc(last)
        r = risks.get(loc)
        if t is None or r is None:
            continue
        if now - t < timedelta(hours=r.mean_outage_hours):
            out[loc] = f"{NO_SPOT_REASON} at {t.isoformat()}"
    return out


def _no_snapshot_message(con: Any) -> str:
    """Why placement has no validated quotes, and what to do about it."""
    import duckdb

    try:
        row = warehouse.first_row(
            con, "SELECT snapshot_id, max(polled_at) FROM raw.price_quotes GROUP BY 1 ORDER BY 2 DESC LIMIT 1"
        )
    except duckdb.CatalogException:  # no raw table yet: never polled
        row = None
    if row is None:
        return "main.gpu_quotes has no validated quote snapshot yet: run `spotshift quotes poll` first"
    return (
        f"main.gpu_quotes has no validated quote snapshot: the last poll ({row[0]} at {row[1]}) failed its "
        "quality checks; run `spotshift quotes poll`, fix what it reports, and poll again"
    )


def assemble_inputs(
    con: Any,
    job_name: str,
    *,
    now: datetime,
    job: TrainingJob | None = None,
    state: PlacementState | None = None,
) -> DecisionInputs:
    """Everything :func:`decide` needs for ``job_name`` (see the module doc for the sources).

    :class:`NotFoundError` when the warehouse has no quote snapshot yet.
    """
    job = job or get_job(job_name)
    state = state or load_state(job_name)
    snap = latest_snapshot(con)
    if snap is None:
        raise NotFoundError(_no_snapshot_message(con))
    quotes = load_quotes(con, snap[0])
    remaining, age = load_progress(con, job, state, now)
    risks = load_risks(con, sorted({q.location for q in quotes if q.market == "spot"}), now)
    current = None
    if state.location and state.market and state.instance_type:
        current = Placement(
            state.location, state.market, state.instance_type, state.zone, state.price_usd_hour
        )
    return DecisionInputs(
        job=job,
        quotes=quotes,
        now=now,
        remaining_hours=remaining,
        footprint=load_footprint(con, job),
        current=current,
        current_running=state.running,
        checkpoint_age_hours=age,
        risks=risks,
        no_spot=recently_preempted(con, risks, now),
        unfit=state.unfit_at(now),
        cooldown_until=state.cooldown_until_dt(),
        snapshot_id=snap[0],
    )


def decide_for_job(
    con: Any, job_name: str, *, now: datetime, params: PlacementParams | None = None
) -> Decision:
    """Assemble the inputs for ``job_name`` and run :func:`decide`, then keep the decision within
    the job's team budget (:func:`spotshift.budgets.gate_decision`; an alert fact at the soft limit)."""
    inputs = assemble_inputs(con, job_name, now=now)
    decision = decide(inputs, params)

    budget = find_budget(inputs.job.team)
    if budget is None:
        return decision
    status = budget_status(con, budget, now, exclude_job=job_name)
    record_alerts(con, status, now)
    return gate_decision(decision, status)


def record_decision(con: Any, decision: Decision, *, candidates: bool = True) -> bool:
    """Append the decision to ``raw.decisions`` (and its candidates to ``main.placement_candidates``)
    unless a decision with the same id was recorded before; returns whether it was written."""
    facts = {"raw.decisions": [decision.to_row()]}
    if candidates:
        facts["main.placement_candidates"] = decision.candidate_rows()
    return record_facts(facts, con=con).rows("raw.decisions") > 0


def usage_for(
    con: Any,
    job: TrainingJob,
    location: str,
    *,
    market: str | None = None,
    instance_type: str | None = None,
    as_of: datetime | None = None,
) -> dict[str, Any]:
    """What a trainer of ``job`` in ``location`` pays, from the latest quote snapshot (the one in
    force at ``as_of`` when given): the cheapest quote there that fits the job's GPU requirement
    (and ``market``/``instance_type`` when given), with the on-demand (list) price of the same
    instance. Empty when nothing fits: the interval stays unpriced and the cost report lists it
    (``fct_unpriced_usage``). A private pool's site (``onprem/<site>``) is priced from the pool's
    $/GPU-hour (:func:`spotshift.pools.site.site_usage`)."""
    if is_private_site(location):
        return site_usage(location, job.gpu_count)
    snap = latest_snapshot(con, as_of)
    if snap is None:
        return {}
    fits = [
        q
        for q in load_quotes(con, snap[0])
        if q.location == location
        and gpu_model_matches(job.gpu_model, q.gpu_model)
        and q.gpu_count == job.gpu_count
        and (market is None or q.market == market)
        and (instance_type is None or q.instance_type == instance_type)
        and (market is not None or job.spot_allowed or q.market == "on_demand")
    ]
    if not fits:
        return {}
    q = min(fits, key=lambda x: x.price_usd_hour)
    listed = [
        o.price_usd_hour
        for o in load_quotes(con, snap[0])
        if o.location == location and o.instance_type == q.instance_type and o.market == "on_demand"
    ]
    return {
        "market": q.market,
        "instance_type": q.instance_type,
        "gpu_model": q.gpu_model,
        "gpu_count": q.gpu_count,
        "price_usd_hour": q.price_usd_hour,
        "list_price_usd_hour": min(listed) if listed else None,
    }
