"""Progress of long work (pushing gigabytes, training, building the marts) for people at a terminal.

Library functions that take long accept a :class:`Progress` and report to it through tasks
(``progress.task("push corpus", total=..., unit="bytes")`` then ``task.advance(n)``); the default,
:data:`NO_PROGRESS`, does nothing, so the library and Dagster never print anything.

The command line picks one with :func:`progress_for`: a live display on **stderr only** (rich),
when stderr is a terminal, unless ``--quiet``; ``SPOTSHIFT_PROGRESS=always|never`` overrides the
terminal test (CI logs, tests). Standard output stays what the command prints — with ``--json``,
one JSON object and nothing else.

Standard library at import time: rich is imported only when a display is actually shown.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from spotshift.sync.chunking import human_bytes

#: ``SPOTSHIFT_PROGRESS`` values
ALWAYS, NEVER = ("1", "always", "on", "yes"), ("0", "never", "off", "no")


class Task:
    """One line of progress: ``completed`` of ``total`` (``None``: unknown) in ``unit``
    (``bytes`` shows sizes and rates in bytes). The base class ignores everything."""

    def advance(self, amount: float = 1.0) -> None:
        """``amount`` more done (thread-safe)."""

    def update(self, *, completed: float | None = None, total: float | None = None, note: str = "") -> None:
        """Set the absolute position, the total, or the note shown after the bar (e.g. a loss)."""


class Progress:
    """A set of tasks. The base class shows nothing (what the library gets by default)."""

    def task(self, description: str, total: float | None = None, unit: str = "") -> Task:
        """A new line of progress."""
        return Task()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


NO_PROGRESS = Progress()


def progress_for(quiet: bool = False, stream: Any = None) -> Progress:
    """The progress display for a command: on ``stream`` (default stderr) when it is a terminal and
    not ``quiet``; ``SPOTSHIFT_PROGRESS`` forces it (``always``) or turns it off (``never``)."""
    stream = stream if stream is not None else sys.stderr
    mode = os.environ.get("SPOTSHIFT_PROGRESS", "").strip().lower()
    if quiet or mode in NEVER:
        return NO_PROGRESS
    isatty = getattr(stream, "isatty", lambda: False)()
    if mode in ALWAYS or isatty:
        return RichProgress(stream, force=not isatty)
    return NO_PROGRESS


class _RichTask(Task):
    def __init__(self, owner: RichProgress, task_id: Any):
        self._owner, self._id = owner, task_id

    def advance(self, amount: float = 1.0) -> None:
        self._owner.bar.advance(self._id, amount)

    def update(self, *, completed: float | None = None, total: float | None = None, note: str = "") -> None:
        kwargs: dict[str, Any] = {"note": note} if note else {}
        if completed is not None:
            kwargs["completed"] = completed
        if total is not None:
            kwargs["total"] = total
        self._owner.bar.update(self._id, **kwargs)


class RichProgress(Progress):
    """A rich live display on ``stream``: bar, done/total, rate and time left per task."""

    def __init__(self, stream: Any, *, force: bool = False):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeRemainingColumn

        console = Console(file=stream, force_terminal=True if force else None, width=110 if force else None)
        self.bar = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            _AmountColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[note]}"),
            console=console,
            transient=False,
        )
        self._lock = threading.Lock()

    def task(self, description: str, total: float | None = None, unit: str = "") -> Task:
        with self._lock:
            return _RichTask(self, self.bar.add_task(description, total=total, unit=unit, note=""))

    def __enter__(self) -> Progress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()


def _amount_column_class() -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class AmountColumn(ProgressColumn):
        """``12.0/40.0 MiB 25.1 MiB/s`` for bytes, ``30/60 steps 4.2/s`` otherwise."""

        def render(self, task: Any) -> Any:
            unit = task.fields.get("unit", "")
            speed = task.finished_speed or task.speed
            if unit == "bytes":
                done, total = human_bytes(task.completed), human_bytes(task.total) if task.total else "?"
                rate = f" {human_bytes(speed)}/s" if speed else ""
                return Text(f"{done}/{total}{rate}")
            total = f"{task.total:,.0f}" if task.total else "?"
            rate = f" {speed:,.1f}/s" if speed else ""
            return Text(f"{task.completed:,.0f}/{total} {unit}{rate}".rstrip())

    return AmountColumn


def _AmountColumn() -> Any:  # noqa: N802 - builds the column class on first use (rich is imported late)
    return _amount_column_class()()
