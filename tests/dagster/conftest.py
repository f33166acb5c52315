"""Fixtures shared with the sync unit tests: real S3 (moto server) and GCS (emulator) peers; a scratch
PostgreSQL database for the tests of the production Dagster instance."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.conftest import require_service
from tests.unit.sync.conftest import gcs_env, gcs_server, moto_endpoint, s3_env  # noqa: F401

PG_HOST, PG_PORT = "127.0.0.1", 5432


def _admin(url: str, sql: str) -> None:
    import psycopg2

    con = psycopg2.connect(url)
    con.autocommit = True
    try:
        con.cursor().execute(sql)
    finally:
        con.close()


@pytest.fixture
def scratch_database() -> Iterator[str]:
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    name = f"spotshift_test_{secrets.token_hex(4)}"
    admin = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/test"
    _admin(admin, f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        _admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
