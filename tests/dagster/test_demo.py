"""``make demo`` at small size on a fresh clone (no ../shared/data): the whole story through Dagster.

One training job on a two-or-more-provider market, placed by ``price_change_sensor``, preempted by
the injector (a provider-format notice) and recovered by ``preemption_recovery_job``, moved on price
with a passing shadow validation, one deliberately perturbed move blocked by its shadow checks and
rolled back by ``migration_failure_sensor`` -> ``rollback_job``; then the dbt cost report.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import open_instance

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_small_tells_the_whole_story(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    empty = tmp_path / "no-shared-data"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPOTSHIFT_", "DAGSTER_HOME"))}
    env.update(SPOTSHIFT_HOME=str(home), SPOTSHIFT_SHARED_DATA=str(empty), PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "--small"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "SYNTHETIC" in out and "Traceback" not in out + proc.stderr
    with open_instance(home / "dagster") as instance:
        runs = instance.get_runs()
        jobs = Counter(r.job_name for r in runs)
        failed = [r for r in runs if not r.is_success]
    # placement + price move(s) + the perturbed move; a recovery; a rollback; the cost report
    assert jobs["migration_job"] >= 3 and jobs["preemption_recovery_job"] >= 1 and jobs["rollback_job"] >= 1
    assert jobs["price_poll_job"] >= 1 and jobs["cost_report_job"] == 1
    # the only failed run is the deliberately perturbed migration (its rollback succeeded)
    assert [r.tags.get("spotshift/demo") for r in failed] == ["perturbed"]
    summary = out[out.index("== summary") :]
    lines = dict(line.split("  ", 1) for line in summary.splitlines()[1:] if "  " in line)
    assert lines["price-driven migrations (cut over)"].strip() != "0"
    assert lines["rolled back (blocked shadow validation)"].strip() == "1"
    assert lines["deadline met"].strip().startswith("yes")
    assert lines["preemption recoveries"].strip().startswith("1 of 1")
    for key in (
        "spotshift (actual)",
        "baseline: always on-demand, same work",
        "baseline: stay on the first spot region",
        "bound: first spot region never reclaimed",
    ):
        assert lines[key].strip().startswith("$"), key
    # the stay-on-first-spot baseline paid for its preemptions on the availability the demo enforced
    assert "simulated with" in lines["baseline: stay on the first spot region"]
    assert "a lower bound, not a baseline" in lines["bound: first spot region never reclaimed"]
    assert (
        lines["saving vs staying on the first spot region"].strip().startswith(("$", "none: spotshift cost"))
    )
    assert (home / "reports" / "price_history.png").is_file()
    # no trainer left behind
    from spotshift.training.backend import LocalProcessBackend

    monkeypatch.setenv("SPOTSHIFT_HOME", str(home))
    assert [t for t in LocalProcessBackend().list() if t.alive] == []


def test_demo_prices_only_on_the_real_history(tmp_path: Path, gcp_history: Path) -> None:
    """``--prices-only`` (price discovery end to end) with the real GCP history as the market."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPOTSHIFT_", "DAGSTER_HOME"))}
    env.update(SPOTSHIFT_HOME=str(home), SPOTSHIFT_PRICES=str(gcp_history), PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "--prices-only"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "real history" not in proc.stdout or "gcp_gpu_prices" in proc.stdout
    assert "A100-40GB" in proc.stdout and "quotes_fresh" in proc.stdout
    with open_instance(home / "dagster") as instance:
        assert sorted(r.job_name for r in instance.get_runs()) == ["cost_report_job", "price_poll_job"]
