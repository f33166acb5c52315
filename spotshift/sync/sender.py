"""Sending a source tree's chunks into a store: the write side of ``sync push``.

Each chunk is copied from its file in cache-sized pieces through a reused per-thread buffer and
hashed as it goes, so the bytes hashed are the bytes stored and a file that changed since it was
fingerprinted is refused (:class:`InputError`, nothing committed). On a local store the copy
streams into the store's temp file (committed by link, write-once); on an object store it is
gathered for one PUT. Loose chunks and pack files (:mod:`spotshift.sync.packs`) go the same way.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spotshift.errors import InputError
from spotshift.progress import NO_PROGRESS
from spotshift.sync.chunking import ChunkParams, new_hasher
from spotshift.sync.packs import has_pack, pack_key
from spotshift.sync.store import ChunkStore, LocalChunkStore, chunk_key
from spotshift.sync.transfer import BoundedPool, TransferStats


@dataclass
class Located:
    """Where a chunk of the source tree is: relative path, offset, length."""

    path: str
    offset: int
    length: int


#: bytes a sender copies at a time: small enough that the piece it reads is still in the CPU's
#: cache when it is hashed and written (one pass over memory instead of three)
COPY_PIECE_BYTES = 256 * 1024


class SourceSender:
    """Sends chunks of a source tree: each copied from its file in cache-sized pieces through a
    reused buffer, hashed as it goes (the bytes hashed are the bytes written), refused when the
    digest differs (the file changed since it was fingerprinted); written loose or into its pack,
    streamed into a temp file on a local store, gathered for one PUT on an object store."""

    def __init__(self, root_dir: Path, params: ChunkParams, writer: ChunkStore, stats: TransferStats):
        self.root_dir, self.writer, self.stats = root_dir, writer, stats
        self.digest = params.digest
        self.task: Any = NO_PROGRESS.task("")
        self.pool: BoundedPool | None = None
        self._local = threading.local()

    def _open(self, rel: str) -> int:
        abs_path = self.root_dir / rel
        try:
            return os.open(abs_path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise InputError(f"{abs_path}: cannot read ({exc.strerror})") from None

    def _copy(self, fd: int, dig: bytes, loc: Located, emit: Any) -> None:
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = memoryview(bytearray(COPY_PIECE_BYTES))
        h = new_hasher(self.digest)
        pos = 0
        while pos < loc.length:
            piece = buf[: min(COPY_PIECE_BYTES, loc.length - pos)]
            if os.preadv(fd, [piece], loc.offset + pos) != len(piece):
                break
            h.update(piece)
            emit(piece)
            pos += len(piece)
        if pos != loc.length or h.digest() != dig:
            raise InputError(
                f"{self.root_dir / loc.path} changed since it was fingerprinted (chunk at offset "
                f"{loc.offset}); push again"
            )

    def _write(self, key: str, parts: list[tuple[bytes, Located]]) -> int:
        """Copy ``parts`` (in file order: one open per file, sequential reads) into object ``key``,
        write-once; returns bytes."""
        local = isinstance(self.writer, LocalChunkStore)
        out_fd, tmp = self.writer.new_temp() if local else (-1, None)  # type: ignore[attr-defined]
        gathered = bytearray()
        emit = (lambda v: _write_all(out_fd, v)) if local else gathered.extend
        fd, fd_path = -1, ""
        try:
            for dig, loc in parts:
                if loc.path != fd_path:
                    if fd >= 0:
                        os.close(fd)
                    fd, fd_path = self._open(loc.path), loc.path
                self._copy(fd, dig, loc, emit)
        except BaseException:
            if local:
                os.close(out_fd)
                tmp.unlink(missing_ok=True)  # type: ignore[union-attr]
            raise
        finally:
            if fd >= 0:
                os.close(fd)
        if local:
            self.writer.commit_temp(out_fd, tmp, key, if_absent=True)  # type: ignore[attr-defined]
        else:
            self.writer.put_bytes(key, bytes(gathered), if_absent=True)
        return sum(loc.length for _, loc in parts)

    def _sent(self, chunks: int, nbytes: int) -> None:
        assert self.pool is not None
        self.task.advance(nbytes)
        with self.pool.lock:
            self.stats.chunks_sent += chunks
            self.stats.bytes_sent += nbytes
            self.stats.bytes_changed += nbytes

    def send_loose(self, dig: bytes, loc: Located) -> None:
        if self.writer.has_chunk(dig.hex()):  # a killed earlier run, another dataset
            self.task.advance(loc.length)
            return
        self._sent(1, self._write(chunk_key(dig.hex()), [(dig, loc)]))

    def send_pack(self, pack_id: str, parts: list[tuple[bytes, Located]]) -> None:
        size = sum(loc.length for _, loc in parts)
        if has_pack(self.writer, pack_id, size):  # a killed earlier run, another dataset
            self.task.advance(size)
            return
        self._sent(len(parts), self._write(pack_key(pack_id), parts))


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]
