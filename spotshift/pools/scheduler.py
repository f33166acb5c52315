"""A private pool's capacity, queue, bursts and repatriations over (virtual) time.

The pool's state is one JSON document (:mod:`spotshift.pools.state`), rewritten atomically
under a lock: the jobs running on the pool (GPUs held until their work is done), the FIFO queue,
the jobs burst to a cloud, and an append-only list of events (submitted, started, burst,
repatriated, finished) carrying the cost of both choices at each decision.

:func:`tick` advances the pool to ``now``: finished work frees GPUs; queued jobs start in order while
the head fits; burst jobs come back when the pool has room and it pays
(:func:`~spotshift.pools.economics.stay_or_repatriate`); every job still queued is costed against
the cheapest feasible cloud placement of the latest prices (:func:`~spotshift.pools.offers.cloud_offer`, the placement
economics) and bursts when waiting would miss its deadline or cost more
(:func:`~spotshift.pools.economics.burst_or_wait`).
"""

from __future__ import annotations

import heapq
from datetime import datetime, timedelta
from typing import Any

from spotshift.clock import as_utc, parse_utc
from spotshift.errors import ConfigError
from spotshift.jobs import get_job
from spotshift.placement.params import PlacementParams
from spotshift.pools.economics import burst_or_wait, stay_or_repatriate
from spotshift.pools.offers import OfferFn, burst_data_gb, default_offer
from spotshift.pools.pool import BREAKEVEN_UTILISATION, PrivatePool, get_pool, load_pools
from spotshift.pools.state import (
    gpus_used,
    hours_between,
    iso,
    load_pool_state,
    record_event,
    save_pool_state,
    state_path,
)
from spotshift.pricing.catalog import gpu_model_matches
from spotshift.registry import locked


def queue_starts(pool: PrivatePool, doc: dict[str, Any], now: datetime) -> dict[str, float]:
    """Hours from ``now`` until each queued job would start on the pool (FIFO: a job starts when the
    ones ahead of it have started and enough GPUs are free)."""
    ends = [(max(0.0, hours_between(now, r["ends_at"])), int(r["gpus"])) for r in doc["running"]]
    heapq.heapify(ends)
    free, t, out = pool.gpus - gpus_used(doc), 0.0, {}
    for q in doc["queue"]:
        g = int(q["gpus"])
        while free < g and ends:
            end, gpus = heapq.heappop(ends)
            t, free = max(t, end), free + gpus
        out[q["job"]] = t
        free -= g
        heapq.heappush(ends, (t + float(q["work_hours"]), g))
    return out


def submit(
    pool_name: str, job_name: str, *, now: datetime, offer: OfferFn | None = None, con: Any = None
) -> dict[str, Any]:
    """Queue declared job ``job_name`` on the pool (it must need the pool's GPU model and fit in it),
    then :func:`tick`. Returns the pool's state."""
    pool, job = get_pool(pool_name), get_job(job_name)
    if not gpu_model_matches(job.gpu_model, pool.gpu_model):
        raise ConfigError(
            f"job {job.name!r} needs {job.gpu_model or 'any GPU'}, pool {pool.name!r} has {pool.gpu_model}"
        )
    if job.gpu_count > pool.gpus:
        raise ConfigError(f"job {job.name!r} needs {job.gpu_count} GPUs, pool {pool.name!r} has {pool.gpus}")
    path = state_path(pool.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path):
        doc = load_pool_state(pool.name)
        if any(e["job"] == job.name for k in ("running", "queue", "burst") for e in doc[k]):
            raise ConfigError(f"job {job.name!r} is already in pool {pool.name!r}")
        doc["queue"].append(
            {"job": job.name, "gpus": job.gpu_count, "submitted_at": iso(now), "work_hours": job.work_hours}
        )
        record_event(doc, now, job.name, "submitted", gpus=job.gpu_count, work_hours=job.work_hours)
        _tick(pool, doc, now, offer or default_offer(con))
        save_pool_state(doc)
    return doc


def tick(
    pool_name: str,
    *,
    now: datetime,
    offer: OfferFn | None = None,
    con: Any = None,
    params: PlacementParams | None = None,
) -> dict[str, Any]:
    """Advance the pool to ``now`` (see the module docstring); returns its state."""
    pool = get_pool(pool_name)
    path = state_path(pool.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path):
        doc = load_pool_state(pool.name)
        _tick(pool, doc, now, offer or default_offer(con), params)
        save_pool_state(doc)
    return doc


def _deadline_left(job_name: str, now: datetime) -> float | None:
    deadline = get_job(job_name).deadline_at
    return None if deadline is None else hours_between(now, deadline)


def _tick(
    pool: PrivatePool,
    doc: dict[str, Any],
    now: datetime,
    offer: OfferFn,
    params: PlacementParams | None = None,
) -> None:
    p = params or PlacementParams()
    _finish_work(pool, doc, now)
    _start_queue(pool, doc, now)
    _repatriate(pool, doc, now, p)
    _burst_or_wait(pool, doc, now, offer, p)


def _finish_work(pool: PrivatePool, doc: dict[str, Any], now: datetime) -> None:
    """1. Finished work frees the pool; finished bursts leave the cloud."""
    for kind, location, usd_hour in (
        ("running", lambda e: pool.location, lambda e: int(e["gpus"]) * pool.usd_per_gpu_hour),
        ("burst", lambda e: e["location"], lambda e: float(e["usd_hour"])),
    ):
        for e in [e for e in doc[kind] if hours_between(e["ends_at"], now) >= 0]:
            doc[kind].remove(e)
            hours = hours_between(e["started_at"], e["ends_at"])
            record_event(
                doc,
                parse_utc(e["ends_at"]),
                e["job"],
                "finished",
                location=location(e),
                hours=hours,
                cost_usd=hours * usd_hour(e),
            )


def _start_queue(pool: PrivatePool, doc: dict[str, Any], now: datetime) -> None:
    """2. The queue starts in order while its head fits."""
    while doc["queue"] and int(doc["queue"][0]["gpus"]) <= pool.gpus - gpus_used(doc):
        q = doc["queue"].pop(0)
        _start_on_pool(
            doc,
            pool,
            q["job"],
            int(q["gpus"]),
            float(q["work_hours"]),
            now,
            wait_hours=hours_between(q["submitted_at"], now),
        )


def _repatriate(pool: PrivatePool, doc: dict[str, Any], now: datetime, p: PlacementParams) -> None:
    """3. Burst jobs come back when the pool has room and it pays."""
    for b in list(doc["burst"]):
        if doc["queue"] or int(b["gpus"]) > pool.gpus - gpus_used(doc):
            continue
        left = max(0.0, hours_between(now, b["ends_at"]))
        choice = stay_or_repatriate(
            work_hours_left=left,
            gpus=int(b["gpus"]),
            pool_usd_per_gpu_hour=pool.usd_per_gpu_hour,
            cloud_usd_hour=float(b["usd_hour"]),
            egress_back_usd=float(b.get("checkpoint_gb", 0.0)) * float(b["egress_back_usd_per_gb"]),
            deadline_hours_left=_deadline_left(b["job"], now),
            hours_since_burst=hours_between(b["started_at"], now),
            params=p,
        )
        if choice.action != "repatriate":
            if b.get("last_choice") != choice.reason:
                b["last_choice"] = choice.reason
            continue
        doc["burst"].remove(b)
        hours = hours_between(b["started_at"], now)
        record_event(
            doc,
            now,
            b["job"],
            "repatriated",
            location=b["location"],
            hours=hours,
            cost_usd=hours * float(b["usd_hour"]),
            choice=choice.to_dict(),
        )
        _start_on_pool(doc, pool, b["job"], int(b["gpus"]), left + p.changeover_hours, now, wait_hours=0.0)


def _burst_or_wait(
    pool: PrivatePool, doc: dict[str, Any], now: datetime, offer: OfferFn, p: PlacementParams
) -> None:
    """4. Every job still queued: wait or burst, both costed (after a burst the queue's start times
    change, so the queue is costed again)."""
    while _burst_first(pool, doc, now, offer, p):
        pass


def _burst_first(
    pool: PrivatePool, doc: dict[str, Any], now: datetime, offer: OfferFn, p: PlacementParams
) -> bool:
    """Cost each queued job in order; burst the first one that should; True when one did."""
    starts = queue_starts(pool, doc, now)
    for q in doc["queue"]:
        o = offer(q["job"], now)
        gb_out, gb_back = burst_data_gb(q["job"])
        choice = burst_or_wait(
            work_hours=float(q["work_hours"]),
            gpus=int(q["gpus"]),
            pool_usd_per_gpu_hour=pool.usd_per_gpu_hour,
            wait_hours=starts[q["job"]],
            deadline_hours_left=_deadline_left(q["job"], now),
            cloud_usd_hour=o.usd_hour if o else None,
            egress_out_usd=gb_out * pool.egress_usd_per_gb,
            egress_back_usd=gb_back * (o.egress_back_usd_per_gb if o else 0.0),
            params=p,
        )
        if choice.action == "wait":
            if q.get("last_choice") != choice.reason:
                q["last_choice"] = choice.reason
                record_event(doc, now, q["job"], "waiting", location=pool.location, choice=choice.to_dict())
            continue
        assert o is not None
        doc["queue"].remove(q)
        ends = now + timedelta(hours=float(q["work_hours"]) + p.changeover_hours)
        doc["burst"].append(
            {
                "job": q["job"],
                "gpus": int(q["gpus"]),
                "location": o.location,
                "instance_type": o.instance_type,
                "market": o.market,
                "usd_hour": o.usd_hour,
                "egress_back_usd_per_gb": o.egress_back_usd_per_gb,
                "checkpoint_gb": gb_back,
                "started_at": iso(now),
                "ends_at": iso(ends),
            }
        )
        record_event(
            doc,
            now,
            q["job"],
            "burst",
            location=o.location,
            instance_type=o.instance_type,
            wait_hours=hours_between(q["submitted_at"], now),
            choice=choice.to_dict(),
        )
        return True
    return False


def _start_on_pool(
    doc: dict[str, Any],
    pool: PrivatePool,
    job: str,
    gpus: int,
    work_hours: float,
    now: datetime,
    *,
    wait_hours: float,
) -> None:
    ends = now + timedelta(hours=work_hours)
    doc["running"].append(
        {"job": job, "gpus": gpus, "started_at": iso(now), "ends_at": iso(ends), "work_hours": work_hours}
    )
    record_event(doc, now, job, "started", location=pool.location, wait_hours=wait_hours)


def pool_report(pool_name: str, *, now: datetime) -> dict[str, Any]:
    """Utilisation, queue waits, burst hours and the cost of bursting vs waiting, from the ledger."""
    pool = get_pool(pool_name)
    doc = load_pool_state(pool.name)
    events = doc["events"]
    start = min((parse_utc(e["at"]) for e in events), default=as_utc(now))
    window_h = max(0.0, hours_between(start, now))
    busy = 0.0
    runs = [(e["job"], e["at"]) for e in events if e["event"] == "started"]
    for job, at in runs:
        end = next(
            (
                parse_utc(e["at"])
                for e in events
                if e["job"] == job
                and e["event"] == "finished"
                and e.get("location") == pool.location
                and e["at"] >= at
            ),
            None,
        )
        gpus = next((int(r["gpus"]) for r in doc["running"] if r["job"] == job), None)
        if gpus is None:
            gpus = next((int(e["gpus"]) for e in events if e["job"] == job and e["event"] == "submitted"), 0)
        stop = min(as_utc(now), end) if end is not None else as_utc(now)
        busy += max(0.0, hours_between(at, stop)) * gpus
    capacity = window_h * pool.gpus
    util = busy / capacity if capacity > 0 else 0.0
    # how long each submission waited in the queue before it started on the pool or burst
    waits, queued = [], set()
    for e in events:
        if e["event"] == "submitted":
            queued.add(e["job"])
        elif e["event"] in ("started", "burst") and e["job"] in queued:
            queued.discard(e["job"])
            waits.append(float(e.get("wait_hours", 0.0)))
    bursts = [e for e in events if e["event"] == "burst"]
    burst_hours = sum(
        float(e["hours"])
        for e in events
        if e["event"] in ("repatriated", "finished") and e.get("location") != pool.location
    )
    burst_hours += sum(max(0.0, hours_between(b["started_at"], now)) for b in doc["burst"])
    return {
        "pool": pool.name,
        "location": pool.location,
        "gpus": pool.gpus,
        "usd_per_gpu_hour": pool.usd_per_gpu_hour,
        "window_hours": window_h,
        "busy_gpu_hours": busy,
        "utilisation": util,
        "breakeven_utilisation": BREAKEVEN_UTILISATION,
        "owning_pays": util >= BREAKEVEN_UTILISATION,
        "running": [r["job"] for r in doc["running"]],
        "queued": [q["job"] for q in doc["queue"]],
        "burst_now": [b["job"] for b in doc["burst"]],
        "queue_wait_hours_mean": sum(waits) / len(waits) if waits else 0.0,
        "queue_wait_hours_max": max(waits, default=0.0),
        "bursts": len(bursts),
        "repatriations": sum(1 for e in events if e["event"] == "repatriated"),
        "burst_hours": burst_hours,
        "burst_cost_usd": sum(float(e["choice"]["cost_cloud_usd"]) for e in bursts),
        "waiting_cost_usd": sum(float(e["choice"]["cost_pool_usd"]) for e in bursts),
        "burst_decisions": [
            {
                "job": e["job"],
                "at": e["at"],
                "to": e["location"],
                **{
                    k: e["choice"][k]
                    for k in ("cost_pool_usd", "cost_cloud_usd", "egress_usd", "wait_hours", "reason")
                },
            }
            for e in bursts
        ],
    }


def pool_managed_jobs() -> set[str]:
    """Jobs a declared pool runs, queues or has burst: the pools decide where they go (the price
    sensor and the placement economics leave them alone)."""
    out: set[str] = set()
    for pool in load_pools():
        doc = load_pool_state(pool.name)
        out.update(e["job"] for k in ("running", "queue", "burst") for e in doc[k])
    return out
