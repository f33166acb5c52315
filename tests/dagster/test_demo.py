"""``make demo`` at small size on a fresh clone (no ../shared/data): the whole story through Dagster.

One training job on a two-or-more-provider market, placed by ``price_change_sensor``, preempted by
the injector (a provider-format notice) and recovered by ``preemption_recovery_job``, one
deliberately perturbed move blocked by its shadow checks and rolled back by
``migration_failure_sensor`` -> ``rollback_job``; then the dbt cost report. The summary must be the
recorded one (``demo_small_summary.txt``), whatever the machine's load: runs on other machines, under
other loads, at other times agree with this one (one demo per test run: the suite's time budget).
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import psutil
import pytest

from spotshift.clock import as_utc, parse_utc
from tests.conftest import open_instance

SENSORS = ["preemption_sensor", "price_change_sensor", "migration_failure_sensor"]

REPO = Path(__file__).resolve().parents[2]
LEAK_GRACE_S = 20
#: the summary every ``--small`` demo prints (virtual time advances by events, not wall seconds)
RECORDED_SUMMARY = Path(__file__).with_name("demo_small_summary.txt")


def run_demos(tmp_path: Path, names: list[str]) -> list[tuple[Path, str]]:
    """``scripts/demo.py --small`` in fresh homes, all at once (each loads the machine for the
    others); returns each home and the demo's output. Fails on a demo that failed or left a process
    running."""
    empty = tmp_path / "no-shared-data"
    empty.mkdir(exist_ok=True)
    procs = []
    for name in names:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SPOTSHIFT_", "DAGSTER_HOME"))}
        env.update(
            SPOTSHIFT_HOME=str(tmp_path / name), SPOTSHIFT_SHARED_DATA=str(empty), PYTHONPATH=str(REPO)
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(REPO / "scripts" / "demo.py"), "--small"],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    for name, proc in zip(names, procs, strict=True):
        out, err = proc.communicate(timeout=2400)
        # a process the demo ended may still be exiting (multiprocessing's resource tracker reads to
        # the end of its pipe, then cleans up): only one still alive after a grace period is a leak
        _, left = psutil.wait_procs(processes_of(tmp_path / name), timeout=LEAK_GRACE_S)
        for p in left:  # stopped here so a leak fails this test, not the machine's next hours
            with contextlib.suppress(psutil.Error):
                p.kill()
        assert proc.returncode == 0, out[-3000:] + err[-3000:]
        assert "SYNTHETIC" in out and "Traceback" not in out + err
        assert not left, f"the demo left processes running: {[p.info['cmdline'] for p in left]}"
        results.append((tmp_path / name, out))
    return results


def processes_of(home: Path) -> list[psutil.Process]:
    """Live processes started for the demo home ``home`` (its SPOTSHIFT_HOME in their environment)."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if p.environ().get("SPOTSHIFT_HOME") == str(home) and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
    return out


def summary_of(out: str) -> str:
    """The closing summary table (everything from ``== summary`` to the timing line)."""
    return out[out.index("== summary") : out.index("\ndemo took")].strip()


def assert_recorded_summary(summary: str, tmp_path: Path) -> None:
    """``summary`` is :data:`RECORDED_SUMMARY`; on a difference the message shows it line by line
    and where this run's summary is, to copy over the recorded one when the change is intended."""
    recorded = RECORDED_SUMMARY.read_text().strip()
    if summary != recorded:
        actual = tmp_path / RECORDED_SUMMARY.name
        actual.write_text(summary + "\n")
        diff = "\n".join(
            difflib.unified_diff(
                recorded.splitlines(), summary.splitlines(), "recorded", "this run", lineterm=""
            )
        )
        pytest.fail(
            f"the demo's summary differs from {RECORDED_SUMMARY.name} (nondeterminism, or an intended "
            f"change: then copy {actual} over it):\n{diff}"
        )


@pytest.mark.slow
@pytest.mark.timeout(2700)
def test_demo_small_tells_the_recorded_whole_story(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's summary is the recorded one, to the cent (virtual time advances by events, not wall
    seconds); every fact is on the demo's virtual clock, which is stopped afterwards; every run has the
    code location's origin and the sensors' ticks are recorded, so ``make ui`` shows them."""
    import dagster as dg
    from dagster._core.scheduler.instigation import InstigatorType

    ((home, out),) = run_demos(tmp_path, ["a"])
    assert_recorded_summary(summary_of(out), tmp_path)

    with open_instance(home / "dagster") as instance:
        runs = instance.get_runs()
        jobs = Counter(r.job_name for r in runs)
        failed = [r for r in runs if not r.is_success]
        origins = {
            (r.remote_job_origin.location_name, r.remote_job_origin.job_name)
            for r in runs
            if r.remote_job_origin
        }
        by_sensor = Counter(r.tags.get("dagster/sensor_name") for r in runs)
        states = {
            s.instigator_name: s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
        }
        ticks = {
            name: instance.get_ticks(states[name].instigator_origin_id, states[name].selector_id)
            for name in SENSORS
            if name in states
        }
        placement_plans = instance.fetch_materializations(dg.AssetKey("placement_plan"), limit=10).records
    # placement + the perturbed move (+ price moves); a recovery; a rollback; polls; the cost report
    assert jobs["migration_job"] >= 2 and jobs["preemption_recovery_job"] >= 1 and jobs["rollback_job"] >= 1
    assert jobs["price_poll_job"] >= 1 and jobs["cost_report_job"] == 1
    # the only failed run is the deliberately perturbed migration (its rollback succeeded)
    assert [r.tags.get("spotshift/demo") for r in failed] == ["perturbed"]
    # every run was launched through the code location make ui loads, under its own job
    assert all(r.remote_job_origin is not None for r in runs)
    assert origins == {("spotshift", r.job_name) for r in runs}
    # the sensors' runs carry their sensor (not "manually launched"); ticks and cursors are recorded
    assert by_sensor["price_change_sensor"] >= 1 and by_sensor["preemption_sensor"] >= 1
    assert by_sensor["migration_failure_sensor"] == 1
    assert sorted(ticks) == sorted(SENSORS) and all(states[n].is_running for n in SENSORS)
    assert all(len(ticks[n]) >= 2 for n in SENSORS)
    assert any(t.cursor for t in ticks["price_change_sensor"]) and any(
        t.run_ids for t in ticks["preemption_sensor"]
    )
    assert placement_plans, "placement_plan was never materialized"

    lines = dict(line.split("  ", 1) for line in summary_of(out).splitlines()[1:] if "  " in line)
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
    # the inference act: three regions, a spot replica preempted mid-load with no failed request, the
    # 0.6 rule deciding spot or not per region, cost per million tokens from served traffic
    assert lines["inference: failed requests"].strip().startswith("0 of ")
    assert "no replica" not in lines["inference: failed requests"]
    assert lines["inference: replicas"].count("aws/") == 3 and "(spot)" in lines["inference: replicas"]
    assert re.search(r"inference cost per million tokens \(.*\): \$[\d,.]+\n", out)
    assert "drained and deregistered: True" in out
    # the cutover act under load: a target serving an early checkpoint caught in the shadow phase and
    # rolled back automatically, a good one promoted to 100 %; no failed request; replicas within the cap
    assert (
        lines["cutover 1: early checkpoint"].strip().startswith("rolled_back at shadow-50 (output_agreement)")
    )
    assert lines["cutover 2: the job's model"].strip().startswith("promoted at live-100")
    assert lines["cutover: failed requests"].strip() == "0"
    peak, cap = re.fullmatch(
        r"(\d+) \(steady 2, cap (\d+)\)", lines["cutover: replicas at most"].strip()
    ).groups()  # type: ignore[union-attr]
    assert int(peak) <= int(cap) == 3
    assert re.search(r"load through both: (\d+) requests from 3 user regions, \1 ok, 0 failed", out)
    rules = [line for line in out.splitlines() if line.strip().startswith("0.6 rule")]
    assert len(rules) == 3 and all("0.6 x reserved" in r for r in rules)
    assert (home / "reports" / "price_history.png").is_file()

    # one clock: every transfer inside the demo's virtual window, one FOCUS billing period, clock stopped
    start = parse_utc(re.search(r"job starts (\S+ \S+) UTC", out).group(1))  # type: ignore[union-attr]
    finished = parse_utc(re.search(r"finished (\S+ \S+),", out).group(1))  # type: ignore[union-attr]
    monkeypatch.setenv("SPOTSHIFT_HOME", str(home))
    monkeypatch.delenv("SPOTSHIFT_WAREHOUSE", raising=False)
    from spotshift.clock import load_clock
    from spotshift.costs.focus_export import export_focus
    from spotshift.warehouse import connect

    with connect(read_only=True) as con:
        first, last, n = con.execute(
            "SELECT min(started_at), max(started_at), count(*) FROM raw.transfers"
        ).fetchone()
    assert n > 0 and start <= as_utc(first) and as_utc(last) <= finished
    export = export_focus(tmp_path / "focus.csv")
    with open(export.path, newline="") as f:
        periods = {row["BillingPeriodStart"] for row in csv.DictReader(f)}
    assert export.rows > 0 and len(periods) == 1
    clock = load_clock()
    assert clock.speed == 0.0 and not clock.stepped and not clock.pace_trainers
    assert start < clock.now() and load_clock().now() == clock.now()
    # no trainer left behind
    from spotshift.training.backend import LocalProcessBackend

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
