"""dbt's partial-parse state survives between builds of the same warehouse (run_dbt gives each run a
private target directory), so a second build skips the full parse."""

from __future__ import annotations

from pathlib import Path

import pytest

from spotshift.costs.dbt import dbt_project_dir, partial_parse_cache, run_dbt


def test_second_run_partially_parses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPOTSHIFT_HOME", str(tmp_path / "home"))
    warehouse = tmp_path / "w.duckdb"
    cache = partial_parse_cache(dbt_project_dir(), warehouse)
    first = run_dbt(["parse"], warehouse=warehouse)
    assert "Unable to do partial parsing" in first.stdout  # nothing saved yet: a full parse
    assert cache.is_file()
    second = run_dbt(["parse"], warehouse=warehouse)
    assert "Unable to do partial parsing" not in second.stdout
    # another warehouse is another profile (dbt would re-parse): its own cache file
    assert partial_parse_cache(dbt_project_dir(), tmp_path / "other.duckdb") != cache
