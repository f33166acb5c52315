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


def _slice(p50: float, p99: float, achieved: float) -> dict:
    return {"p50_ms": p50, "p99_ms": p99, "achieved_rps": achieved, "ok": 100, "errors": 0, "cpu_s": 0.01}


def test_added_latency_is_the_median_of_same_round_differences_without_stalled_baselines() -> None:
    sys.path.insert(0, str(REPO))
    from bench.bench_router import summarise

    slices = {
        # round 2: the direct slice stalled (the generator fell behind): no baseline that round
        "direct": [
            _slice(1.0, 2.0, 200),
            _slice(2.0, 3.0, 199),
            _slice(600.0, 700.0, 120),
            _slice(1.0, 2.0, 200),
        ],
        "router": [
            _slice(1.5, 3.0, 200),
            _slice(2.4, 4.0, 199),
            _slice(3.0, 9.0, 200),
            _slice(1.7, 2.5, 200),
        ],
    }
    row = summarise(slices, 200.0)
    assert row["rounds_disturbed"] == [2]
    assert row["router_added_p50_ms_by_round"] == [0.5, 0.4, 0.7]  # same-round differences
    assert row["router_added_p50_ms"] == 0.5 and row["router_added_p99_ms"] == 1.0
    assert row["router_meets_targets"]
    slices["router"][0]["achieved_rps"] = slices["router"][1]["achieved_rps"] = 150  # the router falls behind
    assert not summarise(slices, 200.0)["router_meets_targets"]
