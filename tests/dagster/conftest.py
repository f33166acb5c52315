"""Fixtures shared with the sync unit tests: real S3 (moto server) and GCS (emulator) peers."""

from tests.unit.sync.conftest import gcs_env, gcs_server, moto_endpoint, s3_env  # noqa: F401
