"""The inference-simulator benchmark runs end to end (a one-day window); real figures: ``make bench``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_bench_inference_sim_quick_runs_and_writes_results() -> None:
    subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_inference_sim.py"), "--quick"],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=600,
    )
    result = json.loads((REPO / "bench" / "results" / "inference_sim_quick.json").read_text())
    assert result["quick"] and result["machine"]["cores"]
    (sc,) = result["scenarios"]
    assert set(sc["policies"]) >= {"on_demand", "reserved", "spot_greedy", "spotshift", "spothedge_extra1"}
    assert sc["policies"]["on_demand"]["saving_vs_on_demand"] == 0.0
    assert sc["window"] == "tuned" and len(sc["load_avg"]["before"]) == 3
    assert set(result["targets_met_by_window"]) == {"tuned"}
    assert set(result["targets_met"]) == {
        "saving_ge_50pct",
        "slo_ge_99_9pct",
        "cheaper_than_spothedge_extra1_at_equal_or_better_slo",
        "cheaper_than_slo_matched_spothedge",
    }
