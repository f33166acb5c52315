"""The cutover benchmark runs end to end (a shorter shadow list); real figures: ``make bench``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_bench_cutover_quick_runs_and_writes_results() -> None:
    subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_cutover.py"), "--quick"],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=600,
    )
    result = json.loads((REPO / "bench" / "results" / "cutover_quick.json").read_text())
    assert result["quick"] and result["machine"]["cores"]
    assert result["load"]["non_2xx"] == 0 and result["load"]["requests"] > 0
    assert result["promotion"]["promoted"] and result["promotion"]["stages"][-1] == "live-100"
    assert result["rollback"]["phase"] == "rolled_back"
    assert result["peak_over_steady"] > 0  # the 1.25 goal is judged by the full benchmark, not this smoke run
