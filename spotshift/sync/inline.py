"""Writing a push's new chunks while fingerprinting cuts them: one read of each file, one hash.

A first push of a tree used to read and hash every byte twice: once to fingerprint it, once to
send each chunk the store lacked. On a local store the :class:`InlineWriter` is the fingerprint's
digest function instead (:func:`spotshift.sync.fingerprint.fingerprint` ``digest_with``): each
chunk the cutter yields is copied once into the writer's own buffer, hashed there and, when the
store lacks it, written from there. So the bytes hashed are the bytes stored even if the file is
being modified (the mapped view is read once; a file that changes while it is read is cut again,
and what the first attempt wrote is a correct but unreferenced chunk).

Chunks shorter than :data:`~spotshift.sync.packs.PACK_CHUNK_LIMIT` are copied into the chunking
thread's open pack, written in one sequential write when it holds
:data:`~spotshift.sync.packs.PACK_TARGET_BYTES` (or at :meth:`InlineWriter.close`); longer ones
become loose objects. A quiet (memory-mapped) file is cut and read in runs of about
:data:`~spotshift.sync.fingerprint.RUN_BYTES` (:meth:`InlineWriter.read_chunks`: one ``pread``
per run into the pack, the chunks hashed as slices of it). Full packs and loose chunks are written on one write thread while the chunking
threads go on (at most :data:`WRITES_IN_FLIGHT` queued; :meth:`InlineWriter.close` waits for all
of them and raises the first that failed). Writes go through the store's batched writer
(``fsync_each=False``): the caller flushes it before committing the manifest that names them, as
for every other push, so nothing is referenced before it is durable. Packs are grouped per thread, in the order the thread
cut them: a rerun after a kill skips a pack only when it groups the same chunks (always with one
chunking thread).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from spotshift.progress import Task
from spotshift.sync import packs
from spotshift.sync.chunking import digest_function
from spotshift.sync.packs import Location, has_pack, is_packed, pack_key, pack_layout
from spotshift.sync.store import LocalChunkStore, chunk_key

#: chunk and pack writes queued for the write thread at most (then the chunking threads wait)
WRITES_IN_FLIGHT = 2
#: what direct writes are aligned to (buffers, file offsets and lengths): the page size
BLOCK = mmap.PAGESIZE
_O_DIRECT = getattr(os, "O_DIRECT", 0)


def aligned_buffer(size: int) -> memoryview:
    """``size`` bytes (rounded up to :data:`BLOCK`) of page-aligned memory, as direct I/O needs.
    Private anonymous memory, in huge pages where the kernel has them: a shared mapping is backed
    by shmem, whose page faults cost about three times as much CPU to fill a fresh pack buffer."""
    m = mmap.mmap(-1, -(-max(size, 1) // BLOCK) * BLOCK, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    with contextlib.suppress(AttributeError, OSError):  # advice only
        m.madvise(mmap.MADV_HUGEPAGE)
    return memoryview(m)


def write_direct(store: LocalChunkStore, key: str, buf: memoryview, length: int) -> bool:
    """Store the first ``length`` bytes of ``buf`` (from :func:`aligned_buffer`) under ``key``,
    write-once (False when ``key`` exists). Written with ``O_DIRECT`` where the file system takes
    it: the device reads the buffer itself, no copy into the page cache and no writeback later
    (the store's flush still makes the file and its name durable); elsewhere a plain write."""
    fd, tmp = store.new_temp()
    try:
        _write_padded(fd, buf, length)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    return store.commit_temp(fd, tmp, key, if_absent=True)


def _write_padded(fd: int, buf: memoryview, length: int) -> None:
    done = 0
    padded = -(-length // BLOCK) * BLOCK
    if _O_DIRECT and padded <= len(buf):
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT)
            while done < padded:
                n = os.write(fd, buf[done:padded])  # whole blocks: the tail is cut off below
                done += n
                if n <= 0 or n % BLOCK:
                    break
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: the file system refuses direct I/O
                raise
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)
    view = buf[done:length]
    while view:
        view = view[os.write(fd, view) :]
    if done > length:
        os.ftruncate(fd, length)


def _pread_into(fd: int, dest: memoryview, offset: int) -> None:
    """Fill ``dest`` from ``offset`` of ``fd``; past the end of the file (it was cut shorter while
    read) with zeros."""
    got, length = 0, len(dest)
    while got < length:
        n = os.preadv(fd, [dest[got:]], offset + got)
        if n <= 0:
            dest[got:] = bytes(length - got)
            return
        got += n


class _Pack:
    """One chunking thread's open pack: a preallocated buffer filled in place."""

    def __init__(self, view: memoryview):
        self.view = view
        self.size = 0
        self.chunks: list[tuple[bytes, int]] = []


class InlineWriter:
    """A digest function (``data -> 16-byte digest``) that also writes each chunk the store lacks.

    ``known``: digests trusted to be in the store already (the target snapshot's chunks); they
    are hashed, never written. After fingerprinting, :meth:`close` writes the open packs;
    :attr:`written` (digest -> length) and :attr:`locations` (the new packs' index) then say what
    was sent. Thread-safe: one instance serves every chunking thread.
    """

    def __init__(
        self, store: LocalChunkStore, digest: str, known: set[bytes] | frozenset[bytes] = frozenset()
    ):
        self.store = store
        self.hfn = digest_function(digest)
        self.known = known
        self.written: dict[bytes, int] = {}
        self.locations: dict[bytes, Location] = {}
        self.chunks_written = 0
        self.bytes_written = 0
        self.task = Task()  # the push's progress line: advanced by the bytes each write stores
        self._claimed: set[bytes] = set()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._packs: list[_Pack] = []
        self.pack_target = packs.PACK_TARGET_BYTES  # read when used: tests and benches change it
        # writes run on their own thread while the chunking threads go on cutting and hashing
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []
        self._slots = threading.BoundedSemaphore(WRITES_IN_FLIGHT)
        self._spares: list[memoryview] = []

    def __call__(self, data: Any) -> bytes:
        """The digest of ``data`` (a chunk the cutter yields), written when the store lacks it."""

        def fill(dest: memoryview) -> None:
            dest[:] = data

        return self._take(len(data), fill)

    def read_chunk(self, fd: int, offset: int, length: int) -> bytes:
        """Like calling the writer with the ``length`` bytes at ``offset`` of open file ``fd``, read
        by ``pread`` (the kernel copies them, outside the GIL, instead of page faults on a mapping
        under it). A file cut shorter meanwhile reads as zeros: hashed as written, and the changed
        file is cut again (:func:`~spotshift.sync.fingerprint.chunk_file`)."""

        return self._take(length, lambda dest: _pread_into(fd, dest, offset))

    def read_chunks(self, fd: int, offset: int, lengths: Sequence[int]) -> bytes:
        """The digests (joined) of the chunks of ``lengths`` cut from ``offset`` of open file ``fd``, each
        written when the store lacks it: as :meth:`read_chunk` per chunk, but a run of packed chunks
        is read by one ``pread`` into the open pack, hashed slice by slice (no copies) and claimed
        under one lock: the per-chunk Python work of a 64 KiB-chunk push is a few slice hashes."""
        out: list[bytes] = []
        pos, i = offset, 0
        count = len(lengths)
        while i < count:
            n = lengths[i]
            if not is_packed(n):
                out.append(self.read_chunk(fd, pos, n))
                pos, i = pos + n, i + 1
                continue
            pack = self._pack()
            # the first chunk past the target closes the pack, as one by one
            j, total, room = i, 0, max(self.pack_target - pack.size, 1)
            while j < count and total < room and is_packed(lengths[j]):
                total += lengths[j]
                j += 1
            start = pack.size
            _pread_into(fd, pack.view[start : start + total], pos)
            run = lengths[i:j]
            digs = []
            for n in run:
                digs.append(self.hfn(pack.view[start : start + n]))
                start += n
            self._pack_run(pack, digs, run)
            out.extend(digs)
            pos, i = pos + total, j
        return b"".join(out)

    def _pack(self) -> _Pack:
        pack = getattr(self._local, "pack", None)
        if pack is None:
            pack = self._local.pack = _Pack(self._buffer(0))
            with self._lock:
                self._packs.append(pack)
        return pack

    def _pack_run(self, pack: _Pack, digs: list[bytes], lengths: Sequence[int]) -> None:
        """Keep the run just read at ``pack.size`` in the pack: the chunks claimed now, moved down
        over any the store has or another chunk of this push already holds."""
        with self._lock:
            known, claimed = self.known, self._claimed
            fresh = []
            for dig in digs:  # one by one: a run may hold a chunk twice
                keep = dig not in known and dig not in claimed
                if keep:
                    claimed.add(dig)
                fresh.append(keep)
        src = dst = pack.size
        view = pack.view
        for dig, n, keep in zip(digs, lengths, fresh, strict=True):
            if keep:
                if dst != src:
                    view[dst : dst + n] = view[src : src + n]  # memmove: overlapping, downwards
                pack.chunks.append((dig, n))
                dst += n
            src += n
        pack.size = dst
        if pack.size >= self.pack_target:
            self._write_pack(pack)

    def _take(self, n: int, fill: Callable[[memoryview], None]) -> bytes:
        # the chunk's bytes are copied once, into the writer's own buffer: hashed and written from there
        if is_packed(n):
            return self._packed(n, fill)
        buf = getattr(self._local, "loose", None)
        if buf is None or len(buf) < n:
            buf = self._local.loose = self._buffer(n)
        fill(buf[:n])
        dig = self.hfn(buf[:n])
        if self._claim(dig) and not self.store.has_chunk(dig.hex()):
            self._local.loose = self._buffer(n)  # the write owns this one now
            self._submit(self._store_loose, buf, dig, n)
        return dig

    def _store_loose(self, buf: memoryview, dig: bytes, n: int) -> None:
        if write_direct(self.store, chunk_key(dig.hex()), buf, n):
            self._sent({dig: n}, n)

    def _claim(self, dig: bytes) -> bool:
        with self._lock:
            if dig in self.known or dig in self._claimed:
                return False
            self._claimed.add(dig)
            return True

    def _packed(self, n: int, fill: Callable[[memoryview], None]) -> bytes:
        pack = self._pack()
        start = pack.size
        fill(pack.view[start : start + n])
        dig = self.hfn(pack.view[start : start + n])
        if self._claim(dig):
            pack.chunks.append((dig, n))
            pack.size += n
            if pack.size >= self.pack_target:
                self._write_pack(pack)
        return dig

    def _write_pack(self, pack: _Pack) -> None:
        if pack.chunks:
            full, pack.view = pack.view, self._buffer(0)
            self._submit(self._store_pack, full, pack.chunks, pack.size)
        pack.chunks, pack.size = [], 0

    def _store_pack(self, view: memoryview, chunks: list[tuple[bytes, int]], size: int) -> None:
        pack_id, locations = pack_layout(chunks)
        if not has_pack(self.store, pack_id, size):  # a killed earlier run wrote it
            write_direct(self.store, pack_key(pack_id), view, size)
            self._sent(dict(chunks), size)
        with self._lock:
            self.locations.update(locations)

    def _buffer(self, n: int) -> memoryview:
        """An aligned buffer of at least ``n`` bytes (and a pack's room): a spare one when there is."""
        with self._lock:
            for i, view in enumerate(self._spares):
                if len(view) >= n:
                    return self._spares.pop(i)
        return aligned_buffer(max(n, self.pack_target + packs.PACK_CHUNK_LIMIT))

    def _submit(self, write: Callable[..., None], view: memoryview, *args: Any) -> None:
        """Run ``write(view, *args)`` on the write thread; at most :data:`WRITES_IN_FLIGHT` wait
        (then the chunking thread waits). A write that failed is raised here, or by :meth:`close`."""
        self._slots.acquire()
        try:
            self._raise_failed()
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spotshift-write")
            fut = self._pool.submit(write, view, *args)
        except BaseException:
            self._slots.release()
            raise
        fut.add_done_callback(lambda _: self._recycle(view))
        with self._lock:
            self._pending.append(fut)

    def _recycle(self, view: memoryview) -> None:
        with self._lock:
            self._spares.append(view)
        self._slots.release()

    def _raise_failed(self) -> None:
        with self._lock:
            failed = next((f for f in self._pending if f.done() and f.exception()), None)
        if failed is not None:
            raise failed.exception()  # type: ignore[misc]

    def wait(self) -> None:
        """Wait for every write started; raise the first that failed."""
        for fut in list(self._pending):
            fut.exception()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._raise_failed()

    def _sent(self, chunks: dict[bytes, int], nbytes: int) -> None:
        with self._lock:
            self.written.update(chunks)
            self.chunks_written += len(chunks)
            self.bytes_written += nbytes
        self.task.advance(nbytes)

    def close(self) -> None:
        """Write every thread's open pack (after the chunking threads are done)."""
        try:
            for pack in self._packs:
                self._write_pack(pack)
            self._packs.clear()
        finally:
            self.wait()

    @property
    def present(self) -> set[bytes]:
        """Chunks the writer saw that the store now holds: written or found there."""
        return set(self._claimed)
