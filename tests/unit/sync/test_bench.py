"""The sync benchmark runs end to end (tiny sizes); the real figures come from ``make bench``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def run_quick(name: str) -> dict:  # type: ignore[type-arg]
    """Run ``bench/bench_<name>.py --quick``; its results."""
    cmd = [sys.executable, str(REPO / "bench" / f"bench_{name}.py"), "--quick"]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=300)
    return json.loads((REPO / "bench" / "results" / f"{name}_quick.json").read_text())


@pytest.mark.slow
def test_bench_sync_quick_runs_and_writes_results(tmp_path: Path) -> None:
    result = run_quick("sync")
    assert result["quick"] and result["machine"]["cores"]
    assert result["fingerprint"]["cache_unchanged_rerun_s"] > 0
    tools = result["delta"]["tools"]
    if "rsync" in tools:
        assert tools["rsync"]["after_edits"]["bytes_sent"] > 0
    assert all(
        tools[k]["after_edits"]["within_bound"] for k in ("spotshift_64k_256k_1m", "spotshift_default")
    )
    assert result["push_rss"]["peak_rss_mib"] > 0


@pytest.mark.slow
def test_bench_first_push_quick_runs_and_writes_results() -> None:
    import shutil

    if not shutil.which("rsync"):
        pytest.skip("rsync (the anchor) is not installed")
    result = run_quick("first_push")
    tools = {row["tool"] for row in result["tools"]}
    assert {"cp+sync", "rsync+sync", "spotshift default", "spotshift 64 KiB"} <= tools
    assert result["chunks"]["spotshift 64 KiB"] > result["chunks"]["spotshift default"]
    objects = result["store_objects_64k"]
    assert 0 < objects["packed"] < objects["loose"]
