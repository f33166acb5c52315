"""The preemption drill runs end to end (short load): notices to half of the spot replicas fail no
request and the noticed replicas drain and deregister; real figures: ``make bench``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_bench_preemption_drill_quick_fails_no_request() -> None:
    subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_preemption_drill.py"), "--quick"],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=900,
    )
    result = json.loads((REPO / "bench" / "results" / "preemption_drill_quick.json").read_text())
    assert result["quick"] and result["machine"]["cores"]
    drill = result["drill"]
    assert drill["requests"] > 0 and drill["errors"] == 0 and drill["ok"] == drill["requests"]
    assert result["noticed_replicas_deregistered"] == sorted(result["noticed"])
    assert set(result["replicas_left"]).isdisjoint(result["noticed"])
