"""The stay-on-first-spot baseline pays for its own preemptions, the way the simulator's policy does."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from spotshift.costs.baselines import TABLE, first_spot_placements, record_baselines
from spotshift.simulate.traces import AvailabilityTrace, save_availability
from spotshift.warehouse import connect
from tests.fixtures_costs import write_facts
from tests.unit.costs.conftest import HAND_JOB, HAND_OUTAGE, _t, hand_facts

OUTAGE = HAND_OUTAGE


def _warehouse(tmp_path: Path) -> Path:
    path = tmp_path / "warehouse.duckdb"
    with connect(path) as con:
        write_facts(con, hand_facts())
    return path


def _rows(path: Path) -> list[tuple]:
    with connect(path, read_only=True) as con:
        return con.execute(
            f"SELECT job, location, preemptions, compute_usd, bound_compute_usd, preemption_factor, availability "
            f"FROM {TABLE} ORDER BY job"
        ).fetchall()


def test_first_spot_placement_is_the_jobs_first_spot_interval(spotshift_home: Path, tmp_path: Path) -> None:
    with connect(_warehouse(tmp_path)) as con:
        (fs,) = first_spot_placements(con)
    assert (fs.job, fs.location, fs.instance_type) == (HAND_JOB, "gcp/tiny-1", "tiny.8gpu")
    assert fs.started_at.replace(tzinfo=None) == _t("04:00") and fs.billed_hours == pytest.approx(4.0)


def test_stay_first_spot_pays_for_its_preemptions(spotshift_home: Path, tmp_path: Path) -> None:
    """By hand (undeclared job: 4 h of work, 15-min changeover, checkpoints every 15 min): 1 h at $8
    (changeover + 45 min of work), preempted at 05:00, capacity back at 06:00 at $16: changeover +
    3 h 15 min of work = 3.5 h at $16 -> $64. Never preempted: 2 h at $8 + 2.25 h at $16 = $52."""
    save_availability({"gcp/tiny-1": OUTAGE}, datetime(2024, 5, 1, 4, 0))
    path = _warehouse(tmp_path)
    with connect(path) as con:
        assert record_baselines(con, now=datetime(2024, 5, 2)) == 1
    ((job, loc, preemptions, usd, bound, factor, availability),) = _rows(path)
    assert (job, loc, preemptions) == (HAND_JOB, "gcp/tiny-1", 1)
    assert usd == pytest.approx(64.0) and bound == pytest.approx(52.0)
    assert factor == pytest.approx(64.0 / 52.0)
    assert availability == "trace gcp_tiny-1.json from 2024-05-01 04:00 UTC"
    with connect(path) as con:  # unchanged inputs: nothing new
        assert record_baselines(con, now=datetime(2024, 5, 3)) == 0
    assert len(_rows(path)) == 1


def test_always_available_location_costs_the_bound(spotshift_home: Path, tmp_path: Path) -> None:
    save_availability({"gcp/tiny-1": AvailabilityTrace(600, (1,) * 10)}, datetime(2024, 5, 1))
    path = _warehouse(tmp_path)
    with connect(path) as con:
        record_baselines(con, now=datetime(2024, 5, 2))
    ((_, _, preemptions, usd, bound, factor, _),) = _rows(path)
    assert preemptions == 0 and usd == pytest.approx(bound) and factor == pytest.approx(1.0)


def test_no_trace_no_invented_baseline(spotshift_home: Path, tmp_path: Path) -> None:
    save_availability({"aws/elsewhere-1": OUTAGE}, datetime(2024, 5, 1))  # not the job's location
    path = _warehouse(tmp_path)
    with connect(path) as con:
        assert record_baselines(con, now=datetime(2024, 5, 2)) == 0
    assert _rows(path) == []


def test_enforced_availability_round_trips_with_its_start(spotshift_home: Path) -> None:
    """The demo keeps what its injector enforced: losses after the notice cap are not the job's world."""
    from spotshift.simulate.traces import available_from, load_availability

    start = datetime(2024, 5, 1, 4, 0)
    capped = available_from(OUTAGE, 1.5)  # deliveries stopped 90 minutes in: the outage ends there
    assert capped.data[:9] == OUTAGE.data[:9] and set(capped.data[9:]) == {1}
    save_availability({"gcp/tiny-1": capped}, start)
    trace, at, path = load_availability("gcp/tiny-1")  # type: ignore[misc]
    assert trace.data == capped.data and at.replace(tzinfo=None) == start and path.name == "gcp_tiny-1.json"
    assert load_availability("aws/nowhere-1") is None
