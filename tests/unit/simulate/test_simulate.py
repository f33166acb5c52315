"""The policy simulator: hand-computed costs on two-region markets, the deadline guarantee, bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from spotshift.cli import main
from spotshift.errors import ConfigError
from spotshift.simulate.engine import Scenario, simulate
from spotshift.simulate.market import build_market
from spotshift.simulate.traces import generate_traces

HEADER = "observed_at,instance_type,gpu_model,gpu_count,region,ondemand_hour,spot_hour\n"
# instant copies and start-ups, hourly checkpoints and ticks: every cost below is a sum of prices
EXACT = [
    "--changeover-hours", "0", "--transfer-gbps", "inf", "--checkpoint-interval-hours", "1",
    "--data-gb", "100", "--checkpoint-gb", "10", "--start", "2024-01-01",
]  # fmt: skip


def write(tmp_path: Path, rows: list[str], traces: dict[str, list[int]]) -> tuple[Path, Path]:
    prices = tmp_path / "prices.csv"
    prices.write_text(HEADER + "".join(r + "\n" for r in rows))
    tdir = tmp_path / "traces"
    tdir.mkdir()
    for name, data in traces.items():
        (tdir / f"{name}.json").write_text(json.dumps({"metadata": {"gap_seconds": 3600}, "data": data}))
    return prices, tdir


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["simulate", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)["policies"]


def test_preemption_market_costs_equal_hand_computed_values(tmp_path: Path, capsys) -> None:
    # us-central1 (data home): spot 2, on-demand 10, preempted in hours 2-3 and 6-7
    # us-east1: spot 3, on-demand 12, preempted in hours 4-5; 8 h of work due in 16 h
    prices, tdir = write(
        tmp_path,
        [
            "2024-01-01T00:00:00+00:00,x-8g,a100,8,us-central1,10,2",
            "2024-01-01T00:00:00+00:00,x-8g,a100,8,us-east1,12,3",
        ],
        {"a": [1, 1, 0, 0, 1, 1, 0, 0] + [1] * 8, "b": [1, 1, 1, 1, 0, 0] + [1] * 10},
    )
    pol = run_json(
        capsys,
        "--prices", str(prices), "--traces", str(tdir), "--trace-map", "us-central1=a.json,us-east1=b.json",
        "--work-hours", "8", "--deadline-hours", "16", "--policies",
        "on_demand,stay_first_spot,greedy_full,greedy_delta,uniform_progress,hindsight", *EXACT,
    )  # fmt: skip
    # always on-demand: us-central1 (10 x 8 = 80) beats us-east1 (12 x 8 + 100 GB x 0.02 = 98)
    assert (pol["on_demand"]["cost_usd"], pol["on_demand"]["finish_hours"]) == (80.0, 8.0)
    # stay: runs 0-1, waits 2-3, runs 4-5, waits 6-7, runs 8-11: 8 h x 2 = 16, two preemptions
    s = pol["stay_first_spot"]
    assert (s["cost_usd"], s["preemptions"], s["finish_hours"], s["moves"]) == (16.0, 2, 12.0, 0)
    assert s["saving_vs_on_demand"] == pytest.approx(0.8)
    # greedy: central 0-1 (4), east 2-3 (6), central 4-5 (4), east 6-7 (6) = 20 compute;
    # full copies: 110 GB -> east (2.20), 10 GB checkpoint -> central (0.20), 110 GB -> east again (2.20)
    g = pol["greedy_full"]
    assert (g["cost_usd"], g["egress_usd"], g["gb_moved"], g["moves"], g["preemptions"]) == (
        24.6,
        4.6,
        230.0,
        3,
        3,
    )
    # delta sync: east keeps its dataset replica, the second visit only receives the checkpoint
    d = pol["greedy_delta"]
    assert (d["cost_usd"], d["egress_usd"], d["gb_moved"], d["moves"]) == (22.6, 2.6, 130.0, 3)
    assert g["deadline_met"] and d["deadline_met"] and g["finish_hours"] == 8.0
    # uniform progress waits out both outages (ahead of the 8/16 line each time): like stay
    assert pol["uniform_progress"]["cost_usd"] == 16.0
    # hindsight: the 8 cheapest available hours before the deadline are all central spot at 2
    h = pol["hindsight"]
    assert (h["cost_usd"], h["finish_hours"], h["gb_moved"], h["lower_bound"]) == (16.0, 12.0, 0.0, True)


def test_price_driven_move_costs_equal_hand_computed_values(tmp_path: Path, capsys) -> None:
    # no preemptions; us-east1 spot starts at 2 (below us-central1's 3) and rises to 5 at hour 2
    prices, tdir = write(
        tmp_path,
        [
            "2024-01-01T00:00:00+00:00,x-8g,a100,8,us-central1,10,3",
            "2024-01-01T00:00:00+00:00,x-8g,a100,8,us-east1,12,2",
            "2024-01-01T02:00:00+00:00,x-8g,a100,8,us-east1,12,5",
        ],
        {"a": [1] * 16, "b": [1] * 16},
    )
    pol = run_json(
        capsys,
        "--prices", str(prices), "--traces", str(tdir), "--trace-map", "us-central1=a.json,us-east1=b.json",
        "--work-hours", "8", "--deadline-hours", "16", "--data-location", "us-central1", *EXACT,
    )  # fmt: skip
    # spotshift: placed in us-east1 (100 GB copy at 0.02 = 2.00), 2 h at 2; at hour 2 moving back pays
    # (saves (5-3) x 6 h = 12 > 0.20 checkpoint egress - 1.6 lower risk + 1 margin): 6 h at 3 + 0.20
    ss = pol["spotshift"]
    assert (ss["cost_usd"], ss["egress_usd"], ss["gb_moved"], ss["moves"], ss["finish_hours"]) == (
        24.2,
        2.2,
        110.0,
        1,
        8.0,
    )
    # greedy never moves without a preemption: 2 h at 2 + 6 h at 5 + the 100 GB copy
    assert pol["greedy_full"]["cost_usd"] == 36.0 and pol["greedy_delta"]["cost_usd"] == 36.0
    assert pol["stay_first_spot"]["cost_usd"] == 24.0 and pol["uniform_progress"]["cost_usd"] == 24.0
    assert pol["on_demand"]["cost_usd"] == 80.0
    assert pol["hindsight"]["cost_usd"] == 22.0 and pol["hindsight"]["moves"] == 1


def small_history(seed: int) -> pl.DataFrame:
    import random

    rng = random.Random(seed)
    rows = []
    for week in range(3):
        for region in ("us-central1", "us-east1", "europe-west4"):
            od = rng.uniform(20, 32)
            rows.append(
                {
                    "observed_at": datetime(2024, 1, 1 + 7 * week, tzinfo=UTC),
                    "provider": "gcp",
                    "region": region,
                    "zone": "",
                    "instance_type": "x-8g",
                    "gpu_model": "a100",
                    "gpu_count": 8,
                    "ondemand_hour": od,
                    "spot_hour": od * rng.uniform(0.25, 0.45),
                    "source": "test",
                }
            )
    return pl.DataFrame(rows)


SMALL_LOCS = ["gcp/europe-west4", "gcp/us-central1", "gcp/us-east1"]


def small_market(seed: int, hours: float):  # noqa: ANN201
    """Three regions of :func:`small_history` on 10-minute ticks with generated traces for ``seed``."""
    return build_market(
        small_history(seed),
        "x-8g",
        start=datetime(2024, 1, 2, tzinfo=UTC),
        hours=hours,
        gap_seconds=600,
        traces=generate_traces(SMALL_LOCS, hours, seed=seed),
    )


@pytest.mark.parametrize("seed", range(8))
def test_spotshift_never_misses_a_deadline_on_demand_meets(seed: int) -> None:
    import random

    rng = random.Random(1000 + seed)
    work = rng.uniform(10, 30)
    sc = Scenario(
        work_hours=work,
        deadline_hours=work * rng.uniform(1.02, 1.6),
        data_gb=rng.choice([50.0, 500.0, 2000.0]),
        ckpt_gb=rng.choice([5.0, 50.0]),
        changeover_hours=rng.choice([0.0, 0.25]),
    )
    m = small_market(seed, sc.deadline_hours + sc.work_hours + 24)
    res = simulate(m, sc)
    assert res["on_demand"].deadline_met
    for name in ("spotshift", "stay_first_spot", "greedy_full", "greedy_delta", "uniform_progress"):
        assert res[name].deadline_met, (name, res[name].to_dict(), sc)
    assert res["hindsight"].cost_usd <= min(r.cost_usd for r in res.values()) + 1e-6


def test_deterministic_per_seed(tmp_path: Path, capsys) -> None:
    prices, _ = write(
        tmp_path,
        [
            "2024-01-01T00:00:00+00:00,x-8g,a100,8,us-central1,10,3",
            "2024-01-01T00:00:00+00:00,x-8g,a100,8,us-east1,12,2.5",
        ],
        {},
    )
    args = ["--prices", str(prices), "--work-hours", "30", "--deadline-hours", "50", "--start", "2024-01-01"]
    a = run_json(capsys, *args, "--seed", "5")
    assert a == run_json(capsys, *args, "--seed", "5")
    assert a != run_json(capsys, *args, "--seed", "6")
    assert set(a) == {
        "on_demand", "stay_first_spot", "greedy_full", "greedy_delta", "uniform_progress", "spotshift", "hindsight",
        "optimum",
    }  # fmt: skip
    for r in a.values():
        assert {"cost_usd", "saving_vs_on_demand", "deadline_met", "moves", "gb_moved", "egress_usd"} <= set(
            r
        )


def test_table_output(tmp_path: Path, capsys) -> None:
    prices, _ = write(tmp_path, ["2024-01-01T00:00:00+00:00,x-8g,a100,8,us-central1,10,3"], {})
    assert main(["simulate", "--prices", str(prices), "--work-hours", "5", "--deadline-hours", "9"]) == 0
    out = capsys.readouterr().out
    assert "always on-demand" in out and "spotshift economics" in out and "hindsight lower bound *" in out


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["2024-01-01T00:00:00+00:00,x-8g,a100,8,us-central1,ten,3"], "line 2: ondemand_hour 'ten'"),
        (["not-a-date,x-8g,a100,8,us-central1,10,3"], "observed_at 'not-a-date'"),
        (["2024-01-01T00:00:00+00:00,x-8g,a100,0,us-central1,10,3"], "gpu_count '0'"),
        (["2024-01-01T00:00:00+00:00,x-8g,a100,8,us-central1,10,-3"], "spot_hour '-3'"),
    ],
)
def test_malformed_csv_rows_exit_2_with_one_line(tmp_path: Path, capsys, rows, message) -> None:
    prices, _ = write(tmp_path, rows, {})
    assert main(["simulate", "--prices", str(prices)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_malformed_traces_and_flags_exit_2(tmp_path: Path, capsys) -> None:
    prices, tdir = write(tmp_path, ["2024-01-01T00:00:00+00:00,x-8g,a100,8,us-central1,10,3"], {})
    (tdir / "broken.json").write_text('{"metadata": {"gap_seconds": 600}, "data": [1, 0, "x"]}')
    cases = [
        (["--traces", str(tdir)], "data[2] = 'x'"),
        (["--traces", str(tmp_path / "none")], "no such directory"),
        (["--trace-map", "us-central1=a.json"], "--trace-map needs --traces"),
        (["--trace-map", "oops"], "not region=file"),
        (["--instance", "nope"], "instance type 'nope' is not in the price history"),
        (["--work-hours", "-1"], "--work-hours must be more than 0"),
        (["--policies", "magic"], "unknown magic"),
        (["--data-location", "mars-1"], "--data-location: 'mars-1'"),
        (["--start", "yesterday"], "'yesterday' is not an ISO-8601"),
    ]
    for extra, message in cases:
        assert main(["simulate", "--prices", str(prices), *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (extra, err)
    assert main(["simulate", "--prices", str(tmp_path / "absent.csv")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_generated_market_is_the_fallback(monkeypatch, capsys) -> None:
    from spotshift.simulate import run

    calls = []

    def synthetic_history(seed: int = 0, start: str = "2023-01-04", weeks: int = 104) -> pl.DataFrame:
        calls.append(seed)
        return small_history(seed)

    monkeypatch.setattr(run, "shared_data_file", lambda name: None)  # no real history on this machine
    monkeypatch.setattr(run, "synthetic_history", synthetic_history)
    pol = run_json(
        capsys, "--work-hours", "10", "--deadline-hours", "15", "--seed", "3", "--start", "2024-01-02"
    )
    assert calls == [3] and pol["spotshift"]["deadline_met"]


def test_real_gcp_history_runs(gcp_history: Path, capsys) -> None:
    pol = run_json(
        capsys,
        "--prices",
        str(gcp_history),
        "--regions",
        "us-*",
        "--work-hours",
        "60",
        "--deadline-hours",
        "100",
    )
    assert all(r["deadline_met"] for r in pol.values())
    assert pol["hindsight"]["cost_usd"] <= pol["spotshift"]["cost_usd"] < pol["on_demand"]["cost_usd"]


def test_start_outside_the_history_is_refused_and_a_deadline_past_it_warns(tmp_path: Path, capsys) -> None:
    prices, _ = write(
        tmp_path,
        [
            "2024-01-01T00:00:00+00:00,x-8g,a100,8,us-central1,10,2",
            "2024-01-08T00:00:00+00:00,x-8g,a100,8,us-central1,10,3",
        ],
        {},
    )
    for start in ("2024-02-01", "2023-12-01"):
        assert main(["simulate", "--prices", str(prices), "--start", start, "--work-hours", "8"]) == 2
        err = capsys.readouterr().err
        assert "outside the price history of x-8g" in err and err.count("\n") == 1, err
    assert main(["simulate", "--prices", str(prices), "--start", "2024-01-07", "--work-hours", "8",
                 "--deadline-hours", "48", "--json"]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    assert "warning: the deadline (2024-01-09" in err and "carried forward" in err, err
    assert json.loads(out)["warnings"] and "carried forward" in json.loads(out)["warnings"][0]


def test_deadline_shorter_than_the_work_is_refused_not_a_table_of_missed(capsys) -> None:
    with pytest.raises(ConfigError, match="shorter than the 100 hours of work"):
        Scenario(work_hours=100, deadline_hours=10)
    for bad in (float("inf"), float("nan"), 1e308, -1.0):
        with pytest.raises(ConfigError, match="--deadline-hours"):
            Scenario(deadline_hours=bad)
