"""The entries of a snapshot (:class:`FileEntry`: directories, files, symlinks), their Merkle leaf
hashes, and their checks as untrusted input when read back from a manifest's columns.

The manifest format and the Merkle tree are described in :mod:`spotshift.sync.manifest`.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterator
from typing import Any

from spotshift.errors import IntegrityError
from spotshift.sync.chunking import DIGEST_SIZE

FILE, DIR, SYMLINK = "file", "dir", "symlink"
KINDS = (FILE, DIR, SYMLINK)
ROOT_PATH = "."


def _u32_le(values: array) -> bytes:
    if sys.byteorder == "little":
        return values.tobytes()
    swapped = array("I", values)
    swapped.byteswap()
    return swapped.tobytes()


class FileEntry:
    """One entry of a snapshot. ``lengths``/``digests`` are compact (uint32 array, 16 bytes each)."""

    __slots__ = ("path", "kind", "size", "mode", "mtime_ns", "target", "lengths", "digests")

    def __init__(
        self,
        path: str,
        kind: str,
        size: int = 0,
        mode: int = 0o644,
        mtime_ns: int = 0,
        target: str | None = None,
        lengths: array | None = None,
        digests: bytes = b"",
    ):
        self.path = path
        self.kind = kind
        self.size = size
        self.mode = mode
        self.mtime_ns = mtime_ns
        self.target = target
        self.lengths = lengths if lengths is not None else array("I")
        self.digests = digests

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def parent(self) -> str:
        return self.path.rsplit("/", 1)[0] if "/" in self.path else ROOT_PATH

    @property
    def chunk_count(self) -> int:
        return len(self.lengths)

    def chunks(self) -> Iterator[tuple[int, int, bytes]]:
        """``(offset, length, digest)`` of each chunk, in file order."""
        offset = 0
        d = self.digests
        for i, length in enumerate(self.lengths):
            yield offset, length, d[i * DIGEST_SIZE : (i + 1) * DIGEST_SIZE]
            offset += length

    def __repr__(self) -> str:
        return f"FileEntry({self.path!r}, {self.kind}, size={self.size}, chunks={self.chunk_count})"


def leaf_hash(entry: FileEntry, h: Any) -> bytes:
    """Merkle hash of a file or symlink entry (see module docstring)."""
    if entry.kind == FILE:
        head = struct.pack("<QIqI", entry.size, entry.mode, entry.mtime_ns, len(entry.lengths))
        return h(b"spotshift/file\0" + head + _u32_le(entry.lengths) + entry.digests)
    if entry.kind == SYMLINK:
        target = (entry.target or "").encode("utf-8", "surrogateescape")
        return h(b"spotshift/link\0" + struct.pack("<Iq", entry.mode, entry.mtime_ns) + target)
    raise ValueError(f"{entry.kind} has no leaf hash")


def entries_from_columns(cols: dict[str, list[Any]]) -> list[FileEntry]:
    """The entries of a manifest's columns (one row per chunk, in path order), every field checked:
    safe paths, known kinds, chunks in order covering each file, no path listed twice."""
    entries: list[FileEntry] = []
    cur: FileEntry | None = None
    dig_parts: list[bytes] = []
    n = len(cols["path"])
    for i in range(n):
        path = cols["path"][i]
        if cur is None or path != cur.path:
            if cur is not None:
                _finish(cur, dig_parts)
            if path in ("", None):
                raise IntegrityError(f"row {i} has an empty path")
            _check_path(path)
            kind = cols["kind"][i]
            if kind not in KINDS:
                raise IntegrityError(f"{path}: unknown kind {kind!r}")
            cur = FileEntry(
                path,
                kind,
                int(cols["size"][i]),
                int(cols["mode"][i]),
                int(cols["mtime_ns"][i]),
                cols["target"][i],
            )
            _check_entry(cur)
            entries.append(cur)
            dig_parts = []
        off, length, dig = cols["chunk_offset"][i], cols["chunk_length"][i], cols["digest"][i]
        if off is None:
            continue
        if cur.kind != FILE:
            raise IntegrityError(f"{path}: a {cur.kind} cannot have chunks")
        if off != sum(cur.lengths) or not length or length <= 0 or dig is None or len(dig) != DIGEST_SIZE:
            raise IntegrityError(f"{path}: chunk at offset {off} is out of order or incomplete")
        cur.lengths.append(length)
        dig_parts.append(dig)
    if cur is not None:
        _finish(cur, dig_parts)
    seen: set[str] = set()
    for e in entries:
        if e.path in seen:
            raise IntegrityError(f"{e.path}: listed twice")
        seen.add(e.path)
    # Manifest() then refuses entries whose parent is not a directory entry: a restore never
    # writes through a symlink it created itself
    return entries


#: longest symlink target Linux stores (PATH_MAX including the terminating NUL)
MAX_LINK_TARGET_BYTES = 4095


def _check_entry(e: FileEntry) -> None:
    """Refuse entry fields no file system entry can have (a manifest is untrusted input)."""
    if not 0 <= e.mode <= 0o7777:
        raise IntegrityError(f"{e.path}: mode {e.mode} is not a permission mode (0-0o7777)")
    if e.size < 0:
        raise IntegrityError(f"{e.path}: negative size {e.size}")
    if e.kind == SYMLINK:
        if not e.target:
            raise IntegrityError(f"{e.path}: symlink without target")
        if "\0" in e.target:
            raise IntegrityError(f"{e.path}: symlink target contains a NUL byte")
        if len(e.target.encode("utf-8", "surrogateescape")) > MAX_LINK_TARGET_BYTES:
            raise IntegrityError(f"{e.path}: symlink target longer than {MAX_LINK_TARGET_BYTES} bytes")


def _finish(entry: FileEntry, dig_parts: list[bytes]) -> None:
    entry.digests = b"".join(dig_parts)
    if entry.kind == FILE and sum(entry.lengths) != entry.size:
        raise IntegrityError(f"{entry.path}: chunks cover {sum(entry.lengths)} bytes of {entry.size}")


def _check_path(path: str) -> None:
    if path == ROOT_PATH:
        return
    parts = path.split("/")
    if path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in path:
        raise IntegrityError(f"unsafe path {path!r}")
