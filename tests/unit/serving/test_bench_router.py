"""The router benchmark runs end to end (one rate, short runs); real figures: ``make bench``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_bench_router_quick_runs_and_writes_results() -> None:
    subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_router.py"), "--quick"],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=600,
    )
    result = json.loads((REPO / "bench" / "results" / "router_quick.json").read_text())
    assert result["quick"] and result["machine"]["cores"]
    row = result["rates"]["200"]
    assert {"direct", "router"} <= set(row["targets"])
    assert row["targets"]["router"]["errors"] == 0 and row["targets"]["router"]["ok"] > 0
    # interleaved: one slice per target per round, the added latency from same-round differences
    rounds = result["rounds"]
    assert all(len(v) == rounds for v in row["slices"].values())
    assert len(row["router_added_p50_ms_by_round"]) == rounds
    assert "router_added_p50_ms" in row and set(result["throughput_ceiling_rps"]) >= {"direct", "router"}
