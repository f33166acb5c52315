"""A dev environment's state document: ``$SPOTSHIFT_HOME/devenvs/<name>.json``, rewritten atomically
under :func:`env_lock`: status (``declared`` | ``running`` | ``hibernated`` | ``downsized`` |
``exited``), the process, where it runs and at what price, the last activity, the workspace
snapshot, and an append-only event list."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from spotshift.atomic import atomic_write_json
from spotshift.clock import as_utc, parse_utc
from spotshift.errors import ConfigError
from spotshift.home import spotshift_home
from spotshift.jsondoc import parse_json
from spotshift.registry import locked


def devenvs_dir() -> Path:
    """Where the environments' state documents, logs and activity files live."""
    return spotshift_home() / "devenvs"


def state_path(name: str) -> Path:
    return devenvs_dir() / f"{name}.json"


def load_env_state(name: str) -> dict[str, Any]:
    """The environment's state document (status ``declared`` when it never started)."""
    path = state_path(name)
    if not path.exists():
        return {"name": name, "status": "declared", "events": []}
    doc = parse_json(path.read_bytes(), f"devenv state {path}")
    if not isinstance(doc, dict) or not isinstance(doc.get("events"), list):
        raise ConfigError(f"devenv state {path}: not a devenv state document")
    return doc


def save_env_state(doc: dict[str, Any]) -> None:
    devenvs_dir().mkdir(parents=True, exist_ok=True)
    atomic_write_json(state_path(doc["name"]), doc)


def record_event(doc: dict[str, Any], now: datetime, event: str, **detail: Any) -> None:
    doc["events"].append({"at": as_utc(now).isoformat(), "event": event, **detail})


def hours_since(a: str, b: datetime) -> float:
    return (as_utc(b) - parse_utc(a)).total_seconds() / 3600.0


# --- where it runs ---------------------------------------------------------------------------------


def env_lock(name: str) -> Any:
    """The lock on ``name``'s state document (a context manager)."""
    devenvs_dir().mkdir(parents=True, exist_ok=True)
    return locked(state_path(name))
