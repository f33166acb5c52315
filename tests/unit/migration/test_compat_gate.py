"""The move's compatibility gate (:mod:`spotshift.migration.compat`), without trainers: a checkpoint
written by a known runtime in the source, the target's runtime declared, the matrix in the warehouse."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pytest

from spotshift import registry, warehouse
from spotshift.checkpoint import compat
from spotshift.cli import main
from spotshift.clock import virtual_now
from spotshift.migration.compat import check_move, record_probe
from spotshift.migration.plan import MovePlan
from spotshift.migration.run import begin_move
from spotshift.migration.state import ShadowOptions, local_env
from spotshift.migration.state import load as load_move
from tests.migration_support import AWS, AZURE, JOB, declare_world, write_checkpoint_in

WRITER = {"torch": "2.13.0+cpu", "python": "3.11.9"}
AZURE_RT = {"name": "azure", "torch": "2.9.1", "python": "3.10", "cuda": "12.1", "image": "pytorch:2.9"}


@pytest.fixture
def world(spotshift_home: Path) -> Any:
    declare_world(spotshift_home)
    registry.upsert(compat.SECTION, AZURE_RT)
    write_checkpoint_in(AWS, versions=WRITER)
    return local_env(run_id="run-1")


def _plan(trigger: str = "price") -> MovePlan:
    return MovePlan(
        job=JOB,
        trigger=trigger,
        from_location=AWS,
        to_location=AZURE,
        market="spot",
        instance_type="p4d.24xlarge",
        price_usd_hour=4.0,
        gpu_model="A100-40GB",
        gpu_count=8,
        snapshot_id="snap-1",
        run_key=f"{JOB}:{AWS}->{AZURE}:snap-1",
    )


def _facts() -> list[tuple[str, str, str]]:
    with warehouse.connect() as con:
        return con.execute(
            f"SELECT run_id, verdict, target_runtime FROM {compat.TABLE} ORDER BY recorded_at, verdict"
        ).fetchall()


def _known_bad() -> None:
    src = compat.Runtime.from_versions(WRITER, declared_by="checkpoint")
    tgt = compat.runtime_for(AZURE)
    fact = compat.compat_fact(
        run_id="old-run",
        job=JOB,
        checkpoint_id="s0000000005-x",
        source_location=AWS,
        target_location=AZURE,
        source=src,
        target=tgt,
        verdict=compat.KNOWN_BAD,
        reason="probation failed in the target: unpickling error",
        recorded_at=virtual_now(),
    )
    warehouse.record_facts({compat.TABLE: [fact]})


def test_an_unproven_pair_is_probed_and_the_probe_is_in_the_facts(world: Any) -> None:
    check = check_move(world, _plan())
    assert (check.verdict, check.probe) == (compat.UNPROVEN, True)
    assert check.source["torch"] == "2.13.0+cpu" and check.target["declared_by"] == "azure"
    assert _facts() == [("run-1", compat.PROBING, compat.runtime_for(AZURE).key)]
    state = begin_move(world, _plan(), ShadowOptions(shadow_steps=4))
    assert state.compat is not None and state.compat["probe"] is True
    assert (
        record_probe(world, state, passed=True, reason="probation matched the shadow comparison") == "proven"
    )
    with warehouse.connect() as con:
        after = compat.verdict(compat.load_matrix(con), *check.runtimes())
    assert after.verdict == compat.PROVEN and "run-1" in after.reason
    assert check_move(world, _plan()).verdict == compat.PROVEN  # the next move goes without a probe


def test_a_failed_probe_marks_the_pair_known_bad_unless_the_target_was_perturbed(world: Any) -> None:
    perturbed = begin_move(world, _plan(), ShadowOptions(shadow_steps=4, perturb_learning_rate=0.05))
    assert record_probe(world, perturbed, passed=False, reason="loss diverged") is None
    state = begin_move(world, _plan(), ShadowOptions(shadow_steps=4))
    assert record_probe(world, state, passed=False, reason="probation failed in the target: x") == "known_bad"
    with pytest.raises(compat.IncompatibleCheckpoint, match="refused"):
        check_move(world, _plan())


def test_a_move_without_probation_goes_untested_and_proves_nothing(world: Any) -> None:
    check = check_move(world, _plan("preemption"))
    assert (check.verdict, check.probe) == (compat.UNPROVEN, False) and "untested" in check.reason
    state = begin_move(world, _plan("preemption"))
    assert record_probe(world, state, passed=True, reason="ok") is None
    assert _facts() == []


def test_same_runtime_goes_without_a_probe(world: Any) -> None:
    registry.remove(compat.SECTION, "azure")
    write_checkpoint_in(AWS, step=20)  # written by this process: the target's runtime too
    check = check_move(world, _plan())
    assert (check.verdict, check.probe) == (compat.SAME, False) and _facts() == []


def test_a_known_bad_pair_is_refused_before_the_move_begins(world: Any) -> None:
    _known_bad()
    with pytest.raises(compat.IncompatibleCheckpoint) as err:
        begin_move(world, _plan())
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"move {JOB} to {AZURE} refused: checkpoint s0000000010-")
    assert "unpickling error" in line
    assert load_move(JOB) is None  # never begun: nothing for a rollback to undo


def test_spotshift_move_exits_2_on_a_known_bad_pair(world: Any) -> None:
    # the job has run in AWS (its checkpoint there): a move by hand to Azure is refused, one line, exit 2
    warehouse.record_facts(
        {
            "raw.checkpoints": [
                {"job": JOB, "checkpoint_id": "s0000000010-x", "step": 10, "location": AWS,
                 "url": "x", "created_at": virtual_now()}
            ]
        }
    )  # fmt: skip
    _known_bad()
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["move", JOB, "--to", AZURE])
    assert code == 2
    (line,) = err.getvalue().strip().splitlines()
    assert "refused" in line and "failed to resume" in line
    assert load_move(JOB) is None
