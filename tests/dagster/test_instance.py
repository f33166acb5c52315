"""The embedded instance config and the resources' settings as the UI shows them."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from tests.conftest import open_instance


def test_sqlite_home_has_telemetry_and_first_visit_dialog_off(
    spotshift_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spotshift.home import dagster_home, init_home

    monkeypatch.delenv("SPOTSHIFT_DAGSTER_POSTGRES_URL", raising=False)
    init_home()
    with open_instance(dagster_home()) as instance:
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
        assert instance.nux_enabled is False and instance.telemetry_enabled is False
        assert (
            instance.run_coordinator.get_run_queue_config().tag_concurrency_limits[0]["key"]
            == "spotshift/job"
        )


def test_resources_name_their_environment_variables() -> None:
    import definitions

    resources = definitions.defs.resources
    refs = {
        ("warehouse", "database"): "SPOTSHIFT_WAREHOUSE",
        ("keys", "spec"): "SPOTSHIFT_KEY_PROVIDER",
        ("compute", "kind"): "SPOTSHIFT_COMPUTE_BACKEND",
        ("prices", "feed"): "SPOTSHIFT_PRICE_FEED",
        ("prices", "history_path"): "SPOTSHIFT_PRICES",
    }
    for (name, field), var in refs.items():
        value = getattr(resources[name], field)
        assert isinstance(value, dg.EnvVar) and value.env_var_name == var, (name, field, value)
