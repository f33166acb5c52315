"""Progress displays: on stderr only, at a terminal or when forced, never with --quiet; --json stays pure."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spotshift.progress import NO_PROGRESS, RichProgress, progress_for


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_at_a_terminal_unless_quiet_or_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPOTSHIFT_PROGRESS", raising=False)
    assert progress_for(stream=io.StringIO()) is NO_PROGRESS  # piped: nothing
    assert isinstance(progress_for(stream=Tty()), RichProgress)
    assert progress_for(quiet=True, stream=Tty()) is NO_PROGRESS
    monkeypatch.setenv("SPOTSHIFT_PROGRESS", "never")
    assert progress_for(stream=Tty()) is NO_PROGRESS
    monkeypatch.setenv("SPOTSHIFT_PROGRESS", "always")
    assert isinstance(progress_for(stream=io.StringIO()), RichProgress)
    assert progress_for(quiet=True, stream=io.StringIO()) is NO_PROGRESS


def test_rich_display_shows_bytes_rate_and_notes() -> None:
    out = Tty()
    with RichProgress(out, force=True) as p:
        task = p.task("push corpus", total=8 * 1024 * 1024, unit="bytes")
        task.advance(4 * 1024 * 1024)
        steps = p.task("train llm-ft", total=60, unit="steps")
        steps.update(completed=30, note="loss 1.2345")
    text = out.getvalue()
    assert "push corpus" in text and "4 MiB/8 MiB" in text
    assert "train llm-ft" in text and "30/60 steps" in text and "loss 1.2345" in text


def test_sync_push_json_stdout_is_pure_and_progress_goes_to_stderr(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(3 << 20))
    exe = Path(sys.executable).with_name("spotshift")
    env = {**os.environ, "SPOTSHIFT_HOME": str(tmp_path / "home"), "SPOTSHIFT_PROGRESS": "always"}
    cmd = [
        str(exe),
        "sync",
        "push",
        str(src),
        (tmp_path / "store").as_uri(),
        "--dataset",
        "ds",
        "--no-record",
    ]
    shown = subprocess.run([*cmd, "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["dataset"] == "ds" and shown.stdout.count("\n") == 1
    assert "fingerprint src" in shown.stderr and "push ds" in shown.stderr and "MiB" in shown.stderr
    (src / "b.bin").write_bytes(os.urandom(1 << 20))
    quiet = subprocess.run([*cmd, "--json", "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    assert quiet.returncode == 0 and "push ds" not in quiet.stderr and json.loads(quiet.stdout)
    pulled = subprocess.run(
        [
            str(exe),
            "sync",
            "pull",
            (tmp_path / "store").as_uri(),
            str(tmp_path / "out"),
            "--json",
            "--no-record",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert pulled.returncode == 0 and "pull ds" in pulled.stderr and json.loads(pulled.stdout)
