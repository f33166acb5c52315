"""Honest baselines: what a job would have cost staying on its first spot placement, preemptions paid.

"Stay on the first spot location" is only a fair baseline if it pays for what staying costs: a
spot location that loses its capacity preempts the job, which loses the work since its last
checkpoint, waits for capacity to come back, restarts (a changeover) — and falls back to on-demand
when the deadline requires it. The policy simulator already does exactly this (its
``stay_first_spot`` policy, :func:`spotshift.simulate.engine.run_policy`); this module runs it, for
each training job of the warehouse, on:

* the job's **first spot placement** (location and instance type, from ``raw.compute_usage``) from
  the time it started there;
* that location's **prices as the warehouse saw them** (every poll of ``raw.price_quotes``, spot and
  on-demand, the cheapest zone; a price holds until the next poll, as in ``int_price_curves``);
* that location's **availability trace** (:func:`spotshift.simulate.traces.load_availability`,
  ``$SPOTSHIFT_HOME/traces/<provider>_<region>.json`` with its start time) — the demo's preemption
  injector writes the traces it replays there, a user may put real ones. Without a trace nothing is
  invented: the job gets no row and ``mart_savings`` says why its baseline is missing;
* the job's declaration (work hours, deadline, checkpoint interval; for a job no longer declared:
  its billed hours, a deadline of three times that, the simulator's default checkpoint interval).

The simulator runs twice: with the trace, and with the location never preempted (the bound). The
row of ``raw.job_baselines`` keeps both and their ratio ``preemption_factor``; ``mart_savings``
multiplies its own never-preempted figure (the same productive work at the time-weighted quotes) by
that factor, so the baseline prices exactly the work the job did, and carries what preemptions add.
A row is appended only when an input changed (``inputs_digest``); the newest per job wins.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from spotshift.clock import as_utc, virtual_now
from spotshift.jobs import load_jobs
from spotshift.placement.params import PlacementParams
from spotshift.pricing.regions import split_location
from spotshift.simulate.engine import Scenario, run_policy
from spotshift.simulate.market import build_market
from spotshift.simulate.traces import AvailabilityTrace, availability_dir, load_availability
from spotshift.warehouse import record_facts

BASELINE = "stay_first_spot"
TABLE = "raw.job_baselines"
#: deadline of a job no longer declared, as a multiple of its billed hours (the safety net rarely fires)
UNDECLARED_DEADLINE_FACTOR = 3.0


@dataclass(frozen=True)
class FirstSpot:
    """A job's first spot interval: where it started on spot and when, and its billed hours."""

    job: str
    location: str
    instance_type: str
    started_at: datetime
    billed_hours: float


def first_spot_placements(con: Any) -> list[FirstSpot]:
    """Per job with a spot interval in ``raw.compute_usage``, its first one (ties by usage id)."""
    rows = con.execute(
        """SELECT job,
                  arg_min(lower(provider) || '/' || region, (started_at, usage_id)),
                  arg_min(instance_type, (started_at, usage_id)),
                  min(started_at)
           FROM raw.compute_usage
           WHERE market = 'spot' AND job IS NOT NULL AND started_at IS NOT NULL
           GROUP BY job ORDER BY job"""
    ).fetchall()
    if not rows:
        return []
    hours = dict(
        con.execute(
            """SELECT job, sum(greatest(epoch(ended_at - started_at), 0)) / 3600.0
               FROM raw.compute_usage WHERE job IS NOT NULL GROUP BY job"""
        ).fetchall()
    )
    return [FirstSpot(j, loc, it, as_utc(at), float(hours.get(j) or 0.0)) for j, loc, it, at in rows]


def _quotes(con: Any, fs: FirstSpot) -> Any:
    """The location's price history for the instance type, in the simulator's history shape."""
    import polars as pl

    provider, region = split_location(fs.location, zone=True)
    rows = con.execute(
        """SELECT polled_at, lower(provider), region, instance_type, min(gpu_model), min(gpu_count),
                  min(price_usd_hour) FILTER (WHERE market = 'spot'),
                  min(price_usd_hour) FILTER (WHERE market = 'on_demand')
           FROM raw.price_quotes
           WHERE lower(provider) = ? AND region = ? AND instance_type = ? AND polled_at IS NOT NULL
           GROUP BY ALL ORDER BY polled_at""",
        [provider, region, fs.instance_type],
    ).fetchall()
    schema = {
        "observed_at": pl.Datetime("us", "UTC"),
        "provider": pl.String,
        "region": pl.String,
        "instance_type": pl.String,
        "gpu_model": pl.String,
        "gpu_count": pl.Int32,
        "spot_hour": pl.Float64,
        "ondemand_hour": pl.Float64,
    }
    return pl.DataFrame([(as_utc(r[0]), *r[1:]) for r in rows], schema=schema, orient="row")


def _scenario(fs: FirstSpot, job: Any | None) -> Any:
    """The simulated job: the declaration's work, deadline and checkpoint interval (see module doc)."""
    changeover = PlacementParams().changeover_hours
    if job is None:
        work = max(fs.billed_hours, 1e-3)
        return Scenario(
            work_hours=work,
            deadline_hours=work * UNDECLARED_DEADLINE_FACTOR,
            data_gb=0.0,
            ckpt_gb=0.0,
            changeover_hours=changeover,
            data_location=fs.location,
        )
    every = job.work_hours * job.checkpoint_every_steps / max(job.total_steps, 1)
    if job.checkpoint_every_minutes and job.checkpoint_every_minutes > 0:
        every = min(every, job.checkpoint_every_minutes / 60.0)
    deadline = job.work_hours * UNDECLARED_DEADLINE_FACTOR
    if job.deadline_at is not None:
        deadline = (job.deadline_at - fs.started_at).total_seconds() / 3600.0
    return Scenario(
        work_hours=job.work_hours,
        deadline_hours=max(deadline, job.work_hours),
        data_gb=0.0,  # a baseline that never moves copies nothing after its first start
        ckpt_gb=0.0,
        checkpoint_interval_hours=max(every, 1e-3),
        changeover_hours=changeover,
        data_location=fs.location,
    )


def _aligned(trace: Any, trace_start: datetime, at: datetime) -> Any:
    """``trace`` rotated so its tick 0 is ``at`` (traces wrap around, as the injector reads them)."""
    offset = math.floor((at - trace_start).total_seconds() / trace.gap_seconds) % len(trace.data)
    return AvailabilityTrace(trace.gap_seconds, trace.data[offset:] + trace.data[:offset], trace.name)


def _digest(fs: FirstSpot, scenario: Any, quotes: Any, trace_bytes: bytes, trace_start: datetime) -> str:
    h = hashlib.blake2b(digest_size=16)
    doc = {
        "first_spot": {**asdict(fs), "started_at": fs.started_at.isoformat()},
        "scenario": asdict(scenario),
        "trace_start": trace_start.isoformat(),
    }
    h.update(json.dumps(doc, sort_keys=True, default=str).encode())
    h.update(quotes.write_csv().encode())
    h.update(trace_bytes)
    return h.hexdigest()


def simulate_stay_first_spot(
    con: Any, fs: FirstSpot, job: Any | None, *, now: datetime, directory: Any = None
) -> dict[str, Any] | None:
    """The ``raw.job_baselines`` row of one job, or None when it cannot be simulated honestly.

    None: no availability trace of the first spot location, no quote of it, or a price missing
    where the simulated job needed one (the simulator's cost is then not a number).
    """
    found = load_availability(fs.location, directory)
    if found is None:
        return None
    trace, trace_start, path = found
    quotes = _quotes(con, fs)
    if quotes.height == 0:
        return None
    sc = _scenario(fs, job)
    horizon = max(sc.deadline_hours, sc.work_hours) + sc.work_hours + 24.0
    market = build_market(
        quotes,
        fs.instance_type,
        start=fs.started_at,
        hours=horizon,
        gap_seconds=trace.gap_seconds,
        traces={fs.location: _aligned(trace, trace_start, fs.started_at)},
    )
    traced = run_policy(BASELINE, market, sc, fs.location)
    never = replace(market, available=[[True] * market.n_ticks for _ in market.locations])
    bound = run_policy(BASELINE, never, sc, fs.location)
    if not (math.isfinite(traced.compute_usd) and math.isfinite(bound.compute_usd)) or bound.compute_usd <= 0:
        return None
    return {
        "job": fs.job,
        "baseline": BASELINE,
        "location": fs.location,
        "instance_type": fs.instance_type,
        "availability": f"trace {path.name} from {trace_start:%Y-%m-%d %H:%M} UTC",
        "inputs_digest": _digest(fs, sc, quotes, path.read_bytes(), trace_start),
        "computed_at": now,
        "work_hours": sc.work_hours,
        "deadline_hours": sc.deadline_hours,
        "preemptions": traced.preemptions,
        "on_demand_hours": traced.on_demand_hours,
        "compute_usd": traced.compute_usd,
        "bound_compute_usd": bound.compute_usd,
        "preemption_factor": traced.compute_usd / bound.compute_usd,
        "deadline_met": traced.deadline_met,
    }


def record_baselines(con: Any, *, now: datetime | None = None, directory: Any = None) -> int:
    """Simulate the stay-on-first-spot baseline of every job whose inputs changed; rows written.

    ``con`` is a writable warehouse connection; the marts read the rows (``mart_savings``). Cheap
    when there is nothing to do: without an availability directory no job is even looked up.
    """
    d = availability_dir() if directory is None else Path(directory)
    if not d.is_dir() or not any(d.glob("*.json")):
        return 0
    declared = {j.name: j for j in load_jobs()}
    now = now or virtual_now()
    known = {
        r[0]
        for r in con.execute(f"SELECT inputs_digest FROM {TABLE} WHERE baseline = ?", [BASELINE]).fetchall()
    }
    rows = []
    for fs in first_spot_placements(con):
        row = simulate_stay_first_spot(con, fs, declared.get(fs.job), now=now, directory=d)
        if row is not None and row["inputs_digest"] not in known:
            rows.append(row)
    if rows:
        record_facts({TABLE: rows}, con=con)
    return len(rows)
