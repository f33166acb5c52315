"""The demo's market shows the value of moving: on it, the simulator's spotshift policy beats staying
on the first spot region and paying for its preemptions (the honest baseline of mart_savings)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import polars as pl
import pytest

from spotshift.pricing.catalog import load_catalog
from spotshift.simulate.engine import Scenario, simulate
from spotshift.simulate.market import build_market
from spotshift.simulate.traces import generate_traces


def test_spotshift_beats_stay_on_first_spot_on_the_demo_market(
    spotshift_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scripts import demo

    monkeypatch.setenv("SPOTSHIFT_PRICES", "")  # the generated market, as `make demo` uses
    with contextlib.redirect_stdout(io.StringIO()):
        market = demo.stage_market(spotshift_home)
    settings = demo.Settings()
    # the first spot placement: the cheapest effective GPU-hour of the job's GPUs at the start
    factors = {(e.provider, e.instance_type): e.effective_factor for e in load_catalog()}
    quoted = market.frame.filter(
        (pl.col("gpu_model") == demo.GPU_MODEL)
        & (pl.col("gpu_count") == demo.GPU_COUNT)
        & pl.col("spot_hour").is_not_null()
        & (pl.col("observed_at") <= market.start)
    )
    latest = quoted.filter(pl.col("observed_at") == quoted["observed_at"].max())
    _, first, instance = min(
        (
            r["spot_hour"] * factors[(r["provider"], r["instance_type"])],
            f"{r['provider']}/{r['region']}",
            r["instance_type"],
        )
        for r in latest.iter_rows(named=True)
    )
    provider = first.split("/")[0]
    history = market.frame.filter(pl.col("provider") == provider)
    locations = sorted({f"{p}/{r}" for p, r in history.select("provider", "region").unique().iter_rows()})
    scenario = Scenario(
        work_hours=settings.work_hours,
        deadline_hours=settings.deadline_hours,
        data_gb=0.01,  # the demo's corpus is a few MiB
        ckpt_gb=0.01,
        checkpoint_interval_hours=0.25,  # trainers also checkpoint every 15 minutes
        data_location=first,
    )
    sim_market = build_market(
        history,
        instance,
        start=market.start,
        hours=settings.deadline_hours + settings.work_hours + 24,
        gap_seconds=600,
        traces=generate_traces(locations, settings.deadline_hours * 2, seed=demo.TRACE_SEED),
    )
    result = simulate(sim_market, scenario, policies=("stay_first_spot", "spotshift"))
    stay, moving = result["stay_first_spot"], result["spotshift"]
    assert stay.preemptions > 0  # staying pays for its preemptions
    assert moving.deadline_met and stay.deadline_met
    assert moving.cost_usd < stay.cost_usd, (
        f"on the demo market spotshift ${moving.cost_usd:,.0f} does not beat staying on {first} "
        f"${stay.cost_usd:,.0f}: choose another MARKET_SEED / TRACE_SEED in scripts/demo.py"
    )
