"""dbt_costs/models/sources.yml documents exactly the raw tables spotshift.warehouse defines."""

from __future__ import annotations

import yaml

from spotshift.costs.dbt import dbt_project_dir
from spotshift.warehouse_schema import RAW_TABLES


def _source() -> dict:
    doc = yaml.safe_load((dbt_project_dir() / "models" / "sources.yml").read_text())
    (source,) = [s for s in doc["sources"] if s["name"] == "spotshift"]
    return source


def test_sources_yml_columns_equal_raw_tables() -> None:
    source = _source()
    assert source["schema"] == "raw"
    tables = {t["name"]: t for t in source["tables"]}
    assert list(tables) == list(RAW_TABLES)
    for name, columns in RAW_TABLES.items():
        documented = [(c["name"], c["data_type"], c["description"]) for c in tables[name]["columns"]]
        defined = [(c.name, c.type.lower(), c.description) for c in columns]
        assert documented == defined, f"sources.yml table {name} differs from RAW_TABLES"


def test_every_raw_table_names_its_writers_or_is_external() -> None:
    writers = {t["name"]: t["config"]["meta"]["dagster_writers"] for t in _source()["tables"]}
    assert writers["transfers"] == ["dataset_replicas", "checkpoint_replicas"]
    assert writers["price_quotes"] == ["raw_price_quotes"]
    # inference serving is reported by the serving stack, not by an asset of this code location
    assert writers["inference_usage"] == []
    assert all(isinstance(w, list) for w in writers.values())


def test_build_state_model_counts_every_raw_table() -> None:
    sql = (dbt_project_dir() / "models" / "marts" / "mart_build_state.sql").read_text()
    for table in RAW_TABLES:
        assert f"'{table}'" in sql
