"""A private pool's capacity, queue, bursts and repatriations over (virtual) time.

The pool's state is one JSON document, ``$SPOTSHIFT_HOME/pools/<name>.json``, rewritten atomically
under a lock: the jobs running on the pool (GPUs held until their work is done), the FIFO queue,
the jobs burst to a cloud, and an append-only list of events (submitted, started, burst,
repatriated, finished) carrying the cost of both choices at each decision.

:func:`tick` advances the pool to ``now``: finished work frees GPUs; queued jobs start in order while
the head fits; burst jobs come back when the pool has room and it pays
(:func:`~spotshift.pools.economics.stay_or_repatriate`); every job still queued is costed against
the cheapest feasible cloud placement of the latest prices (:func:`cloud_offer`, the placement
economics) and bursts when waiting would miss its deadline or cost more
(:func:`~spotshift.pools.economics.burst_or_wait`).
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from spotshift import warehouse
from spotshift.atomic import atomic_write_json
from spotshift.clock import as_utc, parse_utc
from spotshift.errors import ConfigError
from spotshift.home import spotshift_home
from spotshift.jobs import get_job
from spotshift.jsondoc import parse_json
from spotshift.placement.inputs import decide_for_job
from spotshift.placement.params import PlacementParams
from spotshift.pools.economics import burst_or_wait, stay_or_repatriate
from spotshift.pools.pool import BREAKEVEN_UTILISATION, PrivatePool, get_pool, load_pools
from spotshift.pricing.catalog import gpu_model_matches
from spotshift.pricing.egress import DEFAULT_EGRESS
from spotshift.registry import locked
from spotshift.sync.datasets import get_dataset


@dataclass(frozen=True)
class CloudOffer:
    """Where a job would burst: the cheapest feasible cloud placement of the latest prices."""

    location: str
    instance_type: str
    market: str
    usd_hour: float
    egress_back_usd_per_gb: float
    """The cloud's internet egress rate: what the checkpoint's trip home costs per GB."""


OfferFn = Callable[[str, datetime], CloudOffer | None]


def state_path(pool: str) -> Path:
    return spotshift_home() / "pools" / f"{pool}.json"


def _empty(pool: str) -> dict[str, Any]:
    return {"pool": pool, "running": [], "queue": [], "burst": [], "events": []}


def load_pool_state(pool: str) -> dict[str, Any]:
    """The pool's state document (empty when nothing was ever submitted)."""
    path = state_path(pool)
    if not path.exists():
        return _empty(pool)
    doc = parse_json(path.read_bytes(), f"pool state {path}")
    if not isinstance(doc, dict) or not all(
        isinstance(doc.get(k), list) for k in ("running", "queue", "burst", "events")
    ):
        raise ConfigError(f"pool state {path}: not a pool state document")
    return doc


def _save(doc: dict[str, Any]) -> None:
    path = state_path(doc["pool"])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, doc)


def _iso(t: datetime) -> str:
    return as_utc(t).isoformat()


def _h(a: str | datetime, b: str | datetime) -> float:
    """Hours from ``a`` to ``b``."""
    ta = parse_utc(a) if isinstance(a, str) else as_utc(a)
    tb = parse_utc(b) if isinstance(b, str) else as_utc(b)
    return (tb - ta).total_seconds() / 3600.0


def _event(doc: dict[str, Any], at: datetime, job: str, event: str, **detail: Any) -> None:
    doc["events"].append({"at": _iso(at), "job": job, "event": event, **detail})


def _used(doc: dict[str, Any]) -> int:
    return sum(int(r["gpus"]) for r in doc["running"])


def queue_starts(pool: PrivatePool, doc: dict[str, Any], now: datetime) -> dict[str, float]:
    """Hours from ``now`` until each queued job would start on the pool (FIFO: a job starts when the
    ones ahead of it have started and enough GPUs are free)."""
    ends = [(max(0.0, _h(now, r["ends_at"])), int(r["gpus"])) for r in doc["running"]]
    heapq.heapify(ends)
    free, t, out = pool.gpus - _used(doc), 0.0, {}
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
            {"job": job.name, "gpus": job.gpu_count, "submitted_at": _iso(now), "work_hours": job.work_hours}
        )
        _event(doc, now, job.name, "submitted", gpus=job.gpu_count, work_hours=job.work_hours)
        _tick(pool, doc, now, offer or default_offer(con))
        _save(doc)
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
        _save(doc)
    return doc


def _deadline_left(job_name: str, now: datetime) -> float | None:
    deadline = get_job(job_name).deadline_at
    return None if deadline is None else _h(now, deadline)


def _tick(
    pool: PrivatePool,
    doc: dict[str, Any],
    now: datetime,
    offer: OfferFn,
    params: PlacementParams | None = None,
) -> None:
    p = params or PlacementParams()
    # 1. finished work frees the pool; finished bursts leave the cloud
    for kind, location, usd_hour in (
        ("running", lambda e: pool.location, lambda e: int(e["gpus"]) * pool.usd_per_gpu_hour),
        ("burst", lambda e: e["location"], lambda e: float(e["usd_hour"])),
    ):
        for e in [e for e in doc[kind] if _h(e["ends_at"], now) >= 0]:
            doc[kind].remove(e)
            hours = _h(e["started_at"], e["ends_at"])
            _event(
                doc,
                parse_utc(e["ends_at"]),
                e["job"],
                "finished",
                location=location(e),
                hours=hours,
                cost_usd=hours * usd_hour(e),
            )
    # 2. the queue starts in order while its head fits
    while doc["queue"] and int(doc["queue"][0]["gpus"]) <= pool.gpus - _used(doc):
        q = doc["queue"].pop(0)
        _start_on_pool(
            doc,
            pool,
            q["job"],
            int(q["gpus"]),
            float(q["work_hours"]),
            now,
            wait_hours=_h(q["submitted_at"], now),
        )
    # 3. burst jobs come back when the pool has room and it pays
    for b in list(doc["burst"]):
        if doc["queue"] or int(b["gpus"]) > pool.gpus - _used(doc):
            continue
        left = max(0.0, _h(now, b["ends_at"]))
        choice = stay_or_repatriate(
            work_hours_left=left,
            gpus=int(b["gpus"]),
            pool_usd_per_gpu_hour=pool.usd_per_gpu_hour,
            cloud_usd_hour=float(b["usd_hour"]),
            egress_back_usd=float(b.get("checkpoint_gb", 0.0)) * float(b["egress_back_usd_per_gb"]),
            deadline_hours_left=_deadline_left(b["job"], now),
            hours_since_burst=_h(b["started_at"], now),
            params=p,
        )
        if choice.action != "repatriate":
            if b.get("last_choice") != choice.reason:
                b["last_choice"] = choice.reason
            continue
        doc["burst"].remove(b)
        hours = _h(b["started_at"], now)
        _event(
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
    # 4. every job still queued: wait or burst, both costed
    changed = True
    while changed:
        changed = False
        starts = queue_starts(pool, doc, now)
        for q in doc["queue"]:
            o = offer(q["job"], now)
            gb_out, gb_back = _data_gb(q["job"])
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
                    _event(doc, now, q["job"], "waiting", location=pool.location, choice=choice.to_dict())
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
                    "started_at": _iso(now),
                    "ends_at": _iso(ends),
                }
            )
            _event(
                doc,
                now,
                q["job"],
                "burst",
                location=o.location,
                instance_type=o.instance_type,
                wait_hours=_h(q["submitted_at"], now),
                choice=choice.to_dict(),
            )
            changed = True
            break


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
        {"job": job, "gpus": gpus, "started_at": _iso(now), "ends_at": _iso(ends), "work_hours": work_hours}
    )
    _event(doc, now, job, "started", location=pool.location, wait_hours=wait_hours)


def _data_gb(job_name: str) -> tuple[float, float]:
    """(GB of the job's dataset that leave the site on a burst, GB of its checkpoint that come back).

    The dataset: the bytes of its declared source directory. The checkpoint: the newest committed
    one's bytes in ``raw.checkpoints`` when the warehouse has one, else 0."""
    job = get_job(job_name)
    total = 0
    try:
        src = Path(get_dataset(job.dataset).source)
        for root, _, files in os.walk(src):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    except (ConfigError, OSError):
        total = 0
    return total / 1e9, _checkpoint_bytes(job_name) / 1e9


def _checkpoint_bytes(job_name: str) -> int:
    try:
        with warehouse.connect() as con:
            row = warehouse.first_row(
                con, "SELECT bytes FROM raw.checkpoints WHERE job = ? ORDER BY step DESC LIMIT 1", [job_name]
            )
    except Exception:  # noqa: BLE001 - no warehouse yet, or no such column: nothing to carry back
        return 0
    return int(row[0] or 0) if row else 0


def default_offer(con: Any = None) -> OfferFn:
    """The cheapest feasible cloud placement of the latest prices, from the placement economics."""

    def offer(job_name: str, now: datetime) -> CloudOffer | None:
        return cloud_offer(job_name, now, con=con)

    return offer


def cloud_offer(job_name: str, now: datetime, *, con: Any = None) -> CloudOffer | None:
    """Where ``job_name`` would burst now: the target of the placement decision (eligible offers only:
    allowed locations, GPU model and count, topology, price cap), or None when nothing qualifies."""
    from contextlib import nullcontext

    ctx = nullcontext(con) if con is not None else warehouse.connect()
    with ctx as c:
        try:
            decision = decide_for_job(c, job_name, now=now)
        except ConfigError:
            return None
    eligible = sorted((x for x in decision.candidates if x.eligible), key=lambda x: x.score_gpu_hour_usd)
    target = decision.target or (eligible[0] if eligible else None)
    if target is None:
        return None
    q = target.quote
    return CloudOffer(
        q.location, q.instance_type, q.market, q.price_usd_hour, DEFAULT_EGRESS[q.provider].internet
    )


def pool_report(pool_name: str, *, now: datetime) -> dict[str, Any]:
    """Utilisation, queue waits, burst hours and the cost of bursting vs waiting, from the ledger."""
    pool = get_pool(pool_name)
    doc = load_pool_state(pool.name)
    events = doc["events"]
    start = min((parse_utc(e["at"]) for e in events), default=as_utc(now))
    window_h = max(0.0, _h(start, now))
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
        busy += max(0.0, _h(at, stop)) * gpus
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
    burst_hours += sum(max(0.0, _h(b["started_at"], now)) for b in doc["burst"])
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
