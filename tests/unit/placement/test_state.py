"""Per-job placement state: atomic JSON files, moves and cooldowns, unfit targets, bad files."""

from __future__ import annotations

import json
import multiprocessing as mp
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spotshift.errors import ConfigError, IntegrityError
from spotshift.placement import state

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def test_unplaced_by_default_and_roundtrip(spotshift_home: Path) -> None:
    st = state.load_state("llm-ft")
    assert st.status == "unplaced" and st.location is None and not st.running
    st = state.record_placement(
        "llm-ft",
        location="gcp/us-central1",
        market="spot",
        instance_type="a2-highgpu-8g",
        now=NOW,
        price_usd_hour=9.5,
    )
    assert st.running and st.version == 1 and st.last_move is None and st.cooldown_until is None
    again = state.load_state("llm-ft")
    assert again == st
    assert state.state_path("llm-ft") == spotshift_home / "placement" / "llm-ft.json"
    assert [s.job for s in state.list_states()] == ["llm-ft"]
    assert not list((spotshift_home / "placement").glob("*.tmp"))


def test_move_sets_last_move_and_cooldown(spotshift_home: Path) -> None:
    state.record_placement("j", location="gcp/us-central1", market="spot", instance_type="x", now=NOW)
    later = NOW + timedelta(hours=3)
    st = state.record_placement(
        "j",
        location="gcp/us-east1",
        market="spot",
        instance_type="x",
        now=later,
        trigger="price",
        run_key="j:gcp/us-central1->gcp/us-east1:snap",
        cooldown_hours=6,
    )
    assert st.last_move == {
        "from": "gcp/us-central1",
        "to": "gcp/us-east1",
        "at": later.isoformat(),
        "trigger": "price",
        "run_key": "j:gcp/us-central1->gcp/us-east1:snap",
    }
    assert st.cooldown_until_dt() == later + timedelta(hours=6)
    assert state.set_status("j", "preempted", now=later).running is False


def test_unfit_expires(spotshift_home: Path) -> None:
    st = state.mark_unfit(
        "j", "gcp/us-east1", until=NOW + timedelta(hours=2), reason="shadow check failed", now=NOW
    )
    assert st.unfit_at(NOW) == {
        "gcp/us-east1": f"unfit until {(NOW + timedelta(hours=2)).isoformat()}: shadow check failed"
    }
    assert st.unfit_at(NOW + timedelta(hours=3)) == {}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"job": "j", "status": "flying"}', "status 'flying'"),
        ('{"job": "j", "colour": "red"}', "unknown field(s) colour"),
        ('{"job": "other"}', "belongs to job 'other'"),
        ("[]", "expected a JSON object"),
    ],
)
def test_corrupt_state_files_are_named(spotshift_home: Path, content: str, message: str) -> None:
    p = state.state_path("j")
    p.parent.mkdir(parents=True)
    p.write_text(content)
    with pytest.raises(IntegrityError, match="placement state") as exc:
        state.load_state("j")
    assert message in str(exc.value)


def test_bad_values_are_refused_before_writing(spotshift_home: Path) -> None:
    with pytest.raises(IntegrityError, match="market 'cheap'"):
        state.record_placement("j", location="gcp/us-central1", market="cheap", instance_type="x", now=NOW)
    assert not state.state_path("j").exists()
    with pytest.raises(ConfigError):
        state.state_path("../escape")


def _bump(home: str, n: int) -> None:
    import os

    os.environ["SPOTSHIFT_HOME"] = home
    for _ in range(n):
        state.set_status("shared", "running", now=NOW)


def test_concurrent_updates_never_lose_a_write(spotshift_home: Path) -> None:
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_bump, args=(str(spotshift_home), 25)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert json.loads(state.state_path("shared").read_text())["version"] == 75
