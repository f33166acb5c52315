"""Region stores as Dagster resources: which object store holds each ``provider/region``'s copy of the data.

Three implementations of one small interface, ``store_for(location) -> ChunkStore``:

* :class:`RegionStoresResource` — the embedded default: the library's own region stores
  (``spotshift.home.region_store_url``: ``$SPOTSHIFT_HOME/stores`` or a ``file://`` base), or under ``root``.
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

import dagster as dg
from dagster_aws.s3 import S3Resource
from dagster_gcp import GCSResource

from spotshift.home import region_path, region_store_url, stores_base
from spotshift.sync.store import ChunkStore, LocalChunkStore
from spotshift.sync.store_gcs import GCSChunkStore
from spotshift.sync.store_s3 import S3ChunkStore
from spotshift.sync.store_url import open_store


class RegionStoresResource(dg.ConfigurableResource):
    """Local region stores (the embedded default): ``<root>/<provider>/<region>``; without ``root``,
    wherever :func:`spotshift.home.region_store_url` puts them (as the library does)."""

    root: str = ""

    def store_for(self, location: str) -> ChunkStore:
        if self.root:
            return LocalChunkStore(region_path(location, str(Path(self.root).expanduser())))
        return open_store(region_store_url(location))


class S3RegionStoresResource(S3Resource):
    """Region stores in one S3 bucket: ``s3://<bucket>/<prefix>/<provider>/<region>``."""

    bucket: str
    prefix: str = "spotshift/stores"

    def get_object_to_set_on_execution_context(self) -> object:
        return self  # assets call store_for(); S3Resource would hand them a bare boto3 client

    def store_for(self, location: str) -> ChunkStore:
        return S3ChunkStore(
            self.bucket, region_path(location, self.prefix.strip("/")), client=self.get_client()
        )


class GCSRegionStoresResource(GCSResource):
    """Region stores in one GCS bucket: ``gs://<bucket>/<prefix>/<provider>/<region>``."""

    bucket: str
    prefix: str = "spotshift/stores"

    def get_object_to_set_on_execution_context(self) -> object:
        return self  # assets call store_for(); GCSResource would hand them a bare storage client

    def store_for(self, location: str) -> ChunkStore:
        return GCSChunkStore(
            self.bucket, region_path(location, self.prefix.strip("/")), client_factory=self.get_client
        )


def stores_resource_from_env() -> dg.ConfigurableResource:
    """The region stores named by ``SPOTSHIFT_STORES_URL``, parsed by :func:`spotshift.home.stores_base`
    (the library's own reading of it, so Dagster and the library use the same stores); local stores
    under ``$SPOTSHIFT_HOME/stores`` when unset."""
    base = stores_base()
    if base.scheme == "s3":
        return S3RegionStoresResource(
            bucket=base.bucket, prefix=base.prefix, endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3")
        )
    if base.scheme == "gs":
        return GCSRegionStoresResource(bucket=base.bucket, prefix=base.prefix)
    return RegionStoresResource()
