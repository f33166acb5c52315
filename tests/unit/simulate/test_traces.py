"""Availability traces: reading the published JSON shape, clear errors, generated statistics."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from spotshift.errors import InputError
from spotshift.placement.risk import OnlineRiskEstimator, risk_from_traces
from spotshift.simulate.traces import (
    FRACTION_AVAILABLE,
    AvailabilityTrace,
    generate_trace,
    generate_traces,
    load_trace_dir,
    read_trace,
    spell_stats,
    write_trace,
    zone_params,
)


def test_read_roundtrip(tmp_path: Path) -> None:
    p = tmp_path / "us-east-1a.json"
    p.write_text(json.dumps({"metadata": {"gap_seconds": 600, "source": "x"}, "data": [0, 2, 3, 0]}))
    t = read_trace(p)
    assert t.gap_seconds == 600 and t.data == (0, 2, 3, 0) and t.name == "us-east-1a"
    assert t.available == (False, True, True, False)
    assert t.hours == pytest.approx(4 * 600 / 3600)
    assert t.available_at(600 / 3600) and not t.available_at(0.0)
    assert t.available_at(4 * 600 / 3600) is False  # wraps around
    write_trace(tmp_path / "copy.json", t)
    assert read_trace(tmp_path / "copy.json").data == t.data


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"metadata": {"gap_seconds": 600}, "data": [1, 0', "malformed JSON at line 1"),
        ("[1, 2, 3]", "expected a JSON object"),
        ('{"data": [1]}', "missing metadata.gap_seconds"),
        ('{"metadata": {"gap_seconds": -5}, "data": [1]}', "gap_seconds must be more than 0"),
        ('{"metadata": {"gap_seconds": "600"}, "data": [1]}', "gap_seconds must be a number"),
        (
            '{"metadata": {"gap_seconds": 1e300}, "data": [1]}',
            "gap_seconds must be more than 0 and at most 86400",
        ),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"metadata": {"gap_seconds": 1.5}, "data": [1]}', "whole number of seconds"),
        ('{"metadata": {"gap_seconds": 600}, "data": {"a": 1}}', "'data' must be a list"),
        ('{"metadata": {"gap_seconds": 600}, "data": []}', "'data' is empty"),
        ('{"metadata": {"gap_seconds": 600}, "data": [1, -1]}', "data[1] = -1 is not a non-negative integer"),
        ('{"metadata": {"gap_seconds": 600}, "data": [1, "two"]}', "data[1] = 'two'"),
        ('{"metadata": {"gap_seconds": 600}, "data": [true]}', "data[0] = True"),
        ("", "malformed JSON"),
    ],
)
def test_malformed_traces_name_file_and_problem(tmp_path: Path, content: str, message: str) -> None:
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(InputError, match="availability trace .*bad.json") as exc:
        read_trace(p)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_missing_and_binary_trace_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_trace(tmp_path / "absent.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InputError, match="not UTF-8"):
        read_trace(tmp_path / "bin.json")


def test_generation_is_deterministic_per_seed_and_zone() -> None:
    a = generate_trace("us-east-1a", 200, seed=3)
    assert a == generate_trace("us-east-1a", 200, seed=3)
    assert a.data != generate_trace("us-east-1a", 200, seed=4).data
    assert a.data != generate_trace("us-east-1b", 200, seed=3).data
    # a zone's trace does not depend on which other zones are generated with it
    assert generate_traces(["x", "us-east-1a"], 200, seed=3)["us-east-1a"] == a


def test_generated_statistics_match_the_published_facts() -> None:
    fractions, ups, downs = [], [], []
    for i in range(12):
        name = f"zone-{i}"
        p = zone_params(7, name)
        assert 0.7 <= p.mean_available_hours <= 10.0 and 1.4 <= p.mean_preempted_hours <= 3.1
        assert FRACTION_AVAILABLE[0] <= p.fraction_available <= FRACTION_AVAILABLE[1]
        st = spell_stats(generate_trace(name, 24 * 400, seed=7))  # 400 days: long-run averages settle
        # the trace's own statistics follow its parameters
        assert st.fraction_available == pytest.approx(p.fraction_available, abs=0.05)
        assert st.mean_available_spell_hours == pytest.approx(p.mean_available_hours, rel=0.15)
        assert st.mean_preempted_spell_hours == pytest.approx(p.mean_preempted_hours, rel=0.15)
        fractions.append(st.fraction_available)
        ups.append(st.mean_available_spell_hours)
        downs.append(st.mean_preempted_spell_hours)
    assert min(fractions) >= 0.15 and max(fractions) <= 0.92
    assert min(ups) >= 0.6 and max(ups) <= 11.0
    assert min(downs) >= 1.2 and max(downs) <= 3.4
    assert statistics.pstdev(fractions) > 0.05  # zones differ


def test_spell_stats_by_hand() -> None:
    t = AvailabilityTrace(3600, (1, 1, 0, 0, 0, 2, 2, 2, 2, 0))
    st = spell_stats(t)
    assert st.fraction_available == pytest.approx(0.6)
    assert st.mean_available_spell_hours == pytest.approx(3.0)  # spells of 2 and 4 h
    assert st.mean_preempted_spell_hours == pytest.approx(2.0)  # spells of 3 and 1 h
    assert (st.available_spells, st.preempted_spells) == (2, 2)


def test_trace_dir_assignment(tmp_path: Path) -> None:
    for name, data in {"a": [1, 0], "b": [0, 1], "us-east1": [1, 1]}.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({"metadata": {"gap_seconds": 600}, "data": data}))
    regions = ["gcp/asia-east1", "gcp/us-central1", "gcp/us-east1", "gcp/us-west1"]
    got = load_trace_dir(tmp_path, regions, {"gcp/us-west1": "b.json"})
    assert got["gcp/us-west1"].name == "b"  # explicit map
    assert got["gcp/us-east1"].name == "us-east1"  # same name
    assert got["gcp/asia-east1"].name == "a" and got["gcp/us-central1"].name == "a"  # spare files, cycling
    with pytest.raises(InputError, match="not in the simulated market"):
        load_trace_dir(tmp_path, regions, {"gcp/nowhere": "a.json"})
    with pytest.raises(InputError, match="no such directory"):
        load_trace_dir(tmp_path / "nope", regions)


def test_risk_learned_from_traces() -> None:
    calm = AvailabilityTrace(3600, (1,) * 200 + (0,) * 2)
    stormy = AvailabilityTrace(3600, (1, 0) * 100)
    r = risk_from_traces({"gcp/calm": calm, "gcp/stormy": stormy})
    assert r["gcp/stormy"].preemptions_per_hour > 5 * r["gcp/calm"].preemptions_per_hour
    assert r["gcp/stormy"].observed_preemptions == 100
    est = OnlineRiskEstimator(["gcp/x"], gap_hours=1.0)
    prior = est.risk("gcp/x").preemptions_per_hour
    assert prior == pytest.approx(1 / 3.0)  # the prior: a 3 h mean available spell
    for a in [True] * 50:
        est.observe({"gcp/x": a})
    assert est.risk("gcp/x").preemptions_per_hour < prior


def test_traces_cli_generate_and_stats(tmp_path: Path, capsys) -> None:
    from spotshift.cli import main

    assert (
        main(["traces", "generate", str(tmp_path), "z1", "z2", "--hours", "240", "--seed", "2", "--json"])
        == 0
    )
    gen = json.loads(capsys.readouterr().out)["traces"]
    assert set(gen) == {"z1", "z2"} and (tmp_path / "z1.json").is_file()
    assert main(["traces", "stats", str(tmp_path / "z1.json"), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)["traces"][str(tmp_path / "z1.json")]
    assert st["fraction_available"] == gen["z1"]["fraction_available"] and st["hours"] == 240
    (tmp_path / "bad.json").write_text('{"metadata": {}, "data": [1]}')
    assert main(["traces", "stats", str(tmp_path / "bad.json")]) == 2
    assert "missing metadata.gap_seconds" in capsys.readouterr().err
    assert main(["traces", "generate", str(tmp_path), "a/b"]) == 2
