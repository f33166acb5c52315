"""Store locks: writers of a store's chunks share it, ``sync prune`` holds it alone (restic's model).

A lock is a small JSON object ``locks/<kind>-<host>-<pid>-<random>.json`` in the store itself, so
it works the same on a local directory, S3 and GCS, across machines:

* ``shared`` — taken by every operation that writes chunks and commits snapshots (``push``,
  ``replicate``, ``verify --repair``). Any number may be held at once.
* ``exclusive`` — taken by ``prune``. Held only when no other fresh lock exists.

Acquiring writes the lock object *first* and then lists the others (and backs off when it sees a
conflicting one). Two conflicting acquirers therefore always see each other — whichever lists
second finds the first one's object — so a prune never deletes while a push holds chunks it found
in the store but has not yet named in a committed manifest (the race a mark-and-sweep collector
must close: a push that skips uploading a chunk because it is present, while a prune deletes that
chunk as unreferenced). Listing is strongly consistent on local file systems, S3 and GCS.

A holder refreshes its lock every :data:`REFRESH_EVERY_S`; a lock not refreshed for
:data:`STALE_AFTER_S`, or one whose process is gone on this host, is stale: shared acquirers
ignore it and prune deletes it. Lock times are wall-clock UTC (they are about real processes).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from spotshift.atomic import pid_alive
from spotshift.errors import NotFoundError, SpotshiftError
from spotshift.sync.store import ChunkStore

LOCKS_PREFIX = "locks/"
#: a lock not refreshed for this long is stale (its holder died on another machine)
STALE_AFTER_S = 30 * 60.0
#: how often a holder rewrites its lock
REFRESH_EVERY_S = 5 * 60.0

Kind = Literal["shared", "exclusive"]


class LockedError(SpotshiftError):
    """The store is locked by an operation that conflicts with this one (exit code 2)."""


@dataclass
class LockInfo:
    """The document of one lock object."""

    kind: str
    host: str
    pid: int
    command: str
    created_at: float  # POSIX seconds
    refreshed_at: float

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.created_at, UTC).isoformat(timespec="seconds")
        return f"{self.command} (host {self.host}, pid {self.pid}, since {since})"

    def stale(self, now: float) -> bool:
        """Not refreshed for :data:`STALE_AFTER_S`, or its process is gone on this host."""
        if now - self.refreshed_at > STALE_AFTER_S:
            return True
        return self.host == socket.gethostname() and not pid_alive(self.pid)


def read_locks(store: ChunkStore) -> dict[str, LockInfo]:
    """Every lock object of ``store`` by key (unreadable ones count as fresh exclusive locks: be safe)."""
    out: dict[str, LockInfo] = {}
    for key in store.list_keys(LOCKS_PREFIX):
        try:
            out[key] = LockInfo(**json.loads(store.get_bytes(key)))
        except NotFoundError:  # released while we listed
            continue
        except (ValueError, TypeError):
            now = time.time()
            out[key] = LockInfo("exclusive", "?", 0, f"unreadable lock {key}", now, now)
    return out


@dataclass
class StoreLock:
    """A held lock; :meth:`release` (or leaving :func:`store_lock`) deletes it."""

    store: ChunkStore
    key: str
    info: LockInfo
    stale_removed: list[str]
    _stop: threading.Event
    _thread: threading.Thread | None = None

    def refresh(self) -> None:
        """Rewrite the lock with the current time (so other hosts do not take it for stale)."""
        self.info.refreshed_at = time.time()
        self.store.put_bytes(self.key, json.dumps(asdict(self.info)).encode())

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.store.delete(self.key)


def _conflicts(kind: Kind, locks: dict[str, LockInfo], own: str, now: float) -> dict[str, LockInfo]:
    fresh = {k: v for k, v in locks.items() if k != own and not v.stale(now)}
    if kind == "exclusive":
        return fresh
    return {k: v for k, v in fresh.items() if v.kind == "exclusive"}


def _blocked_message(store: ChunkStore, kind: Kind, conflicts: dict[str, LockInfo]) -> str:
    first = next(iter(conflicts.values()))
    if kind == "exclusive":
        return (
            f"{store.url} is in use by {len(conflicts)} operation(s), e.g. {first.describe()}: prune when "
            f"they have finished (a lock not refreshed for {STALE_AFTER_S / 60:.0f} min counts as stale)"
        )
    return (
        f"{store.url} is being pruned by {first.describe()}: retry when it has finished "
        f"(a lock not refreshed for {STALE_AFTER_S / 60:.0f} min counts as stale)"
    )


def acquire(
    store: ChunkStore, kind: Kind, command: str, *, wait_s: float = 0.0, refresh: bool = True
) -> StoreLock:
    """Take a ``kind`` lock on ``store`` for ``command``, waiting up to ``wait_s`` for conflicting
    locks to go; :class:`LockedError` naming the holder when they do not. An exclusive acquirer
    deletes stale locks it finds (``StoreLock.stale_removed``)."""
    host, pid = socket.gethostname(), os.getpid()
    key = f"{LOCKS_PREFIX}{kind}-{host}-{pid}-{secrets.token_hex(6)}.json"
    deadline = time.monotonic() + max(0.0, wait_s)
    while True:
        now = time.time()
        info = LockInfo(kind, host, pid, command, now, now)
        # write first, then look: of two conflicting acquirers the second to list sees the first
        store.put_bytes(key, json.dumps(asdict(info)).encode())
        locks = read_locks(store)
        conflicts = _conflicts(kind, locks, key, now)
        if not conflicts:
            break
        store.delete(key)
        if time.monotonic() >= deadline:
            raise LockedError(_blocked_message(store, kind, conflicts))
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    removed: list[str] = []
    if kind == "exclusive":
        for other, lock in locks.items():
            if other != key and lock.stale(now):
                store.delete(other)
                removed.append(f"{other}: {lock.describe()}")
    held = StoreLock(store, key, info, removed, threading.Event())
    if refresh:
        held._thread = threading.Thread(target=_refresher, args=(held,), daemon=True, name="store-lock")
        held._thread.start()
    return held


def _refresher(lock: StoreLock) -> None:
    while not lock._stop.wait(REFRESH_EVERY_S):
        with contextlib.suppress(Exception):  # a missed refresh only brings staleness closer
            lock.refresh()


@contextlib.contextmanager
def store_lock(store: ChunkStore, kind: Kind, command: str, *, wait_s: float = 0.0) -> Iterator[StoreLock]:
    """Hold a ``kind`` lock on ``store`` for the body (see :func:`acquire`)."""
    held = acquire(store, kind, command, wait_s=wait_s)
    try:
        yield held
    finally:
        held.release()


def lock_summary(store: ChunkStore) -> list[dict[str, Any]]:
    """The store's locks as dicts (``key``, ``kind``, ``command``, ``host``, ``pid``, ``stale``)."""
    now = time.time()
    return [{"key": k, **asdict(v), "stale": v.stale(now)} for k, v in sorted(read_locks(store).items())]
