"""The move ledger: each job's last move (its :class:`~spotshift.migration.steps.MoveState`), on disk.

``$SPOTSHIFT_HOME/moves/<job>.json``, replaced atomically (temp + rename) at every step. One move of
a job runs at a time (the run coordinator and the compute backend's per-job lock see to it), so
the job names its move. The rollback reads the failed move's plan from here, and a restarted run
of the same plan picks up what the first one found, instead of passing the plan around in run
tags.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spotshift.atomic import atomic_write_json
from spotshift.errors import ConfigError
from spotshift.home import spotshift_home


def moves_dir() -> Path:
    """Directory of the move ledger."""
    return spotshift_home() / "moves"


def move_path(job: str) -> Path:
    """The ledger file of one job."""
    if not job or "/" in job or job.startswith("."):
        raise ConfigError(f"job name {job!r} cannot name a move ledger file")
    return moves_dir() / f"{job}.json"


def save_move(job: str, move: dict[str, Any]) -> None:
    """Replace the job's recorded move (atomically)."""
    path = move_path(job)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, move)


def load_move(job: str) -> dict[str, Any] | None:
    """The job's recorded move, or None; :class:`ConfigError` naming the file when it is corrupt."""
    path = move_path(job)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"move ledger {path}: unreadable ({exc})") from None
    if not isinstance(raw, dict) or "plan" not in raw:
        raise ConfigError(f"move ledger {path}: not a recorded move")
    return raw
