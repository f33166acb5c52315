"""The cutover controller without HTTP: stages, analysis, decisions, replica plan, state file, CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spotshift.cli import main
from spotshift.clock import VirtualClock, load_clock
from spotshift.errors import ConfigError
from spotshift.serving import cutover as co
from spotshift.serving import replica_api as api

T0 = datetime(2026, 1, 5, tzinfo=UTC)


def window(
    *,
    src_ms: float = 50.0,
    tgt_ms: float = 50.0,
    n: int = 40,
    tgt_errors: int = 0,
    mirrored: int = 10,
    agreed: int | None = None,
    tgt_cpm: float = 1.0,
) -> co.Window:
    w = co.Window(0.0, 1.0)
    for i in range(n):
        w.source.add(src_ms + (i % 5), True, 10, 2.0)
        w.target.add(tgt_ms + (i % 5), i >= tgt_errors, 10, tgt_cpm)
    w.mirrored, w.agreed = mirrored, mirrored if agreed is None else agreed
    return w


def state(**kw: object) -> co.CutoverState:
    args = dict(
        to_location="aws/us-east-1",
        market="spot",
        model="",
        source_locations=["gcp/us-central1"],
        shadow=co.parse_stages(co.DEFAULT_SHADOW, "shadow", "--shadow"),
        live=co.parse_stages(co.DEFAULT_STAGES, "live", "--stages"),
        thresholds=co.Thresholds(),
        interval_s=60.0,
        plan_usd_per_mtok=1.0,
        source_usd_per_mtok=2.0,
        steady_replicas=4,
        source_floor=1,
        failback_s=7 * 86400.0,
        now=T0,
    )
    args.update(kw)
    return co.start_state("chat", **args)  # type: ignore[arg-type]


def test_the_defaults_are_the_seeds_figures() -> None:
    live = co.parse_stages(co.DEFAULT_STAGES, "live", "--stages")
    assert [(s.percent, s.hold_s / 3600) for s in live] == [(5, 24), (25, 48), (50, 72), (100, 0)]
    shadow = co.parse_stages("5,15,25,35,45,50", "shadow", "--shadow")
    assert shadow == co.parse_stages(co.DEFAULT_SHADOW, "shadow", "--shadow")
    assert [(s.percent, s.hold_s / 3600) for s in shadow][:2] == [(5, 48), (15, 24)]
    th = co.Thresholds()
    assert (th.p99_shadow, th.p99_live, th.error_rate_delta) == (0.10, 0.15, 0.001)
    assert co.parse_stages("none", "shadow", "--shadow") == ()


@pytest.mark.parametrize(
    ("text", "phase", "message"),
    [
        ("5:24h,25:48h", "live", "must be 100"),
        ("25:24h,5:24h,100:0", "live", "must increase"),
        ("5:forever,100:0", "live", "not a duration"),
        ("abc", "shadow", "not PERCENT"),
        ("150:1h", "shadow", "percent 150"),
        ("5,100:0", "live", "no hold time"),
    ],
)
def test_bad_stage_lists_are_refused_in_one_line(text: str, phase: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        co.parse_stages(text, phase, "--stages")


def test_analysis_judges_each_criterion() -> None:
    stage = co.Stage("live", 5, 3600)
    ok = co.analyse(window(), stage, 1.0, co.Thresholds())
    assert [(v.criterion, v.passed) for v in ok] == [(c, True) for c in co.CRITERIA]
    slow = {v.criterion: v for v in co.analyse(window(tgt_ms=70), stage, 1.0, co.Thresholds())}
    assert slow["p99_latency"].passed is False and slow["p99_latency"].value == pytest.approx(0.37, abs=0.01)
    # 10 % slower passes live (<= 15 %) and fails shadow (54 -> 66 ms: within +15 % + 5 ms, beyond +10 % + 5 ms)
    assert co.analyse(window(tgt_ms=62), stage, 1.0, co.Thresholds())[0].passed is True
    assert co.analyse(window(tgt_ms=62), co.Stage("shadow", 5, 3600), 1.0, co.Thresholds())[0].passed is False
    errs = {v.criterion: v for v in co.analyse(window(tgt_errors=1), stage, 1.0, co.Thresholds())}
    assert errs["error_rate"].passed is False  # 1/40 = 0.025 > 0.001
    dear = {v.criterion: v for v in co.analyse(window(tgt_cpm=1.2), stage, 1.0, co.Thresholds())}
    assert dear["cost_per_million_tokens"].passed is False
    wrong = {v.criterion: v for v in co.analyse(window(agreed=9), stage, 1.0, co.Thresholds())}
    assert wrong["output_agreement"].passed is False and wrong["output_agreement"].value == 0.9
    few = co.analyse(window(n=3, mirrored=0), stage, 1.0, co.Thresholds())
    assert [v.passed for v in few] == [None, None, True, None]


def test_a_good_target_promotes_stage_by_stage_on_the_clock() -> None:
    st = state()
    now = T0
    labels = []
    while st.active:
        labels.append(st.current.label)
        st = co.decide(st, window(), now)  # a passing window...
        assert st.active or st.phase == "promoted"
        if st.active and st.current.label == labels[-1]:
            now += timedelta(seconds=st.current.hold_s)  # ...and the hold passed
            st = co.decide(st, window(), now)
    assert labels == [s.label for s in st.stages[:-1]]
    assert st.phase == "promoted" and st.target_weight == 1.0 and st.mirror_share == 0.0
    assert [r["status"] for r in st.stage_rows][-1] == "promoted"
    assert st.failback_until == (now + timedelta(days=7)).isoformat()
    # virtual hours held: 48 + 5 x 24 shadow, 24 + 48 + 72 live
    assert now - T0 == timedelta(hours=168 + 144)


def test_no_stage_advances_before_its_hold_or_without_a_passing_window() -> None:
    st = state()
    st = co.decide(st, window(n=3, mirrored=0), T0 + timedelta(days=30))  # no verdicts: no pass
    assert st.current.label == "shadow-5"
    st = co.decide(st, window(), T0 + timedelta(hours=47))
    assert st.current.label == "shadow-5" and st.stage_passed_windows == 1
    st = co.advance_if_due(st, T0 + timedelta(hours=48))
    assert st.current.label == "shadow-15" and st.mirror_share == 0.15


def test_a_failed_window_rolls_back_at_once_and_says_why() -> None:
    st = state(shadow=())
    assert st.phase == "live" and st.target_weight == 0.05
    st = co.decide(st, window(tgt_ms=200), T0)
    assert st.phase == "rolled_back" and st.target_weight == 0.0 and st.mirror_share == 0.0
    assert st.rolled_back_at_stage == "live-5" and st.failed_criterion == "p99_latency"
    assert st.stage_rows[-1]["status"] == "rolled_back" and "P99 target" in st.stage_rows[-1]["reason"]
    assert co.decide(st, window(), T0) is st  # nothing moves once rolled back


def test_failback_in_one_step_within_the_window_then_decommission_records_savings() -> None:
    st = state(shadow=(), live=(co.Stage("live", 100, 0),))
    assert st.phase == "promoted"
    back = co.failback(st, T0 + timedelta(days=6))
    assert back.phase == "failed_back" and back.target_weight == 0.0
    with pytest.raises(ConfigError, match="failback window closed"):
        co.failback(st, T0 + timedelta(days=8))
    assert co.decommission_if_due(st, T0 + timedelta(days=6)) is st
    gone = co.decommission_if_due(st, T0 + timedelta(days=7, seconds=1))
    assert gone.phase == "decommissioned"
    assert gone.replica_hours_saved == (4 - 1) * 7 * 24  # steady 4, floor 1, 7 days


@pytest.mark.parametrize("steady", [4, 5, 8, 12, 40])
def test_no_double_fleet_through_every_stage(steady: int) -> None:
    st = state(steady_replicas=steady)
    plans = [co.replica_plan(st)]
    for stage in st.stages:
        plans.append(co.replica_plan(steady, stage, floor=1))
    plans.append(co.replica_plan(st, phase="promoted"))
    for p in plans:
        assert p["source"] + p["target"] <= 1.25 * steady, (steady, plans)
        assert p["target"] >= 1
    live = [co.replica_plan(steady, s, floor=1) for s in st.live[:-1]]
    assert [p["source"] for p in live] == sorted((p["source"] for p in live), reverse=True)


def test_the_state_file_is_replaced_atomically_and_versioned(spotshift_home: Path) -> None:
    st = co.save_state(state())
    v = st.version
    raw = json.loads(co.state_path("chat").read_text())
    assert raw["version"] == v and raw["phase"] == "shadow"
    after = co.update_state("chat", lambda s: co.roll_back(s, T0, "operator"))
    assert after.version == v + 1 and co.require_state("chat").phase == "rolled_back"
    assert [p.name for p in co.state_path("chat").parent.iterdir() if p.name.startswith(".")] == []
    co.state_path("chat").write_text("{not json")
    with pytest.raises(ConfigError, match="not a cutover state file"):
        co.load_state("chat")


def _register_source(n: int = 2) -> None:
    import os
    import time

    for i in range(n):
        api.register(
            api.ReplicaRecord(
                f"chat-s{i}",
                "chat",
                f"http://127.0.0.1:{9000 + i}",
                "gcp/us-central1",
                "spot",
                3.0,
                os.getpid(),
                time.time(),
                "ck",
            )
        )


# the sources here are records of this test's own process: the weights change, no replica is touched
HOLD = ["--no-scale"]


def test_cli_start_status_rollback_failback(spotshift_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    VirtualClock.starting(T0, 0.0).save()
    _register_source(4)
    assert (
        main(["cutover", "start", "chat", "--to", "aws/us-east-1", "--usd-per-hour", "1.8", "--json", *HOLD])
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["phase"] == "shadow" and doc["stage"] == "shadow-5" and doc["mirror_share"] == 0.05
    assert doc["steady_replicas"] == 4 and doc["source_locations"] == ["gcp/us-central1"]
    assert doc["plan_usd_per_mtok"] == pytest.approx(1.8 / (2400 * 3600) * 1e6)
    # a second start while one is in progress: one line, exit 2
    assert main(["cutover", "start", "chat", "--to", "aws/us-east-1", "--usd-per-hour", "1.8", *HOLD]) == 2
    assert "cutover in progress" in capsys.readouterr().err
    assert main(["cutover", "status", "chat", *HOLD]) == 0
    out = capsys.readouterr().out
    assert "phase shadow, stage shadow-5 (1/10" in out and "hold left 48.0 h" in out
    assert main(["cutover", "rollback", "chat", "--reason", "operator says no", "--json", *HOLD]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["phase"] == "rolled_back" and doc["target_weight"] == 0 and doc["reason"] == "operator says no"
    assert main(["cutover", "failback", "chat", *HOLD]) == 0  # already on the source: nothing to do
    capsys.readouterr()
    # a promoted cutover fails back in one step
    assert (
        main(
            [
                "cutover",
                "start",
                "chat",
                "--to",
                "aws/us-east-1",
                "--usd-per-hour",
                "1.8",
                "--shadow",
                "none",
                "--stages",
                "100:0",
                *HOLD,
            ]
        )
        == 0
    )
    capsys.readouterr()
    load_clock().advance(86400).save()
    assert main(["cutover", "failback", "chat", "--json", *HOLD]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["phase"] == "failed_back" and doc["replicas"] == {"source": 4, "target": 0}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--to", "nowhere"], "--to"),
        (["--to", "aws/us-east-1", "--stages", "5:24h"], "last live stage must be 100"),
        (["--to", "aws/us-east-1", "--interval-seconds", "0"], "--interval-seconds"),
        (["--to", "aws/us-east-1", "--market", "free"], "invalid choice"),
        (["--to", "gcp/us-central1"], "already serves from gcp/us-central1"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(
    spotshift_home: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    _register_source(1)
    try:
        code = main(["cutover", "start", "chat", "--usd-per-hour", "1", *argv])
    except SystemExit as exc:  # argparse's own errors (the same one-line contract)
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_cli_status_without_a_cutover_and_start_without_replicas(
    spotshift_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cutover", "status", "chat"]) == 2
    assert "has no cutover" in capsys.readouterr().err
    assert main(["cutover", "start", "chat", "--to", "aws/us-east-1", "--usd-per-hour", "1"]) == 2
    assert "no live replica to move from" in capsys.readouterr().err


def test_serve_model_names_the_target_checkpoint_and_refuses_an_unknown_one(
    spotshift_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = spotshift_home / "stores" / "x"
    assert main(["endpoints", "add", "chat", "--model", f"{store}/checkpoints/tiny", "--slo-ms", "1000"]) == 0
    capsys.readouterr()
    argv = ["serve", "chat", "--location", "aws/us-east-1", "--market", "spot", "--usd-per-hour", "1"]
    assert main([*argv, "--model", "no-such-job"]) == 2
    err = capsys.readouterr().err
    assert "'no-such-job' is neither a declared job" in err and len(err.strip().splitlines()) == 1
