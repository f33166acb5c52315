"""Carry a pool's decisions out: a start on the pool, a burst to a cloud and a return to the pool are
real moves through the lifecycle of :mod:`spotshift.migration` (dataset delta-synced from its home
store, checkpoint encrypted and carried, probation + shadow validation when a running source is
left, go-live or rollback), and the pool's ledger becomes warehouse facts (``raw.pool_events``).

Each move is planned from one ledger event, so its run key is deterministic:
``<job>:<from>-><to>:pool-<pool>@<event time>`` (:func:`spotshift.migration.contract.move_run_key`).
A move is pending while ``raw.migrations`` has no row for its run key: ``spotshift pools tick
--move`` runs the pending ones here, ``pool_move_sensor`` requests ``migration_job`` for them
(the daemon dedupes run keys), and either way a move runs once.

* ``started`` (queue start on the pool) -> trigger ``place`` to ``onprem/<site>``, unless the job
  already runs somewhere (a return's own start).
* ``burst`` -> trigger ``burst`` to the cloud offer the pool decided on; the source is the pool's
  site when the job's trainer runs there (then probation + shadow validation), else a placement
  whose newest checkpoint, wherever it is, is carried.
* ``repatriated`` -> trigger ``return`` from the cloud back to the site (probation + shadow
  validation against the cloud trainer).

The outcome goes into the pool's ledger (``move_cut_over`` / ``move_rolled_back`` with the run key);
a rolled-back burst or return leaves the job where it was.
"""

from __future__ import annotations

from typing import Any

from spotshift import warehouse
from spotshift.clock import parse_utc, virtual_now
from spotshift.jobs import get_job
from spotshift.migration import contract
from spotshift.migration.plan import MovePlan
from spotshift.migration.run import run_move
from spotshift.migration.state import local_env
from spotshift.pools.pool import PrivatePool, get_pool
from spotshift.pools.site import site_usage
from spotshift.pools.state import load_pool_state, record_event, save_pool_state, state_path
from spotshift.registry import locked

#: ledger events that ask for a move
MOVE_EVENTS = ("started", "burst", "repatriated")


def _live_location(backend: Any, job: str) -> str:
    info = backend.status(job) if backend is not None else None
    return str(info.location) if info is not None and info.alive else ""


def plan_for_event(pool: PrivatePool, event: dict[str, Any], *, backend: Any = None) -> MovePlan | None:
    """The move one ledger event asks for (None: nothing to move). ``backend``: where trainers run
    (the source of a burst is the pool's site only when the job's trainer is alive there)."""
    job = get_job(str(event["job"]))
    kind, at = event["event"], str(event["at"])
    live = _live_location(backend, job.name)
    if kind == "started":
        if live:  # already running (a return's start, or placed by hand)
            return None
        src, dst, trigger = "", pool.location, "place"
    elif kind == "burst":
        src = pool.location if live == pool.location else ""
        dst, trigger = str(event["location"]), "burst"
    elif kind == "repatriated":
        src = str(event["location"]) if live == str(event["location"]) else ""
        dst, trigger = pool.location, "return"
    else:
        return None
    if dst == pool.location:
        usage = site_usage(pool.location, job.gpu_count)
    else:
        usage = {
            "market": str(event.get("market") or "on_demand"),
            "instance_type": str(event.get("instance_type") or ""),
            "gpu_model": job.gpu_model,
            "gpu_count": job.gpu_count,
            "price_usd_hour": float(event.get("usd_hour") or 0.0),
            "list_price_usd_hour": None,
        }
    choice = event.get("choice") or {}
    return MovePlan(
        job=job.name,
        trigger=trigger,
        from_location=src,
        to_location=dst,
        market=usage["market"],
        instance_type=usage["instance_type"],
        price_usd_hour=usage["price_usd_hour"],
        list_price_usd_hour=usage["list_price_usd_hour"],
        gpu_model=usage["gpu_model"],
        gpu_count=usage["gpu_count"],
        snapshot_id=f"pool-{pool.name}@{at}",
        run_key=contract.move_run_key(job.name, src, dst, f"pool-{pool.name}@{at}"),
        expected_savings_usd=float(choice.get("saving_usd") or 0.0),
    )


def _done_run_keys(con: Any) -> set[str]:
    return {str(r[0]) for r in con.execute("SELECT DISTINCT migration_id FROM raw.migrations").fetchall()}


def pending_moves(pool_name: str, con: Any, *, backend: Any = None) -> list[MovePlan]:
    """The moves the pool's ledger asks for that ``raw.migrations`` has no row for, oldest first;
    per job only its newest request counts (a burst superseded by its return is not run)."""
    pool = get_pool(pool_name)
    doc = load_pool_state(pool.name)
    newest: dict[str, dict[str, Any]] = {}
    for e in doc["events"]:
        if e["event"] in MOVE_EVENTS:
            before = newest.get(e["job"], {})
            if e["event"] == "started" and before.get("event") == "repatriated" and before["at"] == e["at"]:
                continue  # the return's own start on the pool: the return moves the job
            newest[e["job"]] = e
        elif e["event"] == "finished":
            newest.pop(e["job"], None)
    done = _done_run_keys(con)
    plans = []
    for e in sorted(newest.values(), key=lambda e: e["at"]):
        plan = plan_for_event(pool, _with_offer(doc, e), backend=backend)
        if plan is not None and plan.run_key not in done:
            plans.append(plan)
    return plans


def _with_offer(doc: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """A burst event with the offer it burst to (market, price per hour) from the burst entry."""
    if event["event"] != "burst":
        return event
    for b in doc["burst"]:
        if b["job"] == event["job"]:
            return {**event, "market": b["market"], "usd_hour": b["usd_hour"]}
    return event


def carry_out(
    pool_name: str, *, env: Any = None, shadow: Any = None, log: Any = None, run_id: str = ""
) -> list[Any]:
    """Run every pending move of the pool (:func:`pending_moves`) through
    :func:`spotshift.migration.run.run_move`; returns their :class:`~spotshift.migration.run.MoveOutcome`.
    Each outcome is noted in the pool's ledger (event ``move_cut_over`` or ``move_rolled_back``, with
    the run key)."""
    import uuid

    env = env or local_env(run_id=run_id or f"pool-{uuid.uuid4().hex[:12]}", log=log)
    with warehouse.connect(env.database) as con:
        plans = pending_moves(pool_name, con, backend=env.backend)
    outcomes = []
    for plan in plans:
        outcome = run_move(env, plan, shadow=shadow)
        outcomes.append(outcome)
        _note(pool_name, plan, outcome.status, outcome.error)
    record_pool_facts(pool_name, database=env.database)
    return outcomes


def _note(pool_name: str, plan: MovePlan, status: str, error: str) -> None:
    with locked(state_path(pool_name)):
        doc = load_pool_state(pool_name)
        record_event(
            doc,
            virtual_now(),
            plan.job,
            f"move_{status}",
            location=plan.to_location,
            trigger=plan.trigger,
            run_key=plan.run_key,
            **({"reason": error[:300]} if error else {}),
        )
        save_pool_state(doc)


def pool_fact_rows(pool_name: str) -> list[dict[str, Any]]:
    """``raw.pool_events`` rows of the pool's ledger (one per event; ids are ledger positions, so
    re-recording writes nothing new)."""
    pool = get_pool(pool_name)
    doc = load_pool_state(pool.name)
    rows = []
    for i, e in enumerate(doc["events"]):
        choice = e.get("choice") or {}

        def num(v: Any) -> float | None:
            return None if v is None or v == float("inf") else float(v)

        rows.append(
            {
                "event_id": f"{pool.name}:{i}",
                "pool": pool.name,
                "location": e.get("location") or pool.location,
                "event_at": parse_utc(e["at"]),
                "job": e["job"],
                "event": e["event"],
                "gpus": e.get("gpus"),
                "hours": num(e.get("hours")),
                "cost_usd": num(e.get("cost_usd")),
                "wait_hours": num(e.get("wait_hours", choice.get("wait_hours"))),
                "cost_pool_usd": num(choice.get("cost_pool_usd")),
                "cost_cloud_usd": num(choice.get("cost_cloud_usd")),
                "egress_usd": num(choice.get("egress_usd")),
                "reason": choice.get("reason") or e.get("reason"),
                "run_key": e.get("run_key"),
            }
        )
    return rows


def record_pool_facts(pool_name: str, *, database: Any = None, con: Any = None) -> int:
    """Record the pool's ledger as ``raw.pool_events`` facts; rows written now."""
    rows = pool_fact_rows(pool_name)
    return warehouse.record_facts({"raw.pool_events": rows}, database=database, con=con).rows(
        "raw.pool_events"
    )
