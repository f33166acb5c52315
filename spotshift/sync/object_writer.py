"""Streaming writes into object stores: bytes written now, uploaded by a background thread as they come.

An emergency checkpoint encrypts its parts once and sends the encrypted bytes to the local tier
and to the region's object store in the same pass (:mod:`spotshift.checkpoint.streaming`). The
store side is an :class:`ObjectWriter`: :meth:`~ObjectWriter.write` hands pieces of ``piece_bytes``
to ``workers`` uploading threads (at most ``max_pending`` pieces queued, so encryption and the network
overlap and memory stays bounded; S3 parts go up in parallel, a GCS resumable upload in order); :meth:`~ObjectWriter.close` waits for every piece and finishes
the upload (S3 ``CompleteMultipartUpload``, the last chunk of a GCS resumable upload), after which
the object is durable and whole; :meth:`~ObjectWriter.abort` drops it (S3 ``AbortMultipartUpload``;
a GCS resumable session that never finishes leaves no object).

The two protocols are :class:`Upload` implementations in the stores' modules (``S3ChunkStore.open_upload``,
``GCSChunkStore.open_upload``); nothing here knows a cloud.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Protocol

from spotshift.errors import IntegrityError

MiB = 1024 * 1024


class Upload(Protocol):
    """One object's upload in pieces numbered from 1 (a store's protocol); ``send`` may run in
    several threads at once when the writer has several workers."""

    def send(self, piece: bytes, number: int) -> None: ...

    def finish(self) -> None: ...

    def abort(self) -> None: ...


class ObjectWriter:
    """A binary sink that uploads what is written to one object, in the background (see the module doc)."""

    def __init__(
        self,
        upload: Upload,
        *,
        what: str,
        piece_bytes: int = 16 * MiB,
        workers: int = 1,
        max_pending: int = 2,
    ):
        self.upload = upload
        self.what = what
        self.piece_bytes = piece_bytes
        self.bytes_written = 0
        self._buf = bytearray()
        self._pieces = 0
        self._queue: queue.Queue[tuple[int, bytes] | None] = queue.Queue(maxsize=max(1, max_pending))
        self._error: BaseException | None = None
        self._closed = False
        self._threads = [
            threading.Thread(target=self._run, name=f"upload {what}", daemon=True)
            for _ in range(max(1, workers))
        ]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue  # drain: the writer sees the error at its next write or close
            try:
                self.upload.send(item[1], item[0])
            except BaseException as exc:
                self._error = exc

    def _put(self, piece: bytes) -> None:
        self._pieces += 1
        self._queue.put((self._pieces, piece))

    def _stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, data: Any) -> int:
        """Buffer ``data``; full pieces go to the uploading thread (blocks while ``max_pending`` are queued)."""
        self._raise()
        self._buf += data
        while len(self._buf) >= self.piece_bytes:
            piece = bytes(self._buf[: self.piece_bytes])
            del self._buf[: self.piece_bytes]
            self._put(piece)
        n = len(data)
        self.bytes_written += n
        return n

    def close(self, *, expect_bytes: int | None = None) -> int:
        """Send the rest, wait for every piece and finish the object; returns its size. Raises (and
        aborts the upload) when a piece failed or ``expect_bytes`` is not what was written."""
        if self._closed:
            return self.bytes_written
        self._closed = True
        try:
            if self._buf or self.bytes_written == 0:
                self._put(bytes(self._buf))
                self._buf.clear()
            self._stop()
            self._raise()
            if expect_bytes is not None and expect_bytes != self.bytes_written:
                raise IntegrityError(
                    f"{self.what}: {self.bytes_written} bytes streamed, {expect_bytes} expected"
                )
            self.upload.finish()
        except BaseException:
            self.upload.abort()
            raise
        return self.bytes_written

    def abort(self) -> None:
        """Drop the object (nothing of it becomes visible); safe after a failed close."""
        if not self._closed:
            self._closed = True
            self._error = self._error or IntegrityError(f"{self.what}: aborted")
            self._stop()
        self.upload.abort()
