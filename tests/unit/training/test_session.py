"""``spotshift.checkpointing.Session`` in process: state dicts through the checkpoint format, RNGs,
cadence, the emergency checkpoint before ``should_stop``, and a bitwise resume."""

from __future__ import annotations

import math
import os
import random
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from spotshift.checkpoint.format import StoredCheckpoint, list_checkpoints
from spotshift.checkpointing import Session, decode_state, encode_state
from spotshift.errors import ConfigError
from spotshift.sync.store_url import open_store

LOC = "gcp/us-central1"


def make(seed: int = 0) -> tuple[nn.Module, Any, Any]:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    return model, opt, sched


def train_step(model: nn.Module, opt: Any, sched: Any) -> float:
    # every RNG the session restores takes part: torch (batch, dropout), numpy and Python (noise)
    x = torch.randn(4, 8) + float(np.random.rand()) + random.random()
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    return float(loss.detach())


def session(tmp: Path, name: str, **kw: Any) -> Session:
    kw.setdefault("watchers", {})
    return Session("own", LOC, store_url=(tmp / name).as_uri(), workdir=tmp / f"work-{name}", **kw)


def run(s: Session, total: int, *, interrupt_at: int | None = None) -> tuple[int, list[float]]:
    """Train with the issue's loop; SIGTERM ourselves after step ``interrupt_at``; returns (stop step, losses)."""
    model, opt, sched = make()
    losses = []
    with s:
        s.register(model=model, optimizer=opt, scheduler=sched)
        start = s.restore()
        for step in range(start, total):
            losses.append(train_step(model, opt, sched))
            if step + 1 == interrupt_at:
                # the periodic checkpoints so far reach the region store first: they upload in the
                # background, and an emergency checkpoint drops the uploads still queued (it supersedes them)
                assert s.tiers.flush(timeout_s=60)
                os.kill(os.getpid(), signal.SIGTERM)  # the handler only sets a flag
            s.step_done(step + 1, tokens=32, loss=losses[-1])
            if s.should_stop:
                # the emergency checkpoint of this very step is committed in the region store already
                ids = list_checkpoints(s.region, "own")
                assert ids and StoredCheckpoint(s.region, "own", ids[-1]).step == step + 1
                return step + 1, losses
    return total, losses


def final_hash(store: Path) -> tuple[int, str]:
    st = open_store(store.as_uri())
    ck = StoredCheckpoint(st, "own", list_checkpoints(st, "own")[-1])
    return ck.step, ck.content_hash


def test_state_dicts_round_trip_through_json_and_tensors() -> None:
    model, opt, sched = make()
    train_step(model, opt, sched)
    doc = {
        "opt": opt.state_dict(),
        "sched": sched.state_dict(),
        "np": np.arange(6, dtype=np.int32).reshape(2, 3),
        "misc": {1: (1.5, "x"), "inf": math.inf, "none": None, "dtype": torch.float16},
    }
    tensors: dict[str, Any] = {}
    enc = encode_state(doc, tensors, what="t")
    import json

    back = decode_state(json.loads(json.dumps(enc, allow_nan=False)), tensors, what="t")
    assert back["misc"] == {1: (1.5, "x"), "inf": math.inf, "none": None, "dtype": torch.float16}
    assert list(back["opt"]["state"]) == [0, 1, 2, 3] and back["sched"] == sched.state_dict()
    assert torch.equal(back["opt"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert isinstance(back["np"], np.ndarray) and back["np"].tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ConfigError, match=r"t: value at x/0 is a object"):
        encode_state({"x": [object()]}, {}, what="t")


def test_sigterm_emergency_checkpoint_then_bitwise_resume(spotshift_home: Path, tmp_path: Path) -> None:
    total = 12
    ref_steps, ref_losses = run(session(tmp_path, "ref", checkpoint_every_steps=5), total)
    assert ref_steps == total
    ref = final_hash(tmp_path / "ref")
    assert ref[0] == total

    stop, first = run(session(tmp_path, "cut", checkpoint_every_steps=5), total, interrupt_at=7)
    assert stop == 7
    st = open_store((tmp_path / "cut").as_uri())
    kinds = [StoredCheckpoint(st, "own", c).meta["kind"] for c in list_checkpoints(st, "own")]
    assert kinds == ["periodic", "emergency"]  # step 5 on the cadence, step 7 on the notice
    versions = StoredCheckpoint(st, "own", list_checkpoints(st, "own")[-1]).meta["versions"]
    assert (
        versions["devices"] == "cpu"
        and versions["dtypes"] == "float32"
        and versions["torch"] == torch.__version__
    )
    events = list(st.list_keys("events/preemption/"))
    assert len(events) == 1  # without the wrapper, the session writes the notice event itself

    s2 = session(tmp_path, "cut", checkpoint_every_steps=5)
    _, rest = run(s2, total)
    assert s2.result["resumed_from"]["step"] == 7
    assert first + rest == ref_losses  # the same floats at every step
    assert final_hash(tmp_path / "cut") == ref  # the same content hash: weights, moments, RNGs, schedule

    from spotshift import warehouse

    with warehouse.connect() as con:  # a lone session moves its facts into the warehouse when it closes
        usage = con.execute(
            "select steps, tokens, ended_in_preemption from raw.compute_usage where job = 'own' order by started_at"
        ).fetchall()
        pre = con.execute("select notice_kind, step from raw.preemptions").fetchall()
    assert usage[-2:] == [(7, 7 * 32, True), (5, 5 * 32, False)] and pre == [("sigterm", 7)]


def test_restore_refuses_other_objects_and_nothing_registered(spotshift_home: Path, tmp_path: Path) -> None:
    run(session(tmp_path, "a", checkpoint_every_steps=2), 2)
    model, opt, _ = make()
    with session(tmp_path, "a") as s:
        s.register(model=model, optimizer=opt)
        with pytest.raises(
            ConfigError,
            match="holds model, optimizer, scheduler, but the session registered model, optimizer$",
        ):
            s.restore()
    with session(tmp_path, "b") as s, pytest.raises(ConfigError, match="has no state_dict"):
        s.register(model=object())
    with session(tmp_path, "b") as s:
        s.restore()
        with pytest.raises(ConfigError, match="nothing registered"):
            s.step_done(1)
            s.save()


def test_until_step_stops_with_a_committed_checkpoint(spotshift_home: Path, tmp_path: Path) -> None:
    stop, _ = run(session(tmp_path, "u", checkpoint_every_steps=100, until_step=4), 10)
    assert stop == 4
    assert final_hash(tmp_path / "u")[0] == 4
