"""Opening the warehouse's DuckDB file safely: DuckDB allows one read-write process per file at a
time, so an open waits (jittered back-off, :func:`lock_timeout_s`) while another process holds the
lock, and a file that is not a usable database is one line naming it."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

from spotshift.errors import ConfigError, IntegrityError, NotFoundError, check_range
from spotshift.home import warehouse_path

_LOCK_MARKERS = ("could not set lock", "conflicting lock", "lock on file", "database is locked")

#: how long a command waits for another process's lock on the warehouse (env overrides)
DEFAULT_LOCK_TIMEOUT_S = 120.0
LOCK_TIMEOUT_ENV = "SPOTSHIFT_WAREHOUSE_LOCK_TIMEOUT_S"


class WarehouseLockedError(ConfigError):
    """Another process held the warehouse's write lock for longer than the lock timeout."""


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(m in text for m in _LOCK_MARKERS)


def lock_timeout_s() -> float:
    """Seconds to wait for the warehouse lock: ``SPOTSHIFT_WAREHOUSE_LOCK_TIMEOUT_S``, else 120."""
    raw = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_LOCK_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{LOCK_TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    return float(check_range(value, LOCK_TIMEOUT_ENV, low=0, high=86_400, low_inclusive=True))


def resolve_path(path: str | Path | None = None) -> Path:
    """``path``, else the configured warehouse (:func:`spotshift.home.warehouse_path`)."""
    return Path(path).expanduser().resolve() if path else warehouse_path()


def open_connection(
    path: str | Path | None = None, *, read_only: bool = False, timeout_s: float | None = None
) -> Any:
    """Open a DuckDB connection, waiting (with jittered back-off) while another process holds the file.

    ``path`` defaults to :func:`spotshift.home.warehouse_path`; ``timeout_s`` to :func:`lock_timeout_s`.
    Raises :class:`WarehouseLockedError` when the lock is still held after ``timeout_s``,
    :class:`IntegrityError` when the file is not a usable DuckDB database, :class:`NotFoundError`
    when a read-only open finds no file. Every message is one line naming the file.
    """
    import duckdb  # heavy (~0.1 s): only when a connection is opened

    target = resolve_path(path)
    if read_only and not target.is_file():
        raise NotFoundError(f"warehouse {target} does not exist")
    if not read_only:
        target.parent.mkdir(parents=True, exist_ok=True)
    timeout = lock_timeout_s() if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        try:
            return duckdb.connect(str(target), read_only=read_only)
        except duckdb.Error as exc:  # IOException on lock conflicts
            if not _is_lock_error(exc):
                raise unusable(target, exc) from None
            if time.monotonic() > deadline:
                raise WarehouseLockedError(
                    f"warehouse {target}: still locked by another process after {timeout:.0f}s"
                ) from None
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 0.5)


def unusable(target: Path, exc: BaseException) -> IntegrityError:
    """The one-line error for a warehouse file DuckDB cannot use (corrupt, foreign, wrong version)."""
    text = str(exc)
    if "not a valid DuckDB database" in text:
        why = "is not a valid DuckDB database file (corrupt, or another program's file)"
    elif "serialization" in text.lower() or "version" in text.lower():
        why = "was written by an incompatible DuckDB version"
    else:
        why = f"cannot be opened ({type(exc).__name__})"
    return IntegrityError(f"warehouse {target} {why}; move it aside to start a new one")
