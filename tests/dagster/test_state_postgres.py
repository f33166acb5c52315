"""Shared state in PostgreSQL (issue 17 item 4): placement state lives in the instance's database.

When ``spotshift home init --postgres URL`` put the Dagster instance on PostgreSQL, the placement
state of every job is a row of ``spotshift_state`` in that database instead of a file, behind the
same functions (:mod:`spotshift.placement.state`):

* 8 processes x 25 concurrent read-modify-writes of one job's state lose no update (the version
  counts every one) and no state file is written;
* a change that raises rolls back: nothing of it is stored;
* ``jobs remove`` drops the row; a SQLite home keeps the file implementation.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from spotshift.cli import main
from spotshift.placement import state

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2025, 3, 1, tzinfo=UTC)

_BUMPER = """
import sys
from datetime import UTC, datetime
from spotshift.placement import state
for i in range(int(sys.argv[1])):
    def mutate(st):
        moves = dict(st.unfit)
        moves[f"gcp/us-east1"] = "2030-01-01T00:00:00+00:00"
        st.unfit = moves
        st.unfit_reasons = {**st.unfit_reasons, "gcp/us-east1": f"n={int(st.unfit_reasons.get('gcp/us-east1', 'n=0')[2:]) + 1}"}
    state.update_state("llm-ft", mutate, now=datetime(2025, 3, 1, tzinfo=UTC))
"""


@pytest.mark.services
def test_placement_state_in_postgres_loses_no_concurrent_update(
    spotshift_home: Path,
    scratch_database: str,  # noqa: F811
) -> None:
    assert main(["home", "init", "--postgres", scratch_database]) == 0
    assert state.shared_store() is not None
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", _BUMPER, "25"], env=env) for _ in range(8)]
    assert [p.wait(timeout=600) for p in procs] == [0] * 8
    st = state.load_state("llm-ft")
    assert st.version == 200
    assert st.unfit_reasons["gcp/us-east1"] == "n=200"  # every read-modify-write saw the previous one
    assert not state.state_dir().exists() or not list(state.state_dir().glob("*.json"))
    # a change that raises is rolled back
    with pytest.raises(RuntimeError):

        def boom(s: state.PlacementState) -> None:
            s.status = "running"
            raise RuntimeError("half-way")

        state.update_state("llm-ft", boom, now=NOW)
    assert state.load_state("llm-ft").version == 200
    st = state.record_placement(
        "other", location="aws/us-east-1", market="spot", instance_type="p4d", now=NOW
    )
    assert [s.job for s in state.list_states()] == ["llm-ft", "other"] and st.version == 1
    # many jobs' states in one query (a sensor tick over thousands of jobs), unplaced when absent
    many = state.load_states(["other", "none-yet", "llm-ft"])
    assert list(many) == ["other", "none-yet", "llm-ft"]
    assert many["other"] == st and many["llm-ft"] == state.load_state("llm-ft")
    assert many["none-yet"] == state.PlacementState("none-yet")
    assert state.delete_state("other") and state.load_state("other").status == "unplaced"


def test_a_sqlite_home_keeps_state_in_files(spotshift_home: Path) -> None:
    assert main(["home", "init"]) == 0
    assert state.shared_store() is None
    state.record_placement("llm-ft", location="aws/us-east-1", market="spot", instance_type="p4d", now=NOW)
    assert state.state_path("llm-ft").is_file()
    many = state.load_states(["none-yet", "llm-ft"])
    assert many == {"none-yet": state.PlacementState("none-yet"), "llm-ft": state.load_state("llm-ft")}
