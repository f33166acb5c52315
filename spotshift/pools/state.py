"""A private pool's state document: ``$SPOTSHIFT_HOME/pools/<name>.json``, rewritten atomically (the
caller holds :func:`spotshift.registry.locked` on :func:`state_path`): the jobs running on the pool,
the FIFO queue, the jobs burst to a cloud, and the append-only ledger of events."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from spotshift.atomic import atomic_write_json
from spotshift.clock import as_utc, parse_utc
from spotshift.errors import ConfigError
from spotshift.home import spotshift_home
from spotshift.jsondoc import parse_json


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


def save_pool_state(doc: dict[str, Any]) -> None:
    path = state_path(doc["pool"])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, doc)


def iso(t: datetime) -> str:
    return as_utc(t).isoformat()


def hours_between(a: str | datetime, b: str | datetime) -> float:
    """Hours from ``a`` to ``b``."""
    ta = parse_utc(a) if isinstance(a, str) else as_utc(a)
    tb = parse_utc(b) if isinstance(b, str) else as_utc(b)
    return (tb - ta).total_seconds() / 3600.0


def record_event(doc: dict[str, Any], at: datetime, job: str, event: str, **detail: Any) -> None:
    doc["events"].append({"at": iso(at), "job": job, "event": event, **detail})


def gpus_used(doc: dict[str, Any]) -> int:
    return sum(int(r["gpus"]) for r in doc["running"])
