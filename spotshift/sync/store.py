"""``ChunkStore``: the object-store interface every byte of spotshift goes through.

A store is a flat key space of immutable-or-replaceable objects behind a URL:

* ``file:///abs/path`` — :class:`LocalChunkStore` (the embedded default; one root per simulated
  provider/region under ``$SPOTSHIFT_HOME/stores``),
* ``s3://bucket/prefix`` — S3 (boto3; ``endpoint_url`` honoured),
* ``gs://bucket/prefix`` — Google Cloud Storage (``STORAGE_EMULATOR_HOST`` honoured).

Key layout shared by all users of a store:

``chunks/ab/abcdef...``      content-addressed chunks, named by the hex digest of their bytes
``packs/ab/abcdef...``       pack files: small chunks written back to back (where each one is: the
                             pack index of the manifests that use them, see :mod:`spotshift.sync.packs`)
``manifests/<root>.parquet`` immutable dataset manifests, named by their Merkle root
``refs/<name>/latest``       pointers, written last (a crash leaves garbage, never a broken snapshot)
``checkpoints/<job>/...``    checkpoint parts and commit markers
``events/<kind>/<id>.json``  event notices (preemption notices, ...)

Write-once semantics (``if_absent=True``) are atomic on every implementation: local uses
``link(2)``, S3 ``If-None-Match: *``, GCS ``if_generation_match=0``.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from spotshift.atomic import TempFile, remove_stale_temp_files, stale_temp_files, temp_path
from spotshift.cloud_errors import redact_url
from spotshift.errors import ConfigError, IntegrityError, NotFoundError

CHUNK_PREFIX = "chunks/"
_FADV_DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", None) if hasattr(os, "posix_fadvise") else None


def chunk_key(digest_hex: str) -> str:
    """Key of a content-addressed chunk: ``chunks/<first two hex digits>/<digest>``."""
    if len(digest_hex) < 4 or any(c not in "0123456789abcdef" for c in digest_hex):
        raise IntegrityError(f"chunk digest {digest_hex!r} is not a lowercase hex digest")
    return f"{CHUNK_PREFIX}{digest_hex[:2]}/{digest_hex}"


def check_key(key: str) -> str:
    """``key`` if it is a relative ``a/b/c`` path (no empty, absolute or ``..`` parts); else :class:`ConfigError`."""
    if not key or key.startswith("/") or ".." in key.split("/"):
        raise ConfigError(f"store key {key!r} is not a relative path")
    return key


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object as a listing sees it: key, size and when it was last written (UTC)."""

    key: str
    size: int
    modified: datetime


class ChunkStore(ABC):
    """An object store addressed by string keys. Implementations must be thread-safe."""

    #: canonical URL of the store root (``file://``, ``s3://`` or ``gs://``)
    url: str

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        """Store ``data`` under ``key``. With ``if_absent``, do nothing and return False if it exists."""

    @abstractmethod
    def put_file(self, key: str, path: str | os.PathLike[str], *, if_absent: bool = False) -> bool:
        """Store the file at ``path`` under ``key`` (streamed; multipart where the backend has it)."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; :class:`NotFoundError` when missing."""

    @abstractmethod
    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes of the object from ``offset`` (fewer at its end); :class:`NotFoundError`
        when missing. How chunks stored in pack files are read (a ranged GET on object stores)."""

    @abstractmethod
    def get_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Download the object to ``path`` (temp name + rename); :class:`NotFoundError` when missing."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""

    @abstractmethod
    def size(self, key: str) -> int | None:
        """Size in bytes, or None when missing."""

    @abstractmethod
    def list_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, with size and last write time, in no order."""

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        """All keys starting with ``prefix``, in no particular order."""
        for info in self.list_objects(prefix):
            yield info.key

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` (missing keys are not an error)."""

    def flush(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Make every write so far durable. A no-op where a write is durable when it returns."""

    def stale_temp_files(self) -> list[TempFile]:
        """Temp files that killed writers left in the store (none where uploads are atomic)."""
        return []

    def remove_stale_temp_files(self) -> int:
        """Delete :meth:`stale_temp_files`; returns how many were removed. Every writer calls it first."""
        return 0

    # ---- content-addressed chunks -------------------------------------------------------------
    def has_chunk(self, digest_hex: str) -> bool:
        """Whether the chunk named ``digest_hex`` is stored (presence only; see ``get_chunk``)."""
        return self.exists(chunk_key(digest_hex))

    def put_chunk(self, digest_hex: str, data: bytes) -> bool:
        """Store a chunk write-once; returns False when it was already there."""
        return self.put_bytes(chunk_key(digest_hex), data, if_absent=True)

    def get_chunk(self, digest_hex: str, verify: Callable[[bytes], str] | None = None) -> bytes:
        """Fetch a chunk; with ``verify`` (bytes -> hex digest) refuse bytes that do not match its name."""
        data = self.get_bytes(chunk_key(digest_hex))
        if verify is not None and verify(data) != digest_hex:
            raise IntegrityError(f"chunk {digest_hex} in {self.url}: content does not match its digest")
        return data

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class LocalChunkStore(ChunkStore):
    """A directory on the local filesystem. Writes go to a temp name and are renamed (or linked) in.

    Every write is fsynced before it returns, unless ``fsync_each=False``: then writes are durable
    only after :meth:`flush` (one ``syncfs`` of the store's file system — much cheaper than one
    fsync per small object, for writers that commit a batch, such as a delta sync's chunks); each
    write starts its writeback at once (``posix_fadvise``), so the flush has little left to do.
    """

    def __init__(self, root: str | os.PathLike[str], *, fsync_each: bool = True):
        self.fsync_each = fsync_each
        self.root = Path(root).expanduser().resolve()
        self.url = self.root.as_uri()
        self._tmp = self.root / ".tmp"

    # temp files carry the writer's pid so a later writer can remove what a killed one left behind
    def _tmp_path(self) -> Path:
        self._tmp.mkdir(parents=True, exist_ok=True)
        return self._tmp / f"{os.getpid()}.{secrets.token_hex(8)}"

    def stale_temp_files(self) -> list[TempFile]:
        """Files in ``<root>/.tmp/`` whose writer (the pid their name starts with) is gone."""
        return stale_temp_files(self._tmp, owned=True)

    def remove_stale_temp_files(self) -> int:
        """Delete temp files of writers that are no longer alive; returns how many were removed."""
        return remove_stale_temp_files(self._tmp, owned=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _commit(self, tmp: Path, dest: Path, if_absent: bool) -> bool:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if if_absent:
            try:
                os.link(tmp, dest)  # atomic create-if-absent
            except FileExistsError:
                return False
            finally:
                tmp.unlink(missing_ok=True)
            return True
        os.replace(tmp, dest)
        return True

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        dest = self._path(key)
        if if_absent and dest.exists():
            return False
        tmp = self._tmp_path()
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                self._durable(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return self._commit(tmp, dest, if_absent)

    def _durable(self, fd: int) -> None:
        """fsync a written file; batched (``fsync_each=False``), start its writeback instead, so the
        disk works while the writer goes on and :meth:`flush` has little left to wait for."""
        if self.fsync_each:
            os.fsync(fd)
        elif _FADV_DONTNEED is not None:
            with contextlib.suppress(OSError):  # advice only: flush() is what makes it durable
                os.posix_fadvise(fd, 0, 0, _FADV_DONTNEED)  # Linux: async writeback of the dirty pages

    def put_file(self, key: str, path: str | os.PathLike[str], *, if_absent: bool = False) -> bool:
        dest = self._path(key)
        if if_absent and dest.exists():
            return False
        tmp = self._tmp_path()
        try:
            with open(path, "rb") as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, 4 << 20)
                if self.fsync_each:
                    out.flush()
                    os.fsync(out.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return self._commit(tmp, dest, if_absent)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"{key} not found in {self.url}") from None

    def new_temp(self) -> tuple[int, Path]:
        """A new temp file in the store, open for writing: ``(fd, path)``, for :meth:`commit_temp`.

        For writers that stream an object in pieces (no whole-object buffer); a writer killed
        before the commit leaves it to :meth:`remove_stale_temp_files`.
        """
        tmp = self._tmp_path()
        return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644), tmp

    def commit_temp(self, fd: int, tmp: Path, key: str, *, if_absent: bool = False) -> bool:
        """Close the temp file of :meth:`new_temp` (fsynced first unless ``fsync_each=False``) and
        move it to ``key``; with ``if_absent``, False (and nothing changed) when ``key`` exists."""
        try:
            self._durable(fd)
        finally:
            os.close(fd)
        return self._commit(tmp, self._path(key), if_absent)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except FileNotFoundError:
            raise NotFoundError(f"{key} not found in {self.url}") from None
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def get_file(self, key: str, path: str | os.PathLike[str]) -> None:
        src = self._path(key)
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(dest.parent)
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)
            raise NotFoundError(f"{key} not found in {self.url}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def list_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self.root
        # walk only the directory the prefix names, then filter by the rest of it
        head = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = base / head if head else base
        if not start.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(start):
            if Path(dirpath) == base:
                dirnames[:] = [d for d in dirnames if d != ".tmp"]
            rel_dir = os.path.relpath(dirpath, base)
            for name in filenames:
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:  # deleted while we walked
                    continue
                yield ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def flush(self) -> None:
        if not self.fsync_each and self.root.exists():
            syncfs(self.root)


def syncfs(path: str | os.PathLike[str]) -> None:
    """Flush the file system holding ``path`` to stable storage (Linux ``syncfs``; else ``sync``)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_RDONLY)
        try:
            if libc.syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        pass
    os.sync()


class BucketStore(ChunkStore):
    """Base of the object stores addressed as ``<scheme>://bucket/prefix`` (S3, GCS)."""

    scheme = ""

    def __init__(self, bucket: str, prefix: str = ""):
        if not bucket:
            raise ConfigError(f"{self.scheme} store needs a bucket ({self.scheme}://bucket/prefix)")
        if not _BUCKET_RE.match(bucket):
            raise ConfigError(
                f"{self.scheme} store: bucket name of {len(bucket)} characters is not a valid bucket name "
                "(3-222 letters, digits, '.', '_', '-')"
            )
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"{self.scheme}://{bucket}/{self.prefix}" if self.prefix else f"{self.scheme}://{bucket}"

    @classmethod
    def from_url(cls, url: str) -> ChunkStore:
        parsed = parse_store_url(url)
        return cls(parsed.netloc, parsed.path)

    def object_name(self, key: str) -> str:
        """The bucket-level name of a store key."""
        return f"{self.prefix}/{check_key(key)}" if self.prefix else check_key(key)

    def key_of(self, name: str) -> str:
        """The store key of a bucket-level name under this store's prefix."""
        return name[len(self.prefix) + 1 :] if self.prefix else name


#: S3 and GCS bucket names (the union of both providers' rules, as botocore checks them)
_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,220}[A-Za-z0-9]$")


def parse_store_url(url: str) -> Any:
    """``urlparse(url)``, refusing credentials in the URL (never echoed: errors show :func:`redact_url`)."""
    try:
        parsed = urlparse(url)
        parsed.port  # noqa: B018 - validates the netloc
    except ValueError:
        raise ConfigError(f"store URL {redact_url(url)!r} is malformed") from None
    if "@" in parsed.netloc:
        raise ConfigError(
            f"store URL {redact_url(url)!r}: credentials in the URL are not supported; use the provider's "
            "credential chain (AWS_ACCESS_KEY_ID/..., AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS)"
        )
    if "\0" in url:
        raise ConfigError(f"store URL {redact_url(url)!r} contains a NUL byte")
    return parsed
