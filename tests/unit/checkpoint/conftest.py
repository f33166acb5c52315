"""The real S3 (moto server) and GCS (emulator) peers of the sync tests, for checkpoints streamed into them."""

from tests.unit.sync.conftest import gcs_env, gcs_server, moto_endpoint, s3_env  # noqa: F401
