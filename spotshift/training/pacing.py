"""Trainers paced on a stepped virtual clock, and the owner's barrier that waits for them.

On a stepped clock (:meth:`spotshift.clock.VirtualClock.stepped_at`, ``make demo``) time moves only
when its owner advances it. A live trainer then takes one step per ``hours_per_step`` of virtual
time — the GPU work the step stands for — instead of sleeping wall seconds:

* the first step is taken at once (a migration waits for it), at the clock's reading then;
* every later step waits until the clock reads at least the previous step's reading plus
  ``hours_per_step`` (a jump of the clock, e.g. a changeover, buys one step, never a burst);
* before each wait the trainer writes ``<workdir>/pace.json`` (its pid, step and the reading it
  waits for), after its step's checkpoint is committed.

The owner advances the clock, then calls :func:`wait_for_trainers`: it returns once every live
trainer waits for a reading later than the clock's (or has exited). Between two advances the
trainers' steps, checkpoints and facts are therefore a function of the virtual time alone, and the
story is the same on any machine and under any load.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from spotshift.atomic import atomic_write_json
from spotshift.clock import as_utc, load_clock, parse_utc
from spotshift.errors import SpotshiftError

PACE_FILE = "pace.json"
#: a step is due this close to its reading (ISO round trips of the clock lose microseconds)
TOLERANCE = timedelta(milliseconds=1)
POLL_S = 0.01


def is_due(now: datetime, due: datetime) -> bool:
    """Whether a step waiting for reading ``due`` may run at clock reading ``now``."""
    return as_utc(now) >= as_utc(due) - TOLERANCE


class ClockPacer:
    """The trainer side: :meth:`wait_turn` before each step (see module doc)."""

    def __init__(self, workdir: str | os.PathLike[str], hours_per_step: float):
        if hours_per_step <= 0:
            raise SpotshiftError(f"pacing on the clock needs hours_per_step > 0, got {hours_per_step}")
        self.path = Path(workdir) / PACE_FILE
        self.per_step = timedelta(hours=hours_per_step)
        self.last: datetime | None = None

    def wait_turn(self, step: int, stop: Any) -> bool:
        """Block until the next step is due; False when ``stop`` (a StopController) was set meanwhile."""
        if self.last is None:
            self.last = load_clock().now()
            return True
        due = self.last + self.per_step
        atomic_write_json(
            self.path, {"pid": os.getpid(), "step": step, "waiting_for": due.isoformat()}, fsync=False
        )
        while True:
            now = load_clock().now()
            if is_due(now, due):
                self.last = now
                return True
            if stop.wait(POLL_S):
                return False


def pace_state(workdir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``pace.json`` a paced trainer wrote in ``workdir`` (None when absent or torn)."""
    try:
        return json.loads((Path(workdir) / PACE_FILE).read_text())
    except (OSError, ValueError):
        return None


def settled(info: Any, now: datetime) -> bool:
    """Whether live trainer ``info`` (a TrainerInfo) waits for a reading after ``now``."""
    state = pace_state(info.workdir)
    if not state or state.get("pid") != info.pid:
        return False
    return not is_due(now, parse_utc(str(state["waiting_for"])))


def wait_for_trainers(backend: Any, *, timeout_s: float = 300.0) -> None:
    """The owner's barrier after advancing a stepped clock: every live training process has taken the
    steps due at the clock's reading and waits for a later one, or has exited.

    :class:`SpotshiftError` naming the trainer when one does not settle within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        now = load_clock().now()
        pending = [i for i in backend.list() if i.alive and i.role == "train" and not settled(i, now)]
        if not pending:
            return
        if time.monotonic() > deadline:
            names = ", ".join(f"{i.name} (pid {i.pid}) in {i.location}" for i in pending)
            raise SpotshiftError(f"trainers did not catch up with the clock within {timeout_s:.0f}s: {names}")
        time.sleep(POLL_S)
