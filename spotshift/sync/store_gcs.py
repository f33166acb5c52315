"""``gs://bucket/prefix`` chunk stores on Google Cloud Storage via google-cloud-storage.

* Emulator: with ``STORAGE_EMULATOR_HOST`` set (e.g. ``http://127.0.0.1:9023``) the client talks to
  it with anonymous credentials. Otherwise credentials come from Application Default Credentials.
* Write-once (``if_absent``): ``if_generation_match=0`` — GCS answers 412 when the object exists.
* Large objects go through resumable uploads in ``chunk_size`` (16 MiB) pieces; uploads and
  downloads are checked with CRC32C by the client (integrity on arrival).
* One ``storage.Client`` per thread unless a client is given (e.g. from dagster-gcp ``GCSResource``).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from spotshift.atomic import temp_path
from spotshift.cloud_errors import from_google, google_errors
from spotshift.errors import IntegrityError, NotFoundError
from spotshift.sync.object_writer import ObjectWriter
from spotshift.sync.store import BucketStore, ObjectInfo

MiB = 1024 * 1024


class GCSChunkStore(BucketStore):
    """A name prefix in a GCS bucket."""

    scheme = "gs"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any = None,
        client_factory: Callable[[], Any] | None = None,
        project: str | None = None,
        chunk_size: int = 16 * MiB,
    ):
        super().__init__(bucket, prefix)
        self.chunk_size = chunk_size
        self._client = client
        self._factory = client_factory or (
            lambda: _new_client(project or os.environ.get("GOOGLE_CLOUD_PROJECT"))
        )
        self._local = threading.local()

    def _bucket(self) -> Any:
        b = getattr(self._local, "bucket", None)
        if b is None:
            client = self._client
            if client is None:
                client = self._wrap("client", self._factory)
            b = client.bucket(self.bucket)
            self._local.bucket = b
        return b

    def _blob(self, key: str) -> Any:
        blob = self._bucket().blob(self.object_name(key))
        blob.chunk_size = self.chunk_size
        return blob

    def _wrap(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` with client errors as spotshift errors naming ``what`` (see
        :func:`spotshift.cloud_errors.from_google`); a 412 means "exists", a 404 "missing"."""
        from google.api_core import exceptions as gexc

        try:
            return fn(*args, **kwargs)
        except gexc.PreconditionFailed:
            raise _Exists() from None
        except gexc.NotFound:
            raise NotFoundError(f"{what} not found in {self.url}") from None
        except google_errors() as exc:
            raise from_google(exc, f"gs store {self.url}", what) from None

    # ---- writes ----------------------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        extra = {"if_generation_match": 0} if if_absent else {}
        try:
            self._wrap(key, self._blob(key).upload_from_string, data, checksum="crc32c", **extra)
        except _Exists:
            return False
        return True

    def put_file(self, key: str, path: str | os.PathLike[str], *, if_absent: bool = False) -> bool:
        extra = {"if_generation_match": 0} if if_absent else {}
        try:
            self._wrap(key, self._blob(key).upload_from_filename, os.fspath(path), checksum="crc32c", **extra)
        except _Exists:
            return False
        return True

    def open_upload(self, key: str) -> ObjectWriter:
        """A streaming resumable upload of ``key`` in ``chunk_size`` pieces, sent while the caller
        still writes (:class:`~spotshift.sync.object_writer.ObjectWriter`); the object exists once
        ``close()`` returns, and not at all after ``abort()`` or a killed writer (an unfinished
        resumable session creates nothing)."""
        return ObjectWriter(_GCSUpload(self, key), what=f"{key} in {self.url}", piece_bytes=self.chunk_size)

    # ---- reads -----------------------------------------------------------------------------------
    def get_bytes(self, key: str) -> bytes:
        return self._wrap(key, self._blob(key).download_as_bytes)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        from google.api_core import exceptions as gexc

        try:  # end is inclusive in the client's API
            return self._wrap(key, self._blob(key).download_as_bytes, start=offset, end=offset + length - 1)
        except gexc.RequestRangeNotSatisfiable:
            raise IntegrityError(f"{key} in {self.url}: the range asked for is past its end") from None

    def get_file(self, key: str, path: str | os.PathLike[str]) -> None:
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(dest.parent)
        try:
            self._wrap(key, self._blob(key).download_to_filename, str(tmp))
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def size(self, key: str) -> int | None:
        blob = self._wrap(key, self._bucket().get_blob, self.object_name(key))
        return None if blob is None else int(blob.size)

    def list_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = f"{self.prefix}/" if self.prefix else ""
        bucket = self._bucket()
        blobs = self._wrap(
            prefix or "keys", lambda: list(bucket.client.list_blobs(bucket, prefix=base + prefix))
        )
        for b in blobs:
            yield ObjectInfo(self.key_of(b.name), int(b.size or 0), b.updated)

    def delete(self, key: str) -> None:
        with contextlib.suppress(NotFoundError):
            self._wrap(key, self._blob(key).delete)


class _GCSUpload:
    """One resumable upload (an :class:`~spotshift.sync.object_writer.Upload`) through the client's
    ``BlobWriter``, CRC32C-checked; its session starts with the first chunk."""

    def __init__(self, store: GCSChunkStore, key: str):
        self.store, self.key = store, key
        self.writer: Any = None

    def send(self, piece: bytes, number: int) -> None:
        del number  # one worker: the pieces arrive in order
        if self.writer is None:  # opened in the uploading thread: the thread's own client
            blob = self.store._blob(self.key)
            self.writer = self.store._wrap(
                self.key, blob.open, "wb", chunk_size=self.store.chunk_size, checksum="crc32c"
            )
        self.store._wrap(self.key, self.writer.write, piece)

    def finish(self) -> None:
        if self.writer is None:
            self.store.put_bytes(self.key, b"")
            return
        self.store._wrap(self.key, self.writer.close)

    def abort(self) -> None:
        self.writer = None  # the session is never finished: no object


class _Exists(Exception):
    """Internal: a write-once precondition failed (the object exists)."""


def _new_client(project: str | None) -> Any:
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=project or "spotshift-emulator", credentials=AnonymousCredentials())
    return storage.Client(project=project)
