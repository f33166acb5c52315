"""The files cache: lets an unchanged tree re-fingerprint without reading file contents.

As restic and borg do, a file whose (size, mtime_ns, ctime_ns, inode, device) are unchanged since it
was last chunked with the same chunking parameters is assumed to have the same chunks. The cache is
a SQLite database (stdlib, opens in ~1 ms) at ``$SPOTSHIFT_HOME/cache/files.sqlite``; one row per
(absolute path, chunking parameters) holds the stat fields and the chunk list packed as
``u32 lengths[n] | digest[n]``.

Racy entries are never stored: a file modified within :data:`RACY_WINDOW_NS` before it was read
could be modified again without its mtime changing (file-system timestamps advance in ticks), so
it is re-read next time. The cache is rebuildable: a corrupt database is deleted and recreated.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from array import array
from pathlib import Path

from spotshift.home import cache_dir
from spotshift.sync.chunking import DIGEST_SIZE

#: a file whose mtime/ctime is this close to the moment it was read is not cached (see module doc)
RACY_WINDOW_NS = 100_000_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
  params TEXT NOT NULL,
  path TEXT NOT NULL,
  size INTEGER NOT NULL,
  mtime_ns INTEGER NOT NULL,
  ctime_ns INTEGER NOT NULL,
  ino INTEGER NOT NULL,
  dev INTEGER NOT NULL,
  chunks BLOB NOT NULL,
  PRIMARY KEY (params, path)
) WITHOUT ROWID
"""


def default_cache_path() -> Path:
    return cache_dir() / "files.sqlite"


def stat_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """The fields that must all match for a cached chunk list to be trusted."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def pack_chunks(lengths: array, digests: bytes) -> bytes:
    return lengths.tobytes() + digests


def unpack_chunks(blob: bytes) -> tuple[array, bytes]:
    n = len(blob) // (4 + DIGEST_SIZE)
    lengths = array("I")
    lengths.frombytes(blob[: 4 * n])
    return lengths, blob[4 * n :]


class FilesCache:
    """Thread-safe handle on the cache database; use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | os.PathLike[str] | None = None):
        self.path = Path(path) if path else default_cache_path()
        self._lock = threading.Lock()
        self._pending = 0
        self._con = self._open()

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for attempt in (1, 2):
            try:
                con = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("PRAGMA synchronous=NORMAL")
                con.execute(_SCHEMA)
                return con
            except sqlite3.DatabaseError:
                if attempt == 2:
                    raise
                # a cache is rebuildable: start over rather than fail the fingerprint
                for suffix in ("", "-wal", "-shm"):
                    Path(str(self.path) + suffix).unlink(missing_ok=True)
        raise AssertionError("unreachable")  # pragma: no cover

    def load_tree(self, params_key: str, root: str) -> dict[str, tuple[tuple[int, ...], bytes]]:
        """Every cached entry under directory ``root`` (absolute): path -> (stat key, packed chunks)."""
        prefix = root.rstrip("/") + "/"
        with self._lock:
            rows = self._con.execute(
                "SELECT path, size, mtime_ns, ctime_ns, ino, dev, chunks FROM files "
                "WHERE params = ? AND path >= ? AND path < ?",
                (params_key, prefix, prefix[:-1] + "0"),  # '0' sorts right after '/'
            ).fetchall()
        return {r[0]: ((r[1], r[2], r[3], r[4], r[5]), r[6]) for r in rows}

    def put(
        self,
        params_key: str,
        path: str,
        st: os.stat_result,
        lengths: array,
        digests: bytes,
        read_started_ns: int,
    ) -> bool:
        """Record a file's chunks; returns False (and stores nothing) for a racily-fresh file."""
        if max(st.st_mtime_ns, st.st_ctime_ns) >= read_started_ns - RACY_WINDOW_NS:
            return False
        with self._lock:
            if self._pending == 0:
                self._con.execute("BEGIN")
            self._con.execute(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (params_key, path, *stat_key(st), pack_chunks(lengths, digests)),
            )
            self._pending += 1
        return True

    def forget_missing(self, params_key: str, root: str, present: set[str]) -> int:
        """Drop cached entries under ``root`` whose paths were not seen in the latest scan."""
        stale = [p for p in self.load_tree(params_key, root) if p not in present]
        with self._lock:
            if stale and self._pending == 0:
                self._con.execute("BEGIN")
                self._pending = 1
            self._con.executemany(
                "DELETE FROM files WHERE params = ? AND path = ?", ((params_key, p) for p in stale)
            )
        return len(stale)

    def commit(self) -> None:
        with self._lock:
            if self._pending:
                self._con.execute("COMMIT")
                self._pending = 0

    def close(self) -> None:
        self.commit()
        with self._lock:
            self._con.close()

    def __enter__(self) -> FilesCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
