"""``spotshift move``: the whole lifecycle without Dagster, with real trainers.

Same world as the Dagster migration tests (tests/migration_support.py); no Dagster instance anywhere.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from spotshift import warehouse
from spotshift.cli import main
from spotshift.clock import load_clock
from spotshift.migration.state import load as load_move
from spotshift.placement.state import load_state
from spotshift.training.backend import open_backend
from spotshift.training.runs import latest_ref
from tests.migration_support import (
    AWS,
    AWS2,
    AZURE,
    JOB,
    START,
    declare_world,
    live_trainers,
    stop_all,
    wait_for_checkpoint,
    write_quotes,
)


@pytest.fixture
def world(spotshift_home: Path) -> Iterator[Any]:
    declare_world(spotshift_home)
    backend = open_backend("local")
    try:
        yield backend
    finally:
        stop_all(backend)


def _move(*argv: str) -> tuple[int, dict[str, Any], str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["move", JOB, *argv, "--json"])
    return code, (json.loads(out.getvalue()) if out.getvalue().strip() else {}), err.getvalue()


def _migrations() -> dict[str, tuple[str, int | None]]:
    with warehouse.connect() as con:
        rows = con.execute("SELECT migration_id, status, bytes_moved FROM raw.migrations").fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


@pytest.mark.slow
def test_move_places_moves_and_rolls_back_without_dagster(world: Any) -> None:
    # a job that is not running is placed: no drain, no shadow
    code, placed, _ = _move("--to", AWS)
    assert code == 0, placed
    assert placed["status"] == "cut_over" and placed["trigger"] == "place"
    assert "validate_shadow" not in placed["steps"] and "drain_source" in placed["steps"]
    (live,) = live_trainers(world)
    assert live.location == AWS and load_state(JOB).location == AWS
    wait_for_checkpoint(step=20)

    # a price move: the same steps as migration_job, the same facts
    load_clock().advance(7 * 24 * 3600).save()
    write_quotes("snap-2", START + timedelta(days=7), {AWS: 10.0, AWS2: 12.0, AZURE: 4.0})
    code, moved, _ = _move("--to", AZURE, "--shadow-steps", "6")
    assert code == 0, moved
    assert moved["status"] == "cut_over" and moved["trigger"] == "price"
    assert moved["steps"] == [
        "fingerprint_dataset",
        "replicate_dataset",
        "drain_source",
        "carry_checkpoint",
        "resume_in_target",
        "validate_shadow",
        "go_live",
    ]
    assert all(v["passed"] for name, v in moved["shadow"].items() if name != "checkpoint_bytes")
    (live,) = live_trainers(world)
    state = load_state(JOB)
    assert live.location == AZURE and (state.location, state.status, state.last_move["from"]) == (
        AZURE,
        "running",
        AWS,
    )
    assert state.cooldown_until is not None  # a cut-over price move starts the cooldown
    status, moved_bytes = _migrations()[moved["run_key"]]
    assert status == "cut_over" and moved_bytes and moved_bytes > 0
    recorded = load_move(JOB)
    assert recorded is not None and recorded.status == "cut_over" and recorded.bytes_moved == moved_bytes

    # a perturbed target fails the blocking shadow rules: rolled back, the source resumed, target unfit
    wait_for_checkpoint(step=latest_ref(JOB, AZURE)["step"] + 10)  # type: ignore[index]
    code, failed, _ = _move("--to", AWS2, "--shadow-steps", "6", "--perturb-learning-rate", "0.05")
    assert code == 1, failed
    assert failed["status"] == "rolled_back" and failed["shadow"]["loss_divergence"]["passed"] is False
    assert "loss_divergence" in failed["error"] and failed["unfit_until"]
    (live,) = live_trainers(world)
    state = load_state(JOB)
    assert live.location == AZURE and state.location == AZURE and AWS2 in state.unfit
    assert _migrations()[failed["run_key"]][0] == "rolled_back"
    assert load_move(JOB).status == "rolled_back"  # type: ignore[union-attr]


def test_move_refuses_a_target_without_an_offer(world: Any) -> None:
    code, _, err = _move("--to", "gcp/us-central1")
    assert code == 2 and "no quote for gcp/us-central1" in err and len(err.strip().splitlines()) == 1
    code, _, err = _move("--to", "nowhere")
    assert code == 2 and "provider/region" in err
    assert live_trainers(world) == [] and load_move(JOB) is None
