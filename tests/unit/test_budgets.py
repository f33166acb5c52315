"""Team budgets: declarations, month-to-date spend, the placement and autoscaler gates, alert facts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spotshift import registry, warehouse
from spotshift.budgets import (
    Budget,
    BudgetStatus,
    budget_status,
    hours_left_in_month,
    month_bounds,
    set_budget,
    team_spend,
)
from spotshift.cli import main
from spotshift.errors import ConfigError
from spotshift.jobs import add_job, get_job
from spotshift.placement import state
from spotshift.placement.inputs import decide_for_job
from spotshift.serving.autoscale import gate_scaling
from tests.unit.placement.builders import make_job, make_quote

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
CENTRAL, EAST = "gcp/us-central1", "gcp/us-east1"
HOURS_LEFT = 31 * 24 - 12  # March, from noon on the 1st


def _quotes(con) -> None:
    qs = [make_quote(CENTRAL, 10.0), make_quote(EAST, 6.0), make_quote(CENTRAL, 30.0, market="on_demand")]
    warehouse.append_rows(
        con,
        "main.gpu_quotes",
        [{**q.to_dict(), "snapshot_id": "snap", "polled_at": NOW - timedelta(minutes=1), "observed_at": q.observed_at} for q in qs],
    )  # fmt: skip


def _usage(con, usage_id: str, job: str, usd: float, start: datetime, hours: float = 1.0) -> None:
    warehouse.append_rows(
        con,
        "raw.compute_usage",
        [{"usage_id": usage_id, "job": job, "provider": "gcp", "region": "us-east1", "instance_type": "a2-highgpu-8g", "market": "spot", "started_at": start.replace(tzinfo=None), "ended_at": (start + timedelta(hours=hours)).replace(tzinfo=None), "usd": usd}],
    )  # fmt: skip


@pytest.fixture
def team_job(spotshift_home: Path):
    """An unplaced 100 h job of team ml (cheapest fit: us-east1 spot at 6 USD/h, 600 USD)."""
    registry.upsert("datasets", {"name": "corpus", "location": CENTRAL})
    add_job(make_job(team="ml", submitted_at=NOW.isoformat()))
    with warehouse.connect() as con:
        _quotes(con)
        yield con


def test_month_bounds_and_hours_left() -> None:
    start, end = month_bounds(NOW)
    assert (start, end) == (datetime(2025, 3, 1), datetime(2025, 4, 1))
    assert hours_left_in_month(NOW) == pytest.approx(HOURS_LEFT)
    assert month_bounds(datetime(2024, 2, 29, 23))[1] == datetime(2024, 3, 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "ML", "monthly_usd": 10}, "use 1-63 characters"),
        ({"name": "ml", "monthly_usd": -1}, "monthly_usd"),
        ({"name": "ml", "monthly_usd": 10, "alert": 1.5}, "alert"),
        ({"name": "ml", "monthly_usd": float("nan")}, "monthly_usd"),
    ],
)
def test_bad_budgets_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Budget(**kwargs)


def test_job_team_is_validated(spotshift_home: Path) -> None:
    with pytest.raises(ConfigError, match="team 'Bad Team'"):
        make_job(team="Bad Team")


def test_job_is_queued_at_the_hard_limit_and_placed_when_the_budget_allows(team_job) -> None:
    con = team_job
    set_budget(Budget("ml", monthly_usd=500.0))
    d = decide_for_job(con, "llm-ft", now=NOW)
    # 100 h at the cheapest 6 USD/h is 600 USD this month: over the 500 USD limit, nothing fits
    assert d.action == "queue" and d.target is None
    assert any("over its 500.00 USD monthly limit" in r for r in d.reasons)
    assert any("queued until the team's budget allows it" in r for r in d.reasons)
    # with room for it the same job is placed on the cheapest spot as before
    set_budget(Budget("ml", monthly_usd=700.0))
    d = decide_for_job(con, "llm-ft", now=NOW)
    assert d.action == "place" and d.target_location == EAST
    assert not any(r.startswith("budget:") for r in d.reasons)


def test_spend_already_recorded_counts_against_the_limit(team_job) -> None:
    con = team_job
    set_budget(Budget("ml", monthly_usd=700.0))
    # another job of the team already spent 150 USD this month (and 1000 USD last month, not counted)
    registry.upsert("jobs", {**make_job(name="other", team="ml").to_dict()})
    _usage(con, "u-this", "other", 150.0, NOW - timedelta(hours=3))
    _usage(con, "u-last", "other", 1000.0, NOW - timedelta(days=2))
    # an interval across the month boundary counts for its part inside March: 24 of 48 h
    _usage(con, "u-split", "other", 48.0, datetime(2025, 2, 28, tzinfo=UTC), hours=48.0)
    assert team_spend(con, ["other"], [], NOW) == pytest.approx(150.0 + 24.0)
    d = decide_for_job(con, "llm-ft", now=NOW)
    assert d.action == "queue"  # 174 + 600 > 700
    # the alert fact: 174 USD is not 80 % of 700 USD; at 560 USD it is
    assert con.execute("select count(*) from raw.budget_alerts").fetchall()[0][0] == 0
    _usage(con, "u-more", "other", 400.0, NOW - timedelta(hours=2))
    decide_for_job(con, "llm-ft", now=NOW)
    decide_for_job(con, "llm-ft", now=NOW + timedelta(minutes=10))  # once per team, month and level
    rows = con.execute(
        "select team, month, level, spent_usd, threshold_usd from raw.budget_alerts"
    ).fetchall()
    assert rows == [("ml", "2025-03", "alert", pytest.approx(574.0), pytest.approx(560.0))]


def test_running_job_stays_rather_than_start_spend_over_the_limit(team_job) -> None:
    con = team_job
    state.record_placement(
        "llm-ft",
        location=CENTRAL,
        market="on_demand",
        instance_type="a2-highgpu-8g",
        now=NOW,
        price_usd_hour=30.0,
    )
    set_budget(Budget("ml", monthly_usd=100.0))
    d = decide_for_job(con, "llm-ft", now=NOW + timedelta(hours=1))
    # a move to cheaper spot lowers the spend that already started: allowed whatever the limit
    assert d.action == "move" and d.target_location == EAST


def test_budget_status_and_levels(team_job) -> None:
    con = team_job
    b = Budget("ml", monthly_usd=100.0, alert=0.5)
    _usage(con, "u1", "llm-ft", 60.0, NOW - timedelta(hours=1))
    s = budget_status(con, b, NOW)
    assert s.spent_usd == pytest.approx(60.0) and s.level == "alert" and s.burn == pytest.approx(0.6)
    _usage(con, "u2", "llm-ft", 50.0, NOW - timedelta(hours=2))
    assert budget_status(con, b, NOW).level == "limit"


def test_autoscaler_withholds_launches_that_would_cross_the_limit() -> None:
    from spotshift.serving.autoscale import decide_scaling
    from tests.unit.serving.test_autoscale import CAP, US, inputs, quotes

    plain = decide_scaling(inputs(quotes({loc: 1.85 for loc in US}), 10 * CAP))
    assert plain.launches and plain.planned_usd_hour > 0
    hours = hours_left_in_month(plain.decided_at)

    def status(limit: float) -> BudgetStatus:
        return BudgetStatus(
            Budget("ml", monthly_usd=limit), month_bounds(plain.decided_at)[0], 0.0, 0.0, hours
        )

    from dataclasses import replace

    base = inputs(quotes({loc: 1.85 for loc in US}), 10 * CAP)
    roomy = decide_scaling(replace(base, budget=status(plain.planned_usd_hour * hours * 2)))
    assert roomy.launches == plain.launches and roomy.action == plain.action
    tight = decide_scaling(replace(base, budget=status(plain.planned_usd_hour * hours / 2)))
    assert tight.action == "hold" and tight.launches == () and tight.terminations == ()
    assert any("launches withheld" in r for r in tight.reasons)
    assert gate_scaling(plain, status(1.0)).launches == ()


def test_budgets_cli(spotshift_home: Path, capsys) -> None:
    assert main(["budgets", "set", "ml", "--monthly-usd", "1000", "--alert", "0.9"]) == 0
    assert "1,000.00 USD a month, alert at 90%" in capsys.readouterr().out
    assert main(["budgets", "list", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["budgets"][0]["team"] == "ml" and doc["budgets"][0]["spent_usd"] == 0
    registry.upsert("datasets", {"name": "corpus", "location": CENTRAL})
    assert (
        main(
            [
                "jobs",
                "add",
                "j1",
                "--dataset",
                "corpus",
                "--total-steps",
                "10",
                "--work-hours",
                "1",
                "--team",
                "ml",
            ]
        )
        == 0
    )
    assert get_job("j1").team == "ml"
    capsys.readouterr()
    assert main(["budgets", "show", "ml", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["jobs"] == ["j1"] and doc["monthly_usd"] == 1000 and doc["level"] == "ok"
    assert main(["budgets", "show", "nobody"]) == 2
    assert "nobody" in capsys.readouterr().err
    assert main(["budgets", "set", "ml", "--monthly-usd", "-5"]) == 2
    assert "monthly_usd" in capsys.readouterr().err
    assert (
        main(
            [
                "jobs",
                "add",
                "j2",
                "--dataset",
                "corpus",
                "--total-steps",
                "10",
                "--work-hours",
                "1",
                "--team",
                "A B",
            ]
        )
        == 2
    )
    assert "team 'A B'" in capsys.readouterr().err
