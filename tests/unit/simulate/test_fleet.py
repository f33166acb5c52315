"""The fleet simulator: the batched run decides exactly as calling decide() for every job at every
tick, meets every deadline, and refuses bad input."""

from __future__ import annotations

import pytest

from spotshift.errors import ConfigError
from spotshift.simulate.fleet import FleetJob, generate_fleet, simulate_fleet
from tests.unit.simulate.test_simulate import small_market


def market(seed: int, hours: float = 240.0):  # noqa: ANN201
    return small_market(seed, hours)


@pytest.mark.parametrize("seed", [0, 1])
def test_batched_fleet_decides_exactly_like_deciding_every_tick(seed: int) -> None:
    m = market(seed)
    jobs = generate_fleet(m, 12, seed=seed, work_hours=(10.0, 80.0), slack=(1.1, 2.0))
    batched = simulate_fleet(m, jobs)
    reference = simulate_fleet(m, jobs, screen=False)
    assert batched.per_job == reference.per_job
    assert batched.cost_usd == pytest.approx(reference.cost_usd)
    assert reference.decide_calls == reference.job_ticks
    # the screen is what makes it fast: most job-ticks need no decide() call
    assert batched.decide_calls + batched.screened_stays == batched.job_ticks
    assert batched.decide_calls < 0.4 * reference.decide_calls
    assert batched.deadlines_met == len(jobs)
    assert batched.preemptions > 0 and batched.moves > 0


def test_bad_fleets_are_refused() -> None:
    m = market(0, hours=48.0)
    with pytest.raises(ConfigError, match="fleet size"):
        generate_fleet(m, 0)
    with pytest.raises(ConfigError, match="too short"):
        generate_fleet(m, 3, work_hours=(100.0, 200.0))
    job = generate_fleet(m, 1, work_hours=(5.0, 6.0))[0]
    with pytest.raises(ConfigError, match="not in the market"):
        simulate_fleet(m, [FleetJob(job.name, job.scenario, "gcp/mars-1", 0)])


def test_simulate_fleet_command(tmp_path, capsys) -> None:  # noqa: ANN001
    import json

    from spotshift.cli import main
    from tests.unit.simulate.test_simulate import write

    prices, _ = write(
        tmp_path,
        [
            "2024-01-01T00:00:00+00:00,x-8g,a100,8,us-central1,10,3",
            "2024-01-01T00:00:00+00:00,x-8g,a100,8,us-east1,12,2.5",
        ],
        {},
    )
    args = ["simulate-fleet", "--prices", str(prices), "--start", "2024-01-01", "--days", "12", "--jobs", "6"]
    assert main([*args, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (
        doc["jobs"] == 6 and doc["deadlines_met"] == 6 and doc["locations"] == 2 and doc["ticks"] == 12 * 144
    )
    assert doc["decide_calls"] + doc["screened_stays"] == doc["job_ticks"] and doc["cost_usd"] > 0
    assert main(args) == 0
    assert "deadlines met 6/6" in capsys.readouterr().out
    for extra, message in (
        (["--jobs", "0"], "--jobs"),
        (["--days", "-1"], "--days"),
        (["--instance", "nope"], "nope"),
    ):
        assert main([*args, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
