"""The offline optimum (dynamic programming over the trace): hand-computed markets, and its place
between the hindsight bound and every policy on generated markets."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from spotshift.simulate.engine import Scenario, simulate
from tests.unit.simulate.test_simulate import EXACT, run_json, small_market, write

TRACE_MAP = "us-central1=a.json,us-east1=b.json"


def test_waiting_beats_moving_when_capacity_returns(tmp_path: Path, capsys) -> None:
    # us-central1 spot 2 (data home), gone in hours 2-3 and 6-7; us-east1 spot 3, gone in hours 4-5.
    # Knowing the future, the job waits out both outages in us-central1: 8 h x 2 = 16, no copy.
    prices, tdir = write(
        tmp_path,
        [
            "2024-01-01T00:00:00+00:00,x-8g,a100,8,us-central1,10,2",
            "2024-01-01T00:00:00+00:00,x-8g,a100,8,us-east1,12,3",
        ],
        {"a": [1, 1, 0, 0, 1, 1, 0, 0] + [1] * 40, "b": [1, 1, 1, 1, 0, 0] + [1] * 42},
    )
    pol = run_json(
        capsys,
        "--prices", str(prices), "--traces", str(tdir), "--trace-map", TRACE_MAP,
        "--work-hours", "8", "--deadline-hours", "16", "--data-location", "us-central1", *EXACT,
    )  # fmt: skip
    opt = pol["optimum"]
    assert (opt["cost_usd"], opt["finish_hours"], opt["deadline_met"], opt["lower_bound"]) == (
        16.0,
        12.0,
        True,
        True,
    )
    assert opt["egress_usd"] is None and opt["moves"] is None and opt["vs_optimum"] == 1.0
    assert pol["spotshift"]["vs_optimum"] == pytest.approx(pol["spotshift"]["cost_usd"] / 16.0, abs=1e-4)
    assert pol["hindsight"]["vs_optimum"] == 1.0


def test_the_optimum_pays_for_the_move_the_hindsight_bound_gets_free(tmp_path: Path, capsys) -> None:
    # us-central1 spot 2 (data home) until hour 4, then gone for good; us-east1 spot 3 throughout;
    # 8 h of work due in 10 h: 4 h at 2, then move (100 GB dataset + 10 GB checkpoint at 0.02 = 2.20)
    # and 4 h at 3 = 22.20. The hindsight bound buys the same hours without the copy: 20.
    prices, tdir = write(
        tmp_path,
        [
            "2024-01-01T00:00:00+00:00,x-8g,a100,8,us-central1,10,2",
            "2024-01-01T00:00:00+00:00,x-8g,a100,8,us-east1,12,3",
        ],
        {"a": [1] * 4 + [0] * 44, "b": [1] * 48},
    )
    pol = run_json(
        capsys,
        "--prices", str(prices), "--traces", str(tdir), "--trace-map", TRACE_MAP,
        "--work-hours", "8", "--deadline-hours", "10", "--data-location", "us-central1", *EXACT,
    )  # fmt: skip
    assert pol["hindsight"]["cost_usd"] == 20.0
    assert pol["optimum"]["cost_usd"] == pytest.approx(22.2)
    assert pol["hindsight"]["vs_optimum"] == pytest.approx(20.0 / 22.2, abs=1e-4)
    # no slack at all: the same plan, finishing at hour 8 on the dot
    pol = run_json(
        capsys,
        "--prices", str(prices), "--traces", str(tdir), "--trace-map", TRACE_MAP,
        "--work-hours", "8", "--deadline-hours", "8", "--data-location", "us-central1", *EXACT,
    )  # fmt: skip
    assert pol["optimum"]["cost_usd"] == pytest.approx(22.2) and pol["optimum"]["finish_hours"] == 8.0


@pytest.mark.parametrize("seed", range(6))
def test_optimum_lies_between_the_hindsight_bound_and_every_policy(seed: int) -> None:
    # no dataset to copy: the programme then models the simulator exactly up to tick rounding in
    # the optimum's favour, so no policy can cost less, and nothing can cost less than hindsight
    rng = random.Random(2000 + seed)
    work = rng.uniform(8, 20)
    sc = Scenario(
        work_hours=work,
        deadline_hours=work * rng.uniform(1.1, 1.8),
        data_gb=0.0,
        ckpt_gb=rng.choice([5.0, 50.0, 300.0]),
        changeover_hours=rng.choice([0.0, 0.25]),
        checkpoint_interval_hours=rng.choice([0.25, 0.5]),
    )
    m = small_market(seed, sc.deadline_hours + sc.work_hours + 24)
    res = simulate(m, sc)
    opt = res["optimum"]
    assert opt.deadline_met and opt.finish_hours <= sc.deadline_hours
    assert res["hindsight"].cost_usd <= opt.cost_usd + 1e-6
    for name, r in res.items():
        if name in ("optimum", "hindsight"):
            continue
        assert opt.cost_usd <= r.cost_usd + 1e-6, (name, r.cost_usd, opt.cost_usd)
        assert r.vs_optimum == pytest.approx(r.cost_usd / opt.cost_usd)
