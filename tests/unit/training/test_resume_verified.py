"""``spotshift train`` resumes from the newest checkpoint that verifies (issue 11): a forged newest one
is skipped with its reason, never trusted and never a reason to start over; only a first run creates
the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spotshift.checkpoint.format import list_checkpoints
from spotshift.cli import main
from spotshift.home import region_store_url
from spotshift.sync.store_url import open_store
from spotshift.training.backend import default_workdir
from tests.training_support import declare_tiny_job, forge_checkpoint

GCP = "gcp/us-central1"

pytestmark = pytest.mark.slow


def train(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict | str]:
    code = main(["train", "tiny", "--location", GCP, *args])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 and "--json" in args else err)


def test_resume_skips_a_forged_newest_checkpoint_and_says_why(
    spotshift_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    declare_tiny_job(spotshift_home, total_steps=200, every=10)
    key = spotshift_home / "keys" / "kek.key"
    assert not key.exists()
    code, _ = train(capsys, "--steps", "20", "--json")
    assert code == 0 and key.exists()  # the first training run of a job creates the key
    store = open_store(region_store_url(GCP))
    s10, s20 = list_checkpoints(store, "tiny")
    forge_checkpoint(store, "tiny", s20)  # type: ignore[arg-type]

    code, result = train(capsys, "--steps", "5", "--json")
    assert code == 0, result
    assert result["resumed_from"]["checkpoint_id"] == s10  # type: ignore[index]
    (skipped,) = result["skipped_checkpoints"]  # type: ignore[index]
    assert skipped["checkpoint_id"] == s20 and "metadata does not match its seal" in skipped["reason"]
    log = default_workdir("tiny", GCP) / "trainer.log"
    assert f"skipped checkpoint tiny/{s20}" in log.read_text()

    # every checkpoint forged: refuse (exit 2) rather than silently start again from step 0
    for ck in list_checkpoints(store, "tiny"):
        forge_checkpoint(store, "tiny", ck)  # type: ignore[arg-type]
    code, err = train(capsys, "--steps", "5")
    assert code == 2 and "verifies" in err and "tiny" in err, err  # type: ignore[operator]


def test_resume_never_creates_a_key(
    spotshift_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    declare_tiny_job(spotshift_home, total_steps=200, every=10)
    assert train(capsys, "--steps", "10")[0] == 0
    missing = tmp_path / "mistyped.key"
    code, err = train(capsys, "--steps", "5", "--key-provider", f"local:{missing}")
    assert code == 2 and f"key file {missing} does not exist" in err, err  # type: ignore[operator]
    assert not missing.exists()
    # a fresh start (no checkpoint to resume) is a first run: it may create its key
    code, _ = train(capsys, "--steps", "5", "--resume", "none", "--key-provider", f"local:{missing}")
    assert code == 0 and missing.exists()
