"""``s3://bucket/prefix`` chunk stores on Amazon S3 (or any S3-compatible endpoint) via boto3.

* Endpoint: ``endpoint_url`` argument, else boto3's own ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``
  environment variables (MinIO, moto, R2, ...). Credentials come from the usual boto3 chain.
* Write-once (``if_absent``): ``PutObject`` / ``CompleteMultipartUpload`` with ``If-None-Match: *``;
  S3 answers 412 when the key exists.
* Objects larger than ``multipart_threshold`` (64 MiB) are uploaded in ``part_size`` (16 MiB)
  parts; a failed multipart upload is aborted.
* Integrity on arrival: every upload carries a CRC32 checksum that S3 verifies before it stores
  the object (on top of the content digest spotshift checks before sending).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from spotshift.atomic import temp_path
from spotshift.cloud_errors import botocore_errors, from_botocore, track_status
from spotshift.errors import IntegrityError, NotFoundError
from spotshift.sync.object_writer import ObjectWriter
from spotshift.sync.store import BucketStore, ObjectInfo

MiB = 1024 * 1024


class S3ChunkStore(BucketStore):
    """A key prefix in an S3 bucket. Thread-safe (boto3 clients are)."""

    scheme = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any = None,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        multipart_threshold: int = 64 * MiB,
        part_size: int = 16 * MiB,
    ):
        super().__init__(bucket, prefix)
        self.multipart_threshold = multipart_threshold
        self.part_size = max(5 * MiB, part_size)
        if client is None:
            import boto3
            from botocore.config import Config

            # 5 attempts unless the standard AWS_MAX_ATTEMPTS says otherwise
            retries: dict[str, Any] = {"mode": "standard"}
            if not os.environ.get("AWS_MAX_ATTEMPTS"):
                retries["max_attempts"] = 5
            try:  # resolves the credentials (a web identity role: AssumeRoleWithWebIdentity)
                client = boto3.session.Session().client(
                    "s3",
                    endpoint_url=endpoint_url or None,
                    region_name=region_name or None,
                    config=Config(max_pool_connections=32, retries=retries),
                )
            except botocore_errors() as exc:
                raise from_botocore(exc, f"s3 store {self.url}", "credentials") from None
        self.client = track_status(client)

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        """``fn(Bucket=..., **kwargs)`` with botocore errors mapped to spotshift errors naming ``what``."""
        try:
            return fn(Bucket=self.bucket, **kwargs)
        except botocore_errors() as exc:
            raise self._mapped(exc, what) from None

    def _mapped(self, exc: BaseException, what: str) -> Exception:
        """The store's own meanings (missing key, write-once refusal), else the shared translation."""
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                return NotFoundError(f"{self.url}: bucket {self.bucket!r} does not exist")
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                return NotFoundError(f"{what} not found in {self.url}")
            if code in ("PreconditionFailed", "412") or status == 412:
                return _Exists()
            if code == "InvalidRange" or status == 416:
                return IntegrityError(f"{what} in {self.url}: the range asked for is past its end")
        return from_botocore(exc, f"s3 store {self.url}", what)

    # ---- writes ----------------------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        return self._put(key, data, len(data), if_absent)

    def put_file(self, key: str, path: str | os.PathLike[str], *, if_absent: bool = False) -> bool:
        with open(path, "rb") as f:
            return self._put(key, f, os.fstat(f.fileno()).st_size, if_absent)

    def _put(self, key: str, body: bytes | BinaryIO, size: int, if_absent: bool) -> bool:
        # one PUT up to the multipart threshold; write-once (If-None-Match) when asked
        if size > self.multipart_threshold:
            return self._multipart(key, io.BytesIO(body) if isinstance(body, bytes) else body, if_absent)
        extra: dict[str, Any] = {"IfNoneMatch": "*"} if if_absent else {}
        try:
            self._call(
                key,
                self.client.put_object,
                Key=self.object_name(key),
                Body=body,
                ChecksumAlgorithm="CRC32",
                **extra,
            )
        except _Exists:
            return False
        return True

    def _multipart(self, key: str, stream: Any, if_absent: bool) -> bool:
        if if_absent and self.exists(key):
            return False
        upload = _S3Upload(self, key, if_absent=if_absent)
        try:
            while True:
                body = stream.read(self.part_size)
                if not body and upload.parts:
                    break
                upload.send(body, len(upload.parts) + 1)
                if len(body) < self.part_size:
                    break
            upload.finish()
        except _Exists:
            upload.abort()
            return False
        except BaseException:
            upload.abort()
            raise
        return True

    def open_upload(self, key: str) -> ObjectWriter:
        """A streaming multipart upload of ``key``: parts of ``part_size`` go up while the caller
        still writes (:class:`~spotshift.sync.object_writer.ObjectWriter`); the object exists once
        ``close()`` returns, and not at all after ``abort()`` or a killed writer."""
        return ObjectWriter(
            _S3Upload(self, key),
            what=f"{key} in {self.url}",
            piece_bytes=self.part_size,
            workers=4,
            max_pending=4,
        )

    def _abort(self, k: str, upload_id: str) -> None:
        # best effort: a bucket lifecycle rule reaps what is left
        with contextlib.suppress(Exception):
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=k, UploadId=upload_id)

    # ---- reads -----------------------------------------------------------------------------------
    def get_bytes(self, key: str) -> bytes:
        r = self._call(key, self.client.get_object, Key=self.object_name(key))
        try:
            return r["Body"].read()
        except botocore_errors() as exc:
            raise self._mapped(exc, key) from None

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        rng = f"bytes={offset}-{offset + length - 1}"
        r = self._call(key, self.client.get_object, Key=self.object_name(key), Range=rng)
        try:
            return r["Body"].read()
        except botocore_errors() as exc:
            raise self._mapped(exc, key) from None

    def get_file(self, key: str, path: str | os.PathLike[str]) -> None:
        r = self._call(key, self.client.get_object, Key=self.object_name(key))
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(dest.parent)
        try:
            with open(tmp, "wb") as f:
                for block in r["Body"].iter_chunks(4 * MiB):
                    f.write(block)
            os.replace(tmp, dest)
        except botocore_errors() as exc:
            tmp.unlink(missing_ok=True)
            raise self._mapped(exc, key) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def size(self, key: str) -> int | None:
        try:
            r = self._call(key, self.client.head_object, Key=self.object_name(key))
        except NotFoundError:
            return None
        return int(r["ContentLength"])

    def list_objects(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = f"{self.prefix}/" if self.prefix else ""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=base + prefix
        )
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    yield ObjectInfo(obj["Key"][len(base) :], int(obj["Size"]), obj["LastModified"])
        except botocore_errors() as exc:
            raise self._mapped(exc, prefix or "keys") from None

    def delete(self, key: str) -> None:
        with contextlib.suppress(NotFoundError):
            self._call(key, self.client.delete_object, Key=self.object_name(key))


class _Exists(Exception):
    """Internal: a write-once precondition failed (the key exists)."""


class _S3Upload:
    """One multipart upload (an :class:`~spotshift.sync.object_writer.Upload`): parts numbered in order,
    each with a CRC32 S3 checks on arrival; ``finish`` completes it (write-once with ``if_absent``)."""

    def __init__(self, store: S3ChunkStore, key: str, *, if_absent: bool = False):
        self.store, self.key, self.name, self.if_absent = store, key, store.object_name(key), if_absent
        created = store._call(
            key, store.client.create_multipart_upload, Key=self.name, ChecksumAlgorithm="CRC32"
        )
        self.upload_id = created["UploadId"]
        self.parts: dict[int, dict[str, Any]] = {}

    def send(self, piece: bytes, number: int) -> None:
        r = self.store._call(
            self.key,
            self.store.client.upload_part,
            Key=self.name,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=piece,
            ChecksumAlgorithm="CRC32",
        )
        part = {"PartNumber": number, "ETag": r["ETag"], "ChecksumCRC32": r.get("ChecksumCRC32")}
        self.parts[number] = {k: v for k, v in part.items() if v is not None}

    def finish(self) -> None:
        extra: dict[str, Any] = {"IfNoneMatch": "*"} if self.if_absent else {}
        self.store._call(
            self.key,
            self.store.client.complete_multipart_upload,
            Key=self.name,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": [self.parts[n] for n in sorted(self.parts)]},
            **extra,
        )

    def abort(self) -> None:
        self.store._abort(self.name, self.upload_id)
