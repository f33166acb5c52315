"""A cutover with ``--model`` changes what the endpoint declares (issue 15, failback of a new model).

Promotion (the router's window or ``cutover status`` on the clock) makes the endpoint declare the
new checkpoint, so the autoscaler's launches (no ``--model``: ``spotshift serve`` serves the
declaration) and the follower's target launches serve it; a failback declares the old one again
and the follower brings the source back on it; a rollback before promotion leaves the declaration
as it was. All through the cutover library (:mod:`spotshift.migration.endpoint_cutover`) and the
state's read-modify-write (:func:`spotshift.serving.cutover_state.update_state`).
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from spotshift.clock import load_clock, virtual_now
from spotshift.migration.endpoint_cutover import StartOptions, check, failback, rollback, start
from spotshift.serving import control
from spotshift.serving import cutover as co
from spotshift.serving import replica_api as api
from spotshift.serving.endpoints import Endpoint, add_endpoint, get_endpoint, set_endpoint_model
from spotshift.serving.scaling_types import Launch, LocationQuote, ScalerMemory, ScalingDecision
from tests.unit.serving.test_cutover import window
from tests.unit.serving.test_cutover_new_checkpoint import NEW, OLD, CheckpointLauncher
from tests.unit.serving.test_cutover_replicas import SOURCE, TARGET


class DeclaredLauncher(CheckpointLauncher):
    """``spotshift serve``'s contract: a launch serves its ``--model``, else what the endpoint declares
    when it starts (``commands._serve``: ``model_ref = endpoint.model``)."""

    def settle(self) -> None:
        for i in self.pending:
            ref = i.model or get_endpoint(i.endpoint).model
            api.register(
                api.ReplicaRecord(
                    i.launch_id, i.endpoint, "http://127.0.0.1:1", i.location, i.market, i.usd_per_hour,
                    os.getpid(), time.time(), ref.rsplit("/", 1)[-1],
                )
            )  # fmt: skip
        self.pending = []
        self._sample()


def _paths(home: Path) -> tuple[str, str]:
    ckpts = f"{home}/stores/x/checkpoints/tiny"
    return f"{ckpts}/{OLD}", f"{ckpts}/{NEW}"


def _setup(home: Path) -> tuple[str, str]:
    old, new = _paths(home)
    add_endpoint(Endpoint("chat", model=old, slo_ms=1000.0))
    for k in range(4):
        api.register(
            api.ReplicaRecord(
                f"src-{k}", "chat", "http://127.0.0.1:1", SOURCE, "on_demand", 3.0, os.getpid(), time.time(), OLD
            )
        )  # fmt: skip
    st = start(
        "chat",
        StartOptions(to_location=TARGET, model=new, shadow="none", stages="50:1h,100:0", usd_per_hour=1.0),
        record=False,
    )
    assert st.source_model == old and not st.model_declared
    return old, new


def _window() -> co.CutoverState:
    """One passing analysis window, decided as the router's tick does."""
    plan = co.require_state("chat").plan_usd_per_mtok
    return co.update_state("chat", lambda st: co.decide(st, window(tgt_cpm=plan), virtual_now()))


def _promote() -> co.CutoverState:
    _window()
    load_clock().advance(3601).save()  # the 50 % stage's hold passes on the virtual clock
    st = _window()  # the router's next passing window promotes
    assert st.phase == "promoted", (st.phase, st.reason)
    return st


def _checkpoints() -> dict[str, int]:
    out: dict[str, int] = {}
    for r in api.live_replicas("chat"):
        out[f"{r.location}:{r.checkpoint}"] = out.get(f"{r.location}:{r.checkpoint}", 0) + 1
    return out


def _autoscaler_launch(launcher: DeclaredLauncher, monkeypatch: pytest.MonkeyPatch) -> None:
    """The autoscaler applies a one-replica launch at the target location (no warehouse row here)."""
    monkeypatch.setattr(control, "record_scaling_decision", lambda con, d: True)
    decision = ScalingDecision(
        "chat", datetime(2026, 1, 5, tzinfo=UTC), "s", "scale_up", (Launch(TARGET, "spot", 1, "demand"),),
        (), (), (), (), (), 0.0, 0.0, 0.0, 0.0, 0.0, (), ScalerMemory(),
    )  # fmt: skip
    control.apply_scaling(decision, launcher, quotes={TARGET: LocationQuote(TARGET, 3.0, 1.0)})


def test_promotion_declares_the_new_model_and_failback_the_old_one(
    spotshift_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = _setup(spotshift_home)
    launcher = DeclaredLauncher("chat")
    _window()
    assert get_endpoint("chat").model == old  # live at 50 %: still the old model declared
    st = _promote()
    assert get_endpoint("chat").model == new and st.model_declared
    co.follow(st, launcher)
    launcher.settle()
    # the target on the new model, the source at its floor
    assert _checkpoints() == {f"{SOURCE}:{OLD}": 1, f"{TARGET}:{NEW}": 4}
    _autoscaler_launch(launcher, monkeypatch)
    launcher.settle()
    assert _checkpoints()[f"{TARGET}:{NEW}"] == 5  # the autoscaler's replica serves the new model
    # the warm source replica dies in the failback window: the follower brings it back on the OLD model
    api.deregister("chat", next(r.replica_id for r in api.live_replicas("chat") if r.location == SOURCE))
    co.follow(co.require_state("chat"), launcher)
    launcher.settle()
    assert _checkpoints()[f"{SOURCE}:{OLD}"] == 1

    back = failback("chat", record=False)
    assert back.phase == "failed_back" and not back.model_declared
    assert get_endpoint("chat").model == old
    co.follow(back, launcher)  # the source back to the steady state on the old model, the target drained
    launcher.settle()
    assert _checkpoints() == {f"{SOURCE}:{OLD}": 4}
    _autoscaler_launch(launcher, monkeypatch)
    launcher.settle()
    assert _checkpoints()[f"{TARGET}:{OLD}"] == 1  # and the autoscaler's launches the old one again


def test_a_rollback_before_promotion_leaves_the_declaration(spotshift_home: Path) -> None:
    old, _ = _setup(spotshift_home)
    _window()
    st = rollback("chat", "pager says so", record=False)
    assert st.phase == "rolled_back" and not st.model_declared
    assert get_endpoint("chat").model == old
    assert check("chat", record=False).phase == "rolled_back" and get_endpoint("chat").model == old


def test_a_promotion_on_the_clock_declares_it_and_a_lost_declaration_is_mended(spotshift_home: Path) -> None:
    old, new = _setup(spotshift_home)
    _window()
    load_clock().advance(3601).save()
    st = check("chat", record=False)  # cutover status / the Dagster sensor advance on the clock
    assert st.phase == "promoted" and get_endpoint("chat").model == new
    # a crash after the state was saved and before the declaration was written: the next update mends it
    assert set_endpoint_model("chat", old)
    co.save_state(co.CutoverState.from_dict({**st.to_dict(), "model_declared": False}))
    check("chat", record=False)
    assert get_endpoint("chat").model == new
    # a failback restores the old model only while the declaration still names the cutover's
    add_endpoint(Endpoint("chat", model=f"{old}-other", slo_ms=1000.0), replace=True)
    co.save_state(co.CutoverState.from_dict({**co.require_state("chat").to_dict(), "model_declared": True}))
    failback("chat", record=False)
    assert get_endpoint("chat").model == f"{old}-other"


def test_set_endpoint_model_changes_only_what_it_is_asked(spotshift_home: Path) -> None:
    old, new = _paths(spotshift_home)
    assert set_endpoint_model("nobody", new) is False  # not declared: nothing written
    add_endpoint(Endpoint("chat", model=old, slo_ms=1000.0))
    assert set_endpoint_model("chat", new, only_if="something-else") is False
    assert set_endpoint_model("chat", new) is True and get_endpoint("chat").model == new
    assert set_endpoint_model("chat", new) is False  # already declared
