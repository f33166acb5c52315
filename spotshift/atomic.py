"""Crash-safe file writes: write to a temp name in the same directory, fsync, then rename.

A reader never sees a half-written file: it sees the old one, or the new one, or none.

Temp files carry the writer's pid in their name (:func:`temp_path`: ``.spotshift-tmp.<pid>.<random>``),
so a later writer can tell the leftovers of a killed writer from the work of a live one:
:func:`remove_stale_temp_files` deletes those whose writer is gone, :func:`stale_temp_files` lists
them (``sync verify`` reports them). Every writer calls it on the directories it writes temp files
into before it starts: a ``kill -9`` costs disk space only until the next write.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: prefix of every temp file name made by :func:`temp_path`
TEMP_PREFIX = ".spotshift-tmp."


def temp_path(directory: str | os.PathLike[str]) -> Path:
    """A fresh temp file name in ``directory`` that names this process: ``.spotshift-tmp.<pid>.<hex>``.

    Short on purpose (a temp name must fit wherever its target's name fits).
    """
    return Path(directory) / f"{TEMP_PREFIX}{os.getpid()}.{secrets.token_hex(6)}"


def pid_alive(pid: int) -> bool:
    """Whether a process with id ``pid`` exists on this host."""
    if pid <= 0:
        return True  # not a pid we wrote: never treat it as dead
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


def _writer_pid(name: str, owned: bool) -> int | None:
    if name.startswith(TEMP_PREFIX):
        text = name[len(TEMP_PREFIX) :].split(".", 1)[0]
    elif owned:
        text = name.split(".", 1)[0]
    else:
        return None
    return int(text) if text.isdigit() else None


@dataclass(frozen=True)
class TempFile:
    """A temp file left in a directory: its path, size and the pid of the writer that made it."""

    path: Path
    bytes: int
    pid: int


def stale_temp_files(directory: str | os.PathLike[str], *, owned: bool = False) -> list[TempFile]:
    """Temp files in ``directory`` (not recursive) whose writer process is gone.

    ``owned``: the directory holds only temp files (a store's ``.tmp/``), so every name that
    starts with ``<pid>.`` counts; otherwise only names made by :func:`temp_path` do, and the
    user's own files are never touched.
    """
    out: list[TempFile] = []
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return out
    for entry in entries:
        pid = _writer_pid(entry.name, owned)
        if pid is None or pid_alive(pid):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            size = entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue
        out.append(TempFile(Path(entry.path), size, pid))
    return out


def remove_stale_temp_files(directory: str | os.PathLike[str], *, owned: bool = False) -> int:
    """Delete the temp files of dead writers in ``directory`` (see :func:`stale_temp_files`).

    Safe to call while other writers work: a live writer's files are kept. Returns how many were
    removed.
    """
    removed = 0
    for t in stale_temp_files(directory, owned=owned):
        try:
            t.path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> Path:
    """Replace ``path`` with ``data`` atomically (same-directory temp file + ``os.replace``)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target.parent)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(target.parent)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str, *, fsync: bool = True) -> Path:
    """Replace ``path`` with UTF-8 ``text`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, fsync: bool = True) -> Path:
    """Replace ``path`` with ``obj`` as indented, key-sorted JSON, atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", fsync=fsync)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename in ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


_SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _sync_file_range() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return fn


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing ``nbytes`` at ``offset`` of ``fd`` to disk without waiting (Linux
    ``sync_file_range(SYNC_FILE_RANGE_WRITE)``; a no-op elsewhere). Not durability: an fsync still
    makes the file durable, it just finds less left to write."""
    fn = _sync_file_range()
    if fn is not None:
        fn(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)
