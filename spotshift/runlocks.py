"""Run-level locks: at most one live holder of a name (a job's trainer) across processes and hosts.

Two implementations behind one interface (:func:`acquire`, :func:`held`), chosen like the placement
state (:func:`spotshift.statestore.shared_store`):

* **Embedded default** — an exclusive ``flock`` on ``$SPOTSHIFT_HOME/run/trainers/<name>.lock``
  that the holder keeps open for its whole life; the kernel drops it when the process dies, even
  on SIGKILL. Correct on one machine only.
* **PostgreSQL** (the Dagster instance is on PostgreSQL) — a session-level advisory lock
  ``pg_try_advisory_lock(hashtextextended('spotshift/run-lock/<name>', 0))`` taken on a connection
  of its own that the holder keeps open. PostgreSQL releases it when that session ends: a holder
  killed with ``-9`` closes its socket and the server ends the session at once; a holder whose host
  vanished without closing it is found dead by the server's TCP keepalives
  (:data:`spotshift.statestore.KEEPALIVE_OPTIONS`, about 25 s) — that is the lease of a crashed
  holder. Nothing is written, so there is nothing stale to clean up. :meth:`HeldLock.alive` tells a
  holder whether its session (hence its lock) is still there.

**Fencing.** A PostgreSQL lock can be lost while its holder lives (the server restarted, the
network cut, the session terminated): :meth:`HeldLock.watch` polls :meth:`~HeldLock.alive` every
:data:`WATCH_INTERVAL_S` seconds on a daemon thread and calls ``on_lost`` once when it turns false.
A trainer's ``on_lost`` ends the process (exit 4, result ``lock_lost``,
:func:`spotshift.training.backend.fence_trainer_lock`), and every checkpoint commit checks
``alive()`` synchronously right before its ``COMMIT`` marker (:mod:`spotshift.checkpoint.fence`), so
a trainer that lost its lock commits nothing after the loss and is gone within the interval. File
locks cannot be lost while their holder lives: they start no thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spotshift.home import run_dir
from spotshift.statestore import PostgresStateStore, shared_store

_HELD_SQL = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND ((classid::bigint << 32) | objid::bigint) = hashtextextended(%s, 0))"
)


WATCH_INTERVAL_S = 5.0  # how often a watched PostgreSQL lock is checked (HeldLock.watch)


def lock_path(name: str) -> Path:
    """The file lock of ``name`` (embedded default): ``$SPOTSHIFT_HOME/run/trainers/<name>.lock``."""
    return run_dir() / "trainers" / f"{name}.lock"


def _pg_key(name: str) -> str:
    return f"spotshift/run-lock/{name}"


class HeldLock:
    """A lock this process holds; :meth:`release` (or process death) frees it."""

    def __init__(self, name: str, *, fd: int | None = None, session: Any = None):
        self.name = name
        self._fd = fd
        self._session = session
        self._stop_watch = threading.Event()

    def alive(self) -> bool:
        """Whether the lock is still ours (the file descriptor is open / the session answers)."""
        if self._fd is not None:
            return True
        if self._session is None or self._session.closed:
            return False
        try:
            with self._session.cursor() as cur:
                cur.execute("SELECT 1")
            return True
        except Exception:  # any failure means the session, and so the lock, is gone
            return False

    def watch(self, on_lost: Callable[[], None], *, interval_s: float = WATCH_INTERVAL_S) -> None:
        """Call ``on_lost()`` once, on a daemon thread, within ``interval_s`` seconds of the lock being
        lost (:meth:`alive` turning false); :meth:`release` stops the watch. File locks: no thread."""
        if self._fd is not None:
            return

        def poll() -> None:
            while not self._stop_watch.wait(interval_s):
                if not self.alive():
                    if not self._stop_watch.is_set():  # not lost: released meanwhile
                        on_lost()
                    return

        threading.Thread(target=poll, name=f"runlock-watch-{self.name}", daemon=True).start()

    def release(self) -> None:
        """Give the lock up (idempotent)."""
        self._stop_watch.set()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._session is not None:
            with contextlib.suppress(Exception):  # closing the session releases the lock either way
                self._session.close()
            self._session = None


def _file_acquire(name: str, wait_s: float) -> HeldLock | None:
    path = lock_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s  # a backend probing the lock holds it for microseconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return HeldLock(name, fd=fd)
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                return None
            time.sleep(0.05)


def _file_held(name: str) -> bool:
    path = lock_path(name)
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock we took
    return False


def _pg_acquire(store: PostgresStateStore, name: str, wait_s: float) -> HeldLock | None:
    session = store.session()
    deadline = time.monotonic() + wait_s
    try:
        while True:
            row = store.execute(
                session, "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (_pg_key(name),)
            )
            if row and row[0]:
                return HeldLock(name, session=session)
            if time.monotonic() > deadline:
                session.close()
                return None
            time.sleep(0.05)
    except BaseException:
        session.close()
        raise


def acquire(name: str, *, wait_s: float = 2.0) -> HeldLock | None:
    """The lock of ``name`` (keep the returned handle for as long as you hold it), or None when
    another live holder has it after ``wait_s`` seconds of retrying."""
    store = shared_store()
    if store is not None:
        return _pg_acquire(store, name, wait_s)
    return _file_acquire(name, wait_s)


def held(name: str) -> bool:
    """Whether a live process (here, or on any host sharing the PostgreSQL instance) holds ``name``."""
    store = shared_store()
    if store is None:
        return _file_held(name)
    row = store.query_one(_HELD_SQL, (_pg_key(name),))
    return bool(row and row[0])
