"""The production path: a Dagster instance whose runs, events and schedules live in PostgreSQL.

`spotshift home init --postgres URL` (or SPOTSHIFT_DAGSTER_POSTGRES_URL) writes a Postgres-backed
dagster.yaml with the password as an {env: ...} reference; these tests prove that instance really
stores a materialization and a dynamic partition in a scratch database, that no secret is ever
written, and that a home initialised for one storage refuses to be pointed at another.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import open_instance


def test_postgres_backed_instance_stores_runs(
    spotshift_home: Path, scratch_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dagster as dg

    from spotshift.home import dagster_home, init_home

    monkeypatch.setenv("SPOTSHIFT_DAGSTER_POSTGRES_URL", scratch_database)
    init_home()
    text = (dagster_home() / "dagster.yaml").read_text()
    assert "postgres_db:" in text and scratch_database.rsplit("/", 1)[1] in text
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


def home_init(*argv: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("spotshift")
    return subprocess.run([str(exe), "home", "init", *argv], capture_output=True, text=True, timeout=120)


def test_home_init_postgres_writes_the_password_as_an_env_reference(
    spotshift_home: Path, scratch_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dagster as dg

    from spotshift.home import dagster_home

    # the server trusts local connections, so any password works: what matters is where it is kept
    secret = secrets.token_hex(8)
    with_password = scratch_database.replace("postgres@", f"postgres:{secret}@")
    monkeypatch.delenv("SPOTSHIFT_DAGSTER_POSTGRES_PASSWORD", raising=False)
    done = home_init("--postgres", with_password)
    assert done.returncode == 0, done.stderr
    assert (
        "export SPOTSHIFT_DAGSTER_POSTGRES_PASSWORD" in done.stderr
        and secret not in done.stderr + done.stdout
    )
    text = (dagster_home() / "dagster.yaml").read_text()
    assert secret not in text and "password: {env: SPOTSHIFT_DAGSTER_POSTGRES_PASSWORD}" in text
    assert "nux:\n  enabled: false" in text
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home()))
    # without the variable a Dagster process says which one it needs
    with pytest.raises(Exception, match="SPOTSHIFT_DAGSTER_POSTGRES_PASSWORD"):
        dg.DagsterInstance.get()
    monkeypatch.setenv("SPOTSHIFT_DAGSTER_POSTGRES_PASSWORD", secret)
    with open_instance() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert instance.nux_enabled is False and instance.telemetry_enabled is False
        instance.add_dynamic_partitions("jobs", ["llm-ft"])
    with open_instance() as again:
        assert again.get_dynamic_partitions("jobs") == ["llm-ft"]


def test_a_home_pointed_at_another_storage_says_so(
    spotshift_home: Path, scratch_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spotshift.home import dagster_home

    monkeypatch.delenv("SPOTSHIFT_DAGSTER_POSTGRES_URL", raising=False)
    assert home_init().returncode == 0  # SQLite
    before = (dagster_home() / "dagster.yaml").read_text()
    # the variable is no longer silently ignored once dagster.yaml exists
    monkeypatch.setenv("SPOTSHIFT_DAGSTER_POSTGRES_URL", scratch_database)
    refused = home_init()
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "initialised for SQLite" in refused.stderr and "--force" in refused.stderr
    assert (dagster_home() / "dagster.yaml").read_text() == before
    assert home_init("--force").returncode == 0
    assert "postgres_db:" in (dagster_home() / "dagster.yaml").read_text()
    assert home_init().returncode == 0  # the same storage again: kept as is
    other = scratch_database.rsplit("/", 1)[0] + "/another_db"
    refused = home_init("--postgres", other)
    assert (
        refused.returncode == 2 and "asks for PostgreSQL postgres@127.0.0.1:5432/another_db" in refused.stderr
    )
    shown = subprocess.run(
        [str(Path(sys.executable).with_name("spotshift")), "home", "--json"], capture_output=True, text=True
    )
    assert json.loads(shown.stdout)["instance"].startswith(
        "PostgreSQL postgres@127.0.0.1:5432/spotshift_test_"
    )


def test_inline_password_of_an_older_home_is_reported(
    spotshift_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spotshift.home import dagster_home

    monkeypatch.delenv("SPOTSHIFT_DAGSTER_POSTGRES_URL", raising=False)
    dagster_home().mkdir(parents=True)
    (dagster_home() / "dagster.yaml").write_text(
        "storage:\n  postgres:\n    postgres_url: postgresql+psycopg2://u:hunter2@db.example:5432/dagster\n"
    )
    done = home_init()
    assert done.returncode == 0 and "holds the PostgreSQL password inline" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout
