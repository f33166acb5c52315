"""Fencing of run-level locks in PostgreSQL (issue 17 item 4): a holder whose lock session ends while
it lives (server restart, network cut; here ``pg_terminate_backend``) is told within the watch
interval, and a trainer in that state stops (exit 4, ``lock_lost``) without committing a checkpoint
after the cut, so a second trainer can take the lock safely."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg2
import pytest

from spotshift import runlocks
from spotshift.checkpoint import fence
from spotshift.cli import main
from spotshift.training.backend import EXIT_LOCK_LOST

REPO = Path(__file__).resolve().parents[2]

_PID_SQL = (
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
    "AND ((classid::bigint << 32) | objid::bigint) = hashtextextended(%s, 0)"
)

# a Session with a tiny model, checkpointing every step, until it is stopped from outside
_TRAINER = """
import sys, time, torch
from torch import nn
from spotshift.checkpointing import Session
s = Session("fenced", "gcp/us-central1", store_url=sys.argv[1], workdir=sys.argv[2], watchers={},
            checkpoint_every_steps=1)
model = nn.Linear(4, 4)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
with s:
    s.register(model=model, optimizer=opt)
    step = s.restore()
    while step < 10_000:
        loss = model(torch.randn(2, 4)).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
        step += 1
        s.step_done(step, tokens=2, loss=float(loss))
        print(step, flush=True)
        time.sleep(0.1)
"""


def _terminate_holder(url: str, name: str) -> None:
    """End the PostgreSQL session that holds run lock ``name``, as a restart or a network cut would."""
    con = psycopg2.connect(url)
    con.autocommit = True
    try:
        with con.cursor() as cur:
            cur.execute(_PID_SQL, (f"spotshift/run-lock/{name}",))
            pids = [row[0] for row in cur.fetchall()]
            assert len(pids) == 1, pids
            cur.execute("SELECT pg_terminate_backend(%s)", (pids[0],))
    finally:
        con.close()


def _commits(root: Path) -> set[Path]:
    return {p for p in root.rglob("COMMIT") if "fenced" in p.as_posix()}


@pytest.mark.services
def test_watch_reports_a_terminated_lock_session_within_the_interval(
    spotshift_home: Path,
    scratch_database: str,  # noqa: F811
) -> None:
    assert main(["home", "init", "--postgres", scratch_database]) == 0
    lock = runlocks.acquire("cut")
    assert lock is not None and lock.alive()
    lost = threading.Event()
    calls: list[float] = []
    lock.watch(lambda: (calls.append(time.monotonic()), lost.set()), interval_s=0.5)
    fence.install("cut", lock.alive)
    try:
        fence.check("cut")  # held: commits go through
        _terminate_holder(scratch_database, "cut")
        cut = time.monotonic()
        assert lost.wait(3.0), "on_lost was not called after the lock's session ended"
        assert calls[0] - cut <= 0.5 + 1.0  # within the interval (+ the probe's own time)
        with pytest.raises(fence.LockLost):
            fence.check("cut")  # lost: a commit is refused synchronously
        time.sleep(1.2)
        assert len(calls) == 1  # once
        other = runlocks.acquire("cut", wait_s=5)
        assert other is not None  # the lock is free for another holder
        other.release()
    finally:
        fence.remove("cut")
        lock.release()


@pytest.mark.services
def test_trainer_whose_lock_is_cut_stops_without_committing_and_frees_the_job(
    spotshift_home: Path,
    scratch_database: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    assert main(["home", "init", "--postgres", scratch_database]) == 0
    store, work = tmp_path / "store", tmp_path / "work"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _TRAINER, store.as_uri(), str(work)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        while int(proc.stdout.readline() or "-1") < 5:  # a few committed checkpoints first
            assert proc.poll() is None, "the trainer ended early"
        assert runlocks.held("fenced") and _commits(tmp_path)
        _terminate_holder(scratch_database, "fenced")
        time.sleep(0.05)  # a commit whose fence check passed just before the cut may still land
        before = _commits(tmp_path)
        cut = time.monotonic()
        proc.stdout.read()
        code = proc.wait(timeout=runlocks.WATCH_INTERVAL_S + 10)
        assert time.monotonic() - cut <= runlocks.WATCH_INTERVAL_S + 2.0
    finally:
        proc.kill()
    assert code == EXIT_LOCK_LOST
    assert json.loads((work / "session.json").read_text())["status"] == "lock_lost"
    assert _commits(tmp_path) == before, "a checkpoint was committed after the lock was lost"
    second = runlocks.acquire("fenced", wait_s=5)
    assert second is not None  # a second trainer can take the job now
    second.release()
