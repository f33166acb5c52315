"""Commit fencing: a checkpoint's ``COMMIT`` marker is written only while its job's writer still
holds the job's run-level lock (:mod:`spotshift.runlocks`).

A trainer installs ``alive`` (its lock's :meth:`~spotshift.runlocks.HeldLock.alive`) for its job;
:func:`~spotshift.checkpoint.writer.commit_checkpoint` calls :func:`check` synchronously right before
it writes ``COMMIT`` (and so before the ``latest`` pointer): a writer whose lock is gone raises
:class:`LockLost` instead of committing. Jobs without an installed check (tools, migrations, tests)
are not fenced.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from spotshift.errors import SpotshiftError

_checks: dict[str, tuple[Callable[[], bool], Callable[[], None] | None]] = {}
_mutex = threading.Lock()


class LockLost(SpotshiftError):
    """The writer's run-level lock is gone: it must not commit."""


def install(job: str, alive: Callable[[], bool], on_lost: Callable[[], None] | None = None) -> None:
    """Fence every commit of ``job`` in this process on ``alive()`` until :func:`remove`;
    ``on_lost()`` (a trainer: end the process) runs when a commit finds the lock gone."""
    with _mutex:
        _checks[job] = (alive, on_lost)


def remove(job: str) -> None:
    """Stop fencing ``job`` (idempotent)."""
    with _mutex:
        _checks.pop(job, None)


def check(job: str) -> None:
    """Raise :class:`LockLost` (after ``on_lost()``) when ``job`` is fenced and its lock is gone."""
    with _mutex:
        alive, on_lost = _checks.get(job, (None, None))
    if alive is not None and not alive():
        if on_lost is not None:
            on_lost()
        raise LockLost(f"job {job}: its run-level lock is lost; refusing to commit a checkpoint")
