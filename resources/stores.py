"""Region stores as Dagster resources: which object store holds each ``provider/region``'s copy of the data.

Three implementations of one small interface, ``store_for(location) -> ChunkStore``:

* :class:`RegionStoresResource` — the embedded default: one local directory per region under
  ``$SPOTSHIFT_HOME/stores`` (``spotshift.home.region_store_url``), or under ``root``.
* :class:`S3RegionStoresResource` — dagster-aws ``S3Resource`` (``endpoint_url``, ``region_name``,
  profile, ...) plus a bucket and prefix: region ``aws/us-east-1`` lives at
  ``s3://<bucket>/<prefix>/aws/us-east-1``.
* :class:`GCSRegionStoresResource` — dagster-gcp ``GCSResource`` plus a bucket and prefix
  (``STORAGE_EMULATOR_HOST`` honoured by the client).

:func:`stores_resource_from_env` picks one from ``SPOTSHIFT_STORES_URL`` (unset: local).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import dagster as dg
from dagster_aws.s3 import S3Resource
from dagster_gcp import GCSResource

from spotshift.errors import ConfigError
from spotshift.pricing.egress import split_location
from spotshift.sync.store import ChunkStore, LocalChunkStore, open_store


class RegionStoresResource(dg.ConfigurableResource):
    """Local region stores (the embedded default): ``<root>/<provider>/<region>``."""

    root: str = ""

    def store_for(self, location: str) -> ChunkStore:
        provider, region = split_location(location)
        if self.root:
            return LocalChunkStore(Path(self.root).expanduser() / provider / region)
        from spotshift.home import region_store_url

        return open_store(region_store_url(f"{provider}/{region}"))


class S3RegionStoresResource(S3Resource):
    """Region stores in one S3 bucket: ``s3://<bucket>/<prefix>/<provider>/<region>``."""

    bucket: str
    prefix: str = "spotshift/stores"

    def get_object_to_set_on_execution_context(self) -> object:
        return self  # assets call store_for(); S3Resource would hand them a bare boto3 client

    def store_for(self, location: str) -> ChunkStore:
        from spotshift.sync.store_s3 import S3ChunkStore

        provider, region = split_location(location)
        return S3ChunkStore(
            self.bucket, f"{self.prefix.strip('/')}/{provider}/{region}", client=self.get_client()
        )


class GCSRegionStoresResource(GCSResource):
    """Region stores in one GCS bucket: ``gs://<bucket>/<prefix>/<provider>/<region>``."""

    bucket: str
    prefix: str = "spotshift/stores"

    def get_object_to_set_on_execution_context(self) -> object:
        return self  # assets call store_for(); GCSResource would hand them a bare storage client

    def store_for(self, location: str) -> ChunkStore:
        from spotshift.sync.store_gcs import GCSChunkStore

        provider, region = split_location(location)
        return GCSChunkStore(
            self.bucket, f"{self.prefix.strip('/')}/{provider}/{region}", client_factory=self.get_client
        )


def stores_resource_from_env() -> dg.ConfigurableResource:
    """The region stores named by ``SPOTSHIFT_STORES_URL`` (``s3://bucket/prefix``, ``gs://bucket/prefix``,
    ``file:///dir``); local stores under ``$SPOTSHIFT_HOME/stores`` when unset."""
    url = os.environ.get("SPOTSHIFT_STORES_URL", "").strip()
    if not url:
        return RegionStoresResource()
    parsed = urlparse(url)
    prefix = parsed.path.strip("/") or "spotshift/stores"
    if parsed.scheme == "s3":
        return S3RegionStoresResource(
            bucket=parsed.netloc, prefix=prefix, endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3")
        )
    if parsed.scheme == "gs":
        return GCSRegionStoresResource(bucket=parsed.netloc, prefix=prefix)
    if parsed.scheme == "file":
        return RegionStoresResource(root=parsed.path)
    raise ConfigError(
        f"SPOTSHIFT_STORES_URL={url!r}: use s3://bucket/prefix, gs://bucket/prefix or file:///dir"
    )
