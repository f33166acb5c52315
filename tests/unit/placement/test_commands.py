"""``spotshift jobs add|list|show`` and ``spotshift placement plan`` (in-process CLI)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from spotshift import warehouse
from spotshift.cli import main
from spotshift.jobs import get_job
from tests.unit.placement.builders import make_quote

ADD = ["jobs", "add", "llm-ft", "--dataset", "corpus", "--total-steps", "2000", "--work-hours", "40"]


@pytest.fixture(autouse=True)
def corpus(spotshift_home: Path) -> None:
    """Jobs train on a declared dataset."""
    assert main(["datasets", "add", "corpus", str(spotshift_home), "--location", "gcp/us-central1"]) == 0


def test_jobs_add_list_show(spotshift_home: Path, capsys) -> None:
    assert main([*ADD, "--gpu-model", "A100", "--gpu-count", "8", "--allow", "gcp/*", "--allow", "aws/us-east-1",
                 "--deadline-hours", "80", "--max-usd-per-hour", "40", "--model", "d_model=128,n_layer=4"]) == 0  # fmt: skip
    assert "declared job llm-ft" in capsys.readouterr().out
    job = get_job("llm-ft")
    assert job.allowed_locations == ["gcp/*", "aws/us-east-1"] and job.model["d_model"] == 128
    assert job.gpu_count == 8 and job.deadline_hours == 80 and job.submitted_at is not None
    assert main(["jobs", "list"]) == 0
    out = capsys.readouterr().out
    assert "llm-ft" in out and "unplaced" in out
    assert main(["jobs", "show", "llm-ft", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["job"]["work_hours"] == 40 and shown["placement"]["status"] == "unplaced"
    assert main(["jobs", "list", "--json"]) == 0
    assert [j["name"] for j in json.loads(capsys.readouterr().out)["jobs"]] == ["llm-ft"]


def test_jobs_bad_input_exit_2(spotshift_home: Path, capsys) -> None:
    assert main(ADD) == 0
    capsys.readouterr()
    cases = [
        (ADD, "already declared"),
        (
            ["jobs", "add", "Bad Name", "--dataset", "d", "--total-steps", "1", "--work-hours", "1"],
            "name must use only",
        ),
        ([*ADD[:2], "x2", *ADD[3:], "--gpu-count", "0"], "gpu_count must be a whole number from 1"),
        ([*ADD[:2], "x3", *ADD[3:], "--allow", "us-east-1"], "not of the form provider/region"),
        ([*ADD[:2], "x5", *ADD[3:], "--start-location", "mars/olympus"], "unknown provider 'mars'"),
        ([*ADD[:2], "x6", *ADD[3:], "--model", "n_head=3"], "d_model 64 is not divisible by n_head 3"),
        (
            ["jobs", "add", "x7", "--dataset", "nope", "--total-steps", "1", "--work-hours", "1"],
            "not declared",
        ),
        ([*ADD[:2], "x4", *ADD[3:], "--model", "depth=3"], "--model entry 'depth=3'"),
        (["jobs", "show", "nope"], "job 'nope' is not declared"),
        (
            ["placement", "plan", "llm-ft"],
            "no validated quote snapshot yet: run `spotshift quotes poll` first",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)


def test_placement_plan_prints_ranked_terms_and_records(spotshift_home: Path, capsys) -> None:
    assert main([*ADD, "--gpu-model", "A100", "--gpu-count", "8"]) == 0
    now = datetime(2025, 3, 1, tzinfo=UTC)
    quotes = [
        make_quote("gcp/us-central1", 10.0),
        make_quote("gcp/us-east1", 8.0),
        make_quote("gcp/us-east1", 4.0, gpu_count=4),
    ]
    with warehouse.connect() as con:
        warehouse.append_rows(
            con,
            "main.gpu_quotes",
            [
                {**q.to_dict(), "observed_at": q.observed_at, "snapshot_id": "s1", "polled_at": now}
                for q in quotes
            ],
        )
    capsys.readouterr()
    assert main(["placement", "plan", "llm-ft", "--record"]) == 0
    out = capsys.readouterr().out
    assert "llm-ft: place -> gcp/us-east1" in out and "recorded in raw.decisions" in out
    assert "4 GPUs, job needs 8" in out
    assert main(["placement", "plan", "llm-ft", "--json", "--record"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["action"] == "place" and doc["recorded"] is False
    assert doc["candidates"][0]["rank"] == 1 and doc["candidates"][0]["location"] == "gcp/us-east1"
    assert doc["run_key"] == "llm-ft:-->gcp/us-east1:s1"
