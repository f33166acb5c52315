"""``make demo`` on a fresh clone: no ../shared/data, so the synthetic market, through Dagster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import open_instance

REPO = Path(__file__).resolve().parents[2]


def test_demo_runs_on_the_synthetic_market(tmp_path: Path) -> None:
    home = tmp_path / "home"
    empty = tmp_path / "no-shared-data"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPOTSHIFT_", "DAGSTER_HOME"))}
    env.update(SPOTSHIFT_HOME=str(home), SPOTSHIFT_SHARED_DATA=str(empty), PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "SYNTHETIC" in out and "success; materialized gpu_quotes, raw_price_quotes" in out
    for model in ("A100-40GB", "H100-80GB", "L4-24GB", "T4-16GB"):
        assert model in out
    with open_instance(home / "dagster") as instance:
        runs = instance.get_runs()
    assert sorted(r.job_name for r in runs) == ["cost_report_job", "price_poll_job"]
    assert all(r.is_success for r in runs)
    # the demo ends with the cost report, built by dbt through Dagster
    assert "spotshift cost report" in out and "FOCUS 1.2:" in out
    assert (home / "reports" / "price_history.png").is_file()
