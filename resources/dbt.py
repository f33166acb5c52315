"""The dbt_costs project for dagster-dbt, and the ``dbt`` resource that runs it.

The manifest is prepared at load: during ``dagster dev`` by ``prepare_if_dev()`` (re-parsed on
every reload), and whenever it is missing or older than a project file (a fresh clone loaded by
``make demo``, models edited since); ``make test`` runs ``dbt parse`` first. dbt reads the warehouse path from ``SPOTSHIFT_WAREHOUSE`` (the profile in
dbt_costs/profiles.yml), the same file as the ``warehouse`` resource.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dagster_dbt import DbtCliResource, DbtProject

from spotshift.costs.dbt import dbt_executable, project_changed_since

os.environ.setdefault("DO_NOT_TRACK", "1")
# dagster-dbt looks `dbt` up on PATH (also when it prepares the manifest); `.venv/bin/dagster dev`
# and `.venv/bin/python -m pytest` run without the venv's bin directory on it
if shutil.which("dbt") is None:
    os.environ["PATH"] = os.path.dirname(dbt_executable()) + os.pathsep + os.environ.get("PATH", "")

DBT_PROJECT_DIR = Path(__file__).resolve().parents[1] / "dbt_costs"

dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)
dbt_project.prepare_if_dev()
if not dbt_project.manifest_path.exists() or project_changed_since(
    dbt_project.manifest_path.stat().st_mtime, DBT_PROJECT_DIR
):
    # a fresh clone, or models edited since the last parse: a stale manifest would name models
    # that dbt no longer builds (or miss new ones)
    dbt_project.preparer.prepare(dbt_project)


def dbt_resource() -> DbtCliResource:
    """The ``dbt`` resource bound in definitions.py."""
    return DbtCliResource(
        project_dir=dbt_project,
        profiles_dir=os.fspath(DBT_PROJECT_DIR),
        dbt_executable=dbt_executable(),
        global_config_flags=["--no-use-colors"],  # plain text in the runs' compute logs
    )
