"""``open_store(url)``: the store behind a URL, whichever implementation serves its scheme.

It sits above :mod:`spotshift.sync.store` (the interface and the local store) and the cloud
implementations (:mod:`spotshift.sync.store_s3`, :mod:`spotshift.sync.store_gcs`), which import
only the interface: nothing registers itself and nothing imports back. The cloud modules import
their SDKs (boto3, google-cloud-storage) only when a store is first used.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import unquote

from spotshift.cloud_errors import redact_url
from spotshift.errors import ConfigError
from spotshift.sync.store import ChunkStore, LocalChunkStore, parse_store_url
from spotshift.sync.store_gcs import GCSChunkStore
from spotshift.sync.store_s3 import S3ChunkStore

#: URL scheme -> the store implementation's constructor from a URL
FACTORIES: dict[str, Callable[[str], ChunkStore]] = {
    "s3": S3ChunkStore.from_url,
    "gs": GCSChunkStore.from_url,
}


def open_store(url: str) -> ChunkStore:
    """The store behind ``url`` (``file://``, ``s3://``, ``gs://``, or a bare local path).

    Raises :class:`ConfigError` for an unsupported scheme, a malformed URL or credentials in it.
    """
    parsed = parse_store_url(url)
    scheme = parsed.scheme.lower()
    if scheme in ("", "file"):
        if scheme == "file" and parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"store URL {redact_url(url)!r}: file URLs must be absolute (file:///path)")
        path = unquote(parsed.path) if scheme == "file" else url
        if not path:
            raise ConfigError(f"store URL {redact_url(url)!r} has no path")
        return LocalChunkStore(path)
    if scheme not in FACTORIES:
        raise ConfigError(
            f"store URL {redact_url(url)!r}: unsupported scheme {scheme!r} (use file://, s3:// or gs://)"
        )
    return FACTORIES[scheme](url)
