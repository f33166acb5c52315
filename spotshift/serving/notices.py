"""Replica preemptions on the trainers' notice path.

A spot replica that gets its provider's notice (the trainer's watchers, polled by
:mod:`spotshift.serving.serve`) records it exactly where a trainer does: the notice event
(:func:`~spotshift.training.notice_events.record_notice`: write-once, in its region's object store
or in PostgreSQL) and a
``raw.preemptions`` row through :func:`spotshift.warehouse.record_facts`. The event carries
``endpoint`` and ``replica_id`` (``job`` names the endpoint, as :func:`read_notices` requires one):
``preemption_sensor`` leaves such events to the inference autoscaler, which reads them with
:func:`replica_notices` and keeps spot out of the preempted location for a while, so the lost
replica is replaced in the next-cheapest place.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from spotshift.clock import parse_utc, virtual_now
from spotshift.training.notice_events import read_notices, record_notice
from spotshift.warehouse import record_facts

NO_SPOT_AFTER_NOTICE_S = 1800.0  # a preempted location gets no new spot replica for 30 min (as the simulator)


def record_replica_notice(endpoint: str, replica_id: str, location: str, notice: Any) -> dict[str, Any]:
    """Record the notice event (once) and its ``raw.preemptions`` row; returns the event.

    ``notice`` is a :class:`~spotshift.training.preemption.PreemptionNotice` whose id is assigned.
    Times in the row are on the virtual clock (as the trainer's); the event keeps both.
    """
    virtual_noticed = virtual_now()
    event = {
        "notice_id": notice.notice_id,
        "job": endpoint,
        "endpoint": endpoint,
        "replica_id": replica_id,
        "location": location,
        "kind": notice.kind,
        "noticed_at": notice.noticed_at.isoformat(),
        "deadline_at": notice.deadline_at.isoformat(),
        "virtual_noticed_at": virtual_noticed.isoformat(),
        "detail": notice.detail,
    }
    record_notice(event)
    record_facts(
        {
            "raw.preemptions": [
                {
                    "notice_id": notice.notice_id,
                    "job": None,
                    "endpoint": endpoint,
                    "replica_id": replica_id,
                    "location": location,
                    "notice_kind": notice.kind,
                    "noticed_at": virtual_noticed.isoformat(),
                    "deadline_at": (virtual_noticed + timedelta(seconds=notice.warning_s)).isoformat(),
                }
            ]
        },
        timeout_s=5.0,
    )
    return event


def is_replica_notice(event: dict[str, Any]) -> bool:
    """Whether a notice event came from a replica (the trainers' recovery leaves it alone)."""
    return bool(event.get("endpoint"))


def replica_notices(endpoint: str, locations: list[str]) -> list[dict[str, Any]]:
    """Notice events of ``endpoint``'s replicas in the stores of ``locations``, oldest first."""
    out = []
    for loc in sorted(set(locations)):
        out += [e for e in read_notices(loc) if e.get("endpoint") == endpoint]
    return sorted(out, key=lambda e: (str(e.get("virtual_noticed_at", "")), e["notice_id"]))


def recent_no_spot(events: list[dict[str, Any]], now: datetime) -> dict[str, str]:
    """Locations whose replicas were preempted within :data:`NO_SPOT_AFTER_NOTICE_S` before ``now``."""
    out: dict[str, str] = {}
    for e in events:
        at = parse_utc(str(e.get("virtual_noticed_at") or e["noticed_at"]))
        if timedelta(0) <= now - at <= timedelta(seconds=NO_SPOT_AFTER_NOTICE_S) or at > now:
            out[e["location"]] = f"spot replica {e.get('replica_id', '?')} preempted ({e['notice_id']})"
    return out
