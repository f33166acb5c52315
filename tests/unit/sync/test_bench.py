"""The sync benchmark runs end to end (tiny sizes); the real figures come from ``make bench``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_bench_sync_quick_runs_and_writes_results(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_sync.py"), "--quick"],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=300,
    )
    result = json.loads((REPO / "bench" / "results" / "sync_quick.json").read_text())
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
    subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_first_push.py"), "--quick"],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=300,
    )
    result = json.loads((REPO / "bench" / "results" / "first_push_quick.json").read_text())
    tools = {row["tool"] for row in result["tools"]}
    assert {"cp+sync", "rsync+sync", "spotshift default", "spotshift 64 KiB"} <= tools
    assert result["chunks"]["spotshift 64 KiB"] > result["chunks"]["spotshift default"]
    objects = result["store_objects_64k"]
    assert 0 < objects["packed"] < objects["loose"]
