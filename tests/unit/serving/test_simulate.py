"""The inference simulator: invariants (on-demand saving 0, costs add up, deterministic, notices
drain), the SLO model's own definition, and the command line's bad inputs (exit 2, one line)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from spotshift.cli import main
from spotshift.pricing.synthetic import write_synthetic_history
from spotshift.serving.simulate import (
    POLICIES,
    InferenceSimRequest,
    SyntheticDemand,
    build_sim_inputs,
    compare,
    run_policy,
)
from spotshift.serving.simulate_commands import POLICY_NAMES
from spotshift.serving.slo import ServingProfile, pool_sizer, within_slo_share


@pytest.fixture(scope="module")
def prices(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_history(tmp_path_factory.mktemp("prices") / "h.csv", seed=3, weeks=4)


@pytest.fixture(scope="module")
def request_(prices: Path) -> InferenceSimRequest:
    return InferenceSimRequest(
        prices=str(prices),
        days=1.0,
        regions=("gcp/*",),
        synthetic=SyntheticDemand(users={"us-east": 0.6, "eu-west": 0.4}, peak_tokens_s=20_000, seed=2),
        seed=2,
    )


@pytest.fixture(scope="module")
def sim(request_: InferenceSimRequest):
    return build_sim_inputs(request_)[0]


def test_command_lists_every_policy() -> None:
    assert POLICY_NAMES == POLICIES


def test_on_demand_saves_nothing_and_savings_follow_costs(sim) -> None:
    out = compare(sim)
    assert out["on_demand"].saving_vs_on_demand == 0.0
    base = out["on_demand"].cost_usd
    for o in out.values():
        assert o.saving_vs_on_demand == pytest.approx(1 - o.cost_usd / base)
        assert 0.0 <= o.slo_attainment <= o.availability <= 1.0
    assert out["on_demand"].cost_by_market_usd["spot"] == 0.0
    assert out["reserved"].cost_by_market_usd["on_demand"] == 0.0


@pytest.mark.parametrize("name", POLICIES)
def test_costs_add_up(sim, name: str) -> None:
    o, arr = run_policy(sim, name)
    h = sim.tick_s / 3600.0
    spot = float((arr["alive"]["spot"] * np.nan_to_num(sim.spot)).sum() * h)
    od = float((arr["alive"]["on_demand"] * np.nan_to_num(sim.on_demand)).sum() * h)
    res = float((arr["committed"] * np.nan_to_num(sim.reserved)).sum() * h)
    assert o.cost_by_market_usd == pytest.approx({"spot": spot, "on_demand": od, "reserved": res})
    assert o.cost_usd == pytest.approx(spot + od + res)
    # a commitment never shrinks; spot never runs where capacity is gone
    assert (np.diff(arr["committed"], axis=0) >= 0).all()
    assert not (arr["alive"]["spot"][~sim.available] > 0).any()
    # requests are conserved: within the SLO + late + failed = all
    assert o.requests == pytest.approx(o.requests * o.slo_attainment + o.late_requests + o.failed_requests)


def test_deterministic_for_a_seed(request_: InferenceSimRequest) -> None:
    from spotshift.serving.simulate import run_inference_simulation

    req = replace(request_, policies=("spothedge", "spotshift"))
    a = run_inference_simulation(req).to_dict()
    b = run_inference_simulation(req).to_dict()
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    c = run_inference_simulation(replace(req, seed=5)).to_dict()
    assert c["policies"] != a["policies"]


def test_preemptions_with_notice_fail_no_request(sim) -> None:
    # the spot policies do get preempted here, yet every request finds a ready replica somewhere
    o, _ = run_policy(sim, "spotshift")
    assert o.preemptions > 0
    assert o.failed_requests == 0.0 and o.availability == 1.0


def test_capacity_at_the_slo_is_what_the_model_says() -> None:
    p = ServingProfile()
    one = float(within_slo_share(p, 2.0, p.capacity_tokens_s, 1))
    assert one == pytest.approx(0.99, abs=1e-3)  # loaded to capacity: exactly the measured p99
    assert float(within_slo_share(p, 2.0, 10 * p.capacity_tokens_s, 10)) > one  # pooling
    assert float(within_slo_share(p, 150.0, p.capacity_tokens_s, 1)) < one  # distance
    assert float(within_slo_share(p, 250.0, 1.0, 10)) == 0.0  # the round trip alone breaks the SLO
    sizer = pool_sizer(p, 0.999)
    assert sizer.replicas_for(2.0, 0.0) == 0
    n = sizer.replicas_for(100.0, 5 * p.capacity_tokens_s)
    assert n is not None and float(within_slo_share(p, 100.0, 5 * p.capacity_tokens_s, n)) >= 0.999


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    return rc, err


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--demand", "missing.csv"], "demand missing.csv: no such file"),
        (["--demand", "synthetic", "--users", "us-east"], "--users entry 'us-east' is not REGION=SHARE"),
        (["--demand", "synthetic", "--users", "mars=1"], "user region 'mars'"),
        (["--demand", "synthetic", "--policies", "yolo"], "--policies: unknown yolo"),
        (["--demand", "synthetic", "--days", "0"], "--days must be > 0"),
        (["--demand", "synthetic", "--traces", "no-such-dir"], "traces directory no-such-dir"),
        (["--demand", "synthetic", "--prices", "no.csv"], "price history no.csv: no such file"),
    ],
)
def test_cli_bad_inputs_exit_2_with_one_line(
    extra: list[str],
    needle: str,
    prices: Path,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["simulate-inference", "--slo-ms", "1000", "--days", "0.1"]
    if "--prices" not in extra:
        argv += ["--prices", str(prices)]
    rc, err = _run(argv + extra, capsys)
    assert rc == 2
    assert needle in err and len(err.splitlines()) == 1


def test_cli_bad_demand_csv_and_slo(prices: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "d.csv"
    bad.write_text("timestamp,user_region,tokens_s\n2024-01-01T00:00:00Z,us-east,lots\n")
    rc, err = _run(
        ["simulate-inference", "--prices", str(prices), "--demand", str(bad), "--slo-ms", "1000"], capsys
    )
    assert rc == 2 and "line 2: tokens_s 'lots' is not a number" in err
    bad.write_text("when,region,rate\n")
    rc, err = _run(
        ["simulate-inference", "--prices", str(prices), "--demand", str(bad), "--slo-ms", "1000"], capsys
    )
    assert rc == 2 and "needs columns timestamp, user_region and tokens_s" in err
    rc, err = _run(
        ["simulate-inference", "--prices", str(prices), "--demand", "synthetic", "--slo-ms", "500"], capsys
    )
    assert rc == 2 and "leaves no room within the SLO of 500 ms" in err


def test_cli_json_and_demand_csv(prices: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demand = tmp_path / "d.csv"
    rows = ["timestamp,user_region,requests_s"]
    for h in range(6):
        rows += [f"2023-01-10T{h:02d}:00:00Z,us-east,{10 + h}", f"2023-01-10T{h:02d}:00:00Z,eu-west,{5 + h}"]
    demand.write_text("\n".join(rows) + "\n")
    rc = main(
        ["simulate-inference", "--prices", str(prices), "--demand", str(demand), "--slo-ms", "1000", "--json"]
        + ["--regions", "gcp/*", "--policies", "on_demand,spotshift"]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert set(out["policies"]) == {"on_demand", "spotshift"}
    for r in out["policies"].values():
        assert {"cost_usd", "saving_vs_on_demand", "slo_attainment", "availability"} <= set(r)
    assert out["scenario"]["users"] == ["eu-west", "us-east"]
    assert out["scenario"]["days"] == pytest.approx(6 / 24 - 1 / 24 + 60 / 86400, rel=1e-6)


def test_skipping_unchanged_ticks_changes_nothing(sim) -> None:
    fast, _ = run_policy(sim, "spotshift")
    exact, _ = run_policy(sim, "spotshift", skip_unchanged=False)
    assert fast.to_dict() == exact.to_dict()


class _ReserveThenStop:
    """Launches two reserved replicas at tick 0 and stops them at tick 10."""

    def __init__(self, sim) -> None:
        self.sim = sim

    def step(self, t, replicas, quotes, no_spot):
        from spotshift.serving.scaling_types import Launch

        if t == 0:
            return [Launch(self.sim.locations[0], "reserved", 2, "test")], []
        if t == 10:
            return [], list(replicas)
        return [], []


def test_reserved_is_billed_for_the_whole_term_even_when_stopped(sim) -> None:
    o, arr = run_policy(sim, "test", policy=_ReserveThenStop(sim))
    assert arr["alive"]["reserved"][11:].sum() == 0
    h = sim.tick_s / 3600.0
    assert o.cost_by_market_usd["reserved"] == pytest.approx(2 * float(sim.reserved[:, 0].sum()) * h)
    assert o.replica_hours["reserved"] == pytest.approx(2 * sim.ticks * h)


def test_two_windows_with_the_same_start_never_share_plans(request_: InferenceSimRequest) -> None:
    # the autoscaler memoizes plans by quote snapshot id: two markets must never share an id
    from spotshift.serving.scaling_types import ScalingParams
    from spotshift.serving.simulate import AutoscalerPolicy

    wide = build_sim_inputs(request_)[0]
    narrow = build_sim_inputs(replace(request_, regions=("gcp/us-*",)))[0]
    assert wide.start == narrow.start and set(narrow.locations) < set(wide.locations)
    ids = set()
    for sim in (wide, narrow):
        ids.add(AutoscalerPolicy("spotshift", sim, ScalingParams()).quotes_id)
        _, arr = run_policy(sim, "spotshift")
        assert arr["alive"]["spot"].shape[1] == len(sim.locations)
    assert len(ids) == 2


class _NoSpotProbe:
    """Records what each tick's policy is told about locations without spot capacity."""

    def __init__(self) -> None:
        self.seen: dict[int, dict[str, str]] = {}

    def step(self, t, replicas, quotes, no_spot):
        self.seen[t] = dict(no_spot)
        return [], []


def test_the_window_opens_knowing_which_spot_capacity_is_gone(sim) -> None:
    # the window opens on a running service: a location whose spot capacity is already gone is
    # "no spot" from the first tick, so the opening fleet is not launched into it (and left short)
    from spotshift.serving.scaling_types import ScalingParams

    spot_ok = ScalingParams(spot_reserved_ratio=1.0)  # this market's spot is not below 0.6 x reserved
    avail = np.ones_like(sim.available)
    _, open_arr = run_policy(replace(sim, available=avail), "spotshift", params=spot_ok)
    # where the opening fleet goes with capacity everywhere
    busiest = int(open_arr["alive"]["spot"][0].argmax())
    assert open_arr["alive"]["spot"][0, busiest] > 0
    avail[:60, busiest] = False
    gone = replace(sim, available=avail)
    probe = _NoSpotProbe()
    run_policy(gone, "probe", policy=probe)
    assert list(probe.seen[0]) == [sim.locations[busiest]]
    assert "window opens" in probe.seen[0][sim.locations[busiest]]
    o, arr = run_policy(gone, "spotshift", params=spot_ok)
    assert arr["alive"]["spot"][0, busiest] == 0
    # the opening fleet is whole, placed elsewhere, not short by the launches that would fail
    assert arr["ready"][0].sum() == open_arr["ready"][0].sum()
    assert arr["ready"][0].sum() * sim.profile.capacity_tokens_s >= sim.demand[0].sum()
