"""The production path: a Dagster instance whose runs, events and schedules live in PostgreSQL.

`spotshift home init` writes a Postgres-backed dagster.yaml when SPOTSHIFT_DAGSTER_POSTGRES_URL is
set; this test proves that instance really stores a materialization and a dynamic partition.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import open_instance, require_service

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


def test_postgres_backed_instance_stores_runs(
    spotshift_home: Path, scratch_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dagster as dg

    from spotshift.home import dagster_home, init_home

    monkeypatch.setenv("SPOTSHIFT_DAGSTER_POSTGRES_URL", scratch_database)
    init_home()
    assert "postgres_url" in (dagster_home() / "dagster.yaml").read_text()
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home()))

    @dg.asset
    def probe() -> int:
        return 1

    with open_instance() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        instance.add_dynamic_partitions("regions", ["gcp/us-central1"])
        result = dg.materialize([probe], instance=instance)
        assert result.success
    with open_instance() as again:  # a second process view sees the same state
        assert again.get_latest_materialization_event(dg.AssetKey("probe")) is not None
        assert again.get_dynamic_partitions("regions") == ["gcp/us-central1"]
