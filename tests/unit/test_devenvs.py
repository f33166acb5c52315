"""Dev/test environments: an idle one hibernated (workspace snapshot verified in the region store,
process stopped) and resumed byte for byte in the cheapest suitable place; activity keeps it awake;
waste avoided per team; the command line."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from spotshift.cli import main
from spotshift.devenvs import activity, process, runtime, state
from spotshift.devenvs.env import DevEnv, add_devenv
from spotshift.errors import ConfigError
from tests.migration_support import write_quotes

T0 = datetime(2025, 3, 3, 9, tzinfo=UTC)
AWS, AZURE = "aws/us-east-1", "azure/eastus"


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _tree(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root``: sha256 and mode (the byte-for-byte witness)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = (
                hashlib.sha256(p.read_bytes()).hexdigest(),
                p.stat().st_mode & 0o777,
            )
    return out


@pytest.fixture
def workspace(spotshift_home: Path) -> Path:
    ws = spotshift_home / "ws" / "alice-notebook"
    (ws / "nb" / "data").mkdir(parents=True)
    (ws / "nb" / "train.ipynb").write_text('{"cells": []}\n' * 500)
    (ws / "nb" / "data" / "weights.bin").write_bytes(os.urandom(300_000))
    (ws / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (ws / "run.sh").chmod(0o755)
    (ws / "empty.txt").write_bytes(b"")
    write_quotes("snap-1", T0, {AWS: 10.0, AZURE: 11.0})  # on demand: 30 and 33 $/h for 8x A100
    return ws


def _declare(ws: Path, **kw: Any) -> DevEnv:
    env = DevEnv(
        name="alice-nb",
        workspace=str(ws),
        command="sleep 600",
        gpu_model="A100",
        gpu_count=8,
        idle_hours=4.0,
        team="research",
        allowed_locations=["aws/*", "azure/*"],
        **kw,
    )
    add_devenv(env)
    return env


def test_idle_env_hibernated_and_resumed_byte_for_byte(workspace: Path) -> None:
    _declare(workspace)
    before = _tree(workspace)
    doc = runtime.start("alice-nb", now=T0)
    assert doc["status"] == "running" and doc["location"] == AWS and doc["usd_hour"] == 30.0
    pid = doc["pid"]
    try:
        # idle 1 h: below the limit
        assert not activity.observe("alice-nb", now=T0 + timedelta(hours=1)).over_limit
        # the user's tools touch the heartbeat file at 2 h: awake again
        hb = Path(os.environ["SPOTSHIFT_HOME"]) / "devenvs" / "alice-nb.heartbeat"
        hb.write_text("x")
        act = activity.observe("alice-nb", now=T0 + timedelta(hours=2))
        assert act.active == ["heartbeat"] and act.idle_hours == 0.0
        # requests served count too
        (hb.parent / "alice-nb.requests").write_text("3")
        assert activity.observe("alice-nb", now=T0 + timedelta(hours=3)).active == ["3 requests"]
        assert not activity.observe("alice-nb", now=T0 + timedelta(hours=6)).over_limit  # 3 h idle
        # 4.5 h without activity: the policy applies
        doc = runtime.act_on_idle("alice-nb", now=T0 + timedelta(hours=7, minutes=30))
    except BaseException:
        process.stop(pid, None)
        raise
    assert doc["status"] == "hibernated" and not process.alive(pid, None)
    assert not workspace.exists()  # released: the snapshot in the region store is verified
    assert doc["snapshot"]["location"] == AWS and doc["snapshot"]["bytes_sent"] > 300_000
    assert "idle 4.50 h >= 4 h" in doc["events"][-1]["reason"]

    # waste avoided while it sleeps: 3 h x 8 GPUs at $30/h
    rep = runtime.waste_report(now=T0 + timedelta(hours=10, minutes=30))
    assert rep["teams"]["research"]["gpu_hours"] == pytest.approx(24.0)
    assert rep["teams"]["research"]["usd"] == pytest.approx(90.0)

    # prices moved: Azure is now the cheapest suitable place; resume there, byte for byte
    write_quotes("snap-2", T0 + timedelta(hours=10), {AWS: 12.0, AZURE: 9.0})
    doc = runtime.resume("alice-nb", now=T0 + timedelta(hours=10, minutes=30))
    try:
        assert doc["status"] == "running" and doc["location"] == AZURE and doc["usd_hour"] == 27.0
        assert doc["events"][-1]["bytes_replicated"] > 300_000  # the snapshot went to Azure's store first
        assert _tree(workspace) == before
        assert process.alive(doc["pid"], doc["pid_start"])
        rep = runtime.waste_report(now=T0 + timedelta(hours=20))
        assert rep["teams"]["research"]["gpu_hours"] == pytest.approx(24.0)  # awake again: no more avoided
    finally:
        runtime.hibernate("alice-nb", now=T0 + timedelta(hours=20))  # and stops the process
    assert not process.alive(doc["pid"], doc["pid_start"])


def test_cpu_use_counts_as_activity_and_cpu_policy_downsizes(workspace: Path) -> None:
    busy = f'{sys.executable} -c "import time\nt=time.time()\nwhile time.time()-t<30: pass"'
    env = DevEnv(
        name="bob-ci",
        workspace=str(workspace),
        command=busy,
        gpu_model="A100",
        gpu_count=8,
        idle_hours=1.0,
        team="platform",
        policy="cpu",
        location=AWS,
    )
    add_devenv(env)
    doc = runtime.start("bob-ci", now=T0)
    try:
        import time

        time.sleep(1.5)
        act = activity.observe("bob-ci", now=T0 + timedelta(hours=2))
        assert act.active and act.active[0].startswith("cpu") and not act.over_limit
        doc = runtime.downsize("bob-ci", now=T0 + timedelta(hours=3))
        assert doc["status"] == "downsized" and doc["usd_hour"] == pytest.approx(0.2016)
        assert workspace.exists()  # the cpu policy keeps the workspace, with a verified snapshot
        rep = runtime.waste_report(now=T0 + timedelta(hours=5))
        assert rep["teams"]["platform"]["usd"] == pytest.approx(2 * (30.0 - 0.2016))
        doc = runtime.resume("bob-ci", now=T0 + timedelta(hours=5))
        assert doc["status"] == "running" and doc["instance_type"] == "p4d.24xlarge"
    finally:
        process.stop(doc.get("pid"), doc.get("pid_start"))


def test_refusals(workspace: Path) -> None:
    with pytest.raises(ConfigError, match="not an absolute path"):
        DevEnv(name="x", workspace="rel", command="true", gpu_model="A100")
    with pytest.raises(ConfigError, match="policy 'nap'"):
        DevEnv(name="x", workspace=str(workspace), command="true", gpu_model="A100", policy="nap")
    with pytest.raises(ConfigError, match="is not a directory"):
        add_devenv(DevEnv(name="x", workspace=str(workspace / "nope"), command="true", gpu_model="A100"))
    _declare(workspace)
    with pytest.raises(ConfigError, match="declared: only a hibernated"):
        runtime.resume("alice-nb", now=T0)


def test_cli_walkthrough(workspace: Path) -> None:
    code, out, _ = _cli(
        "devenvs",
        "add",
        "carol-nb",
        "--workspace",
        str(workspace),
        "--command",
        "sleep 600",
        "--gpu-model",
        "A100",
        "--gpu-count",
        "8",
        "--idle-hours",
        "4",
        "--team",
        "vision",
    )
    assert code == 0 and "hibernate after 4 h idle" in out
    code, _, err = _cli(
        "devenvs", "add", "bad", "--workspace", str(workspace), "--command", "x", "--gpu-model", "Z9"
    )
    assert code == 2 and "not a known GPU model" in err and len(err.strip().splitlines()) == 1
    code, out, _ = _cli("devenvs", "start", "carol-nb", "--at", T0.isoformat())
    assert code == 0 and "running aws/us-east-1 $30.00/h" in out
    try:
        code, out, _ = _cli("devenvs", "check", "carol-nb", "--at", (T0 + timedelta(hours=5)).isoformat())
        assert code == 0 and "hibernated" in out
    finally:
        doc = state.load_env_state("carol-nb")
        process.stop(doc.get("pid"), doc.get("pid_start"))
    code, out, _ = _cli("devenvs", "report", "--at", (T0 + timedelta(hours=7)).isoformat())
    assert code == 0 and "team vision: 16.0 idle GPU-hours not paid, $60.00 avoided" in out
    code, out, _ = _cli(
        "devenvs", "resume", "carol-nb", "--json", "--at", (T0 + timedelta(hours=7)).isoformat()
    )
    assert code == 0 and json.loads(out)["status"] == "running"
    code, out, _ = _cli("devenvs", "hibernate", "carol-nb", "--at", (T0 + timedelta(hours=8)).isoformat())
    assert code == 0 and "hibernated" in out
