"""The demo's inference act, its autoscaling part: over two days of the daily curve the autoscaler
runs spot where spot < 0.6 x reserved and commits reserved where not, records its decisions, and
is deterministic. (Serving and the preemption are exercised by ``make demo``'s end-to-end test.)"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from scripts import demo_inference as act_mod
from spotshift.serving.scaling_types import LocationQuote

# AWS reserved = on-demand x 0.64: us-east-1 0.6 x 2.56 = 1.536 < 1.8 (no spot); eu-west-1 1.0 < 1.536
# (spot); ap-northeast-1 0.6 x 3.2 = 1.92 < 2.5 (no spot). A farther Virginia quote is not chosen.
QUOTES = [
    LocationQuote("aws/us-east-1", 4.0, 1.8),
    LocationQuote("aws/eu-west-1", 4.0, 1.0),
    LocationQuote("aws/ap-northeast-1", 5.0, 2.5),
    LocationQuote("aws/us-west-2", 3.0, 0.5),
    LocationQuote("gcp/us-east4", 1.0, 0.1),  # another cloud: the endpoint is on AWS
]
START = datetime(2024, 3, 4, tzinfo=UTC)


def _plan() -> tuple[act_mod.InferenceAct, dict[str, str]]:
    act = act_mod.InferenceAct()
    act.locations = act_mod.home_locations(QUOTES)
    by = {q.location: q for q in QUOTES}
    return act, act_mod.plan_days(START, [by[loc] for loc in act.locations], act)


def test_the_act_runs_spot_by_the_six_tenths_rule_and_commits_reserved(spotshift_home: Path) -> None:
    from spotshift.warehouse import connect

    act, markets = _plan()
    assert act.locations == ["aws/ap-northeast-1", "aws/eu-west-1", "aws/us-east-1"]
    assert markets["aws/eu-west-1"] == "spot"
    assert markets["aws/us-east-1"] == "reserved" and markets["aws/ap-northeast-1"] != "spot"
    rules = {loc: (ok, why) for loc, _s, _r, ok, why in act.rules}
    assert rules["aws/eu-west-1"][0] and "< 0.6 x reserved" in rules["aws/eu-west-1"][1]
    assert not rules["aws/us-east-1"][0] and ">= 0.6 x reserved" in rules["aws/us-east-1"][1]
    # the second day: a commitment made after a day of steady non-spot base, billed all day
    assert all(counts["reserved"] > 0 for _h, _t, counts in act.by_hour)
    assert len(act.by_hour) == 8 and [h for h, *_ in act.by_hour] == list(range(0, 24, 3))
    assert 0 < act.day_usd < act.day_on_demand_usd and act.slo_attainment >= 0.999
    with connect(read_only=True) as con:
        n = con.execute("SELECT count(*) FROM raw.scaling_decisions WHERE endpoint = 'chat'").fetchone()[0]
    assert n == act.decisions_recorded > 0
    again, markets_again = _plan()  # deterministic: the same plan, nothing recorded twice
    assert (again.by_hour, again.day_usd, markets_again) == (act.by_hour, act.day_usd, markets)
    assert again.decisions_recorded == 0
