"""``spotshift quotes ...``: normalize native files, poll, cheapest; bad input exits 2 with one line."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from spotshift.cli import main
from spotshift.clock import VirtualClock
from spotshift.pricing.quote import QUOTE_FIELDS
from spotshift.pricing.synthetic import synthetic_history, write_history_csv, write_synthetic_history
from tests.conftest import REPO
from tests.unit.pricing.conftest import FIXTURES

#: the acceptance checks' AWS fixture, in ../shared beside the repository (as the real data is)
CHECK_FIXTURE = REPO.parent / "shared" / "checks" / "data" / "aws_spot_history.json"


@pytest.mark.parametrize(
    ("provider", "name", "count"),
    [
        ("aws", "aws_spot_pages.json", 7),  # 8 Linux prices, one of an unknown instance type
        ("aws", "aws_price_list_page1.json", 2),
        ("azure", "azure_prices_page2.json", 3),
    ],
)
def test_normalize_csv_and_json(
    provider: str, name: str, count: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["quotes", "normalize", "--provider", provider, str(FIXTURES / name)]) == 0
    out, err = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == count and tuple(rows[0]) == QUOTE_FIELDS
    assert "accepted" in err and err.count("\n") == 1
    assert (
        main(["quotes", "normalize", "--provider", provider, str(FIXTURES / name), "--format", "json"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == count and all(tuple(json.loads(x)) == QUOTE_FIELDS for x in lines)


def test_normalize_gcp_pages_and_replay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pages = [json.loads((FIXTURES / f"gcp_skus_page{n}.json").read_text()) for n in (1, 2, 3)]
    (tmp_path / "skus.json").write_text(json.dumps(pages))
    assert (
        main(["quotes", "normalize", "--provider", "gcp", str(tmp_path / "skus.json"), "--format", "json"])
        == 0
    )
    quotes = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert {q["instance_type"] for q in quotes} >= {"a2-highgpu-1g", "g2-standard-4", "a3-highgpu-8g"}
    history = write_synthetic_history(tmp_path / "h.csv", weeks=2)
    assert main(["quotes", "normalize", "--provider", "replay", str(history)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 2 * synthetic_history(weeks=2).height  # every row, both markets


def bad_inputs(tmp: Path) -> list[tuple[str, Path, str]]:
    fixture = json.loads((FIXTURES / "aws_spot_page1.json").read_text())
    text = json.dumps(fixture)
    (tmp / "truncated.json").write_text(text[:200])
    fixture["SpotPriceHistory"][2]["SpotPrice"] = "nine dollars"
    (tmp / "wrongtype.json").write_text(json.dumps(fixture))
    (tmp / "missing.json").write_text('{"Items": [{"armRegionName": "eastus"}], "NextPageLink": null}')
    (tmp / "short.csv").write_text("observed_at,instance_type\n2025-01-01,a2-highgpu-1g\n")
    (tmp / "empty.json").write_text("")
    (tmp / "list.json").write_text("[1, 2]")
    return [
        ("aws", tmp / "truncated.json", "malformed JSON"),
        (
            "aws",
            tmp / "wrongtype.json",
            "record 2 (p4d.24xlarge us-east-1c): SpotPrice 'nine dollars' is not a number",
        ),
        ("azure", tmp / "missing.json", "record 0 (eastus): missing field serviceName"),
        ("replay", tmp / "short.csv", "missing column"),
        ("gcp", tmp / "empty.json", "empty file"),
        ("gcp", tmp / "list.json", "expected a JSON object with 'skus'"),
        ("aws", tmp / "does-not-exist.json", "no such file"),
        ("azure", tmp, "is a directory"),
    ]


def test_bad_input_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for provider, path, message in bad_inputs(tmp_path):
        code = main(["quotes", "normalize", "--provider", provider, str(path), "--format", "json"])
        out, err = capsys.readouterr()
        assert code == 2, (provider, path)
        assert err.count("\n") == 1 and str(path) in err and message in err, err
        assert out == ""


def test_bad_input_in_a_real_process(tmp_path: Path) -> None:
    bad = bad_inputs(tmp_path)[1]
    proc = subprocess.run(
        [sys.executable, "-m", "spotshift.cli", "quotes", "normalize", "--provider", bad[0], str(bad[1])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_acceptance_fixture_normalizes(capsys: pytest.CaptureFixture[str]) -> None:
    if not CHECK_FIXTURE.exists():
        pytest.skip(f"{CHECK_FIXTURE.relative_to(REPO.parent)} not present beside the repository")
    assert main(["quotes", "normalize", "--provider", "aws", str(CHECK_FIXTURE), "--format", "json"]) == 0
    quotes = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert {q["instance_type"] for q in quotes} == {"p4de.24xlarge", "g6.xlarge"}


def test_poll_then_cheapest(spotshift_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quotes", "cheapest"]) == 2
    assert "does not exist yet" in capsys.readouterr().err
    history = write_synthetic_history(tmp_path / "h.csv", weeks=3)
    last = synthetic_history(weeks=3)["observed_at"].max()
    VirtualClock.starting(last + timedelta(hours=1), 0).save()
    assert main(["quotes", "poll", "--feed", "replay", "--prices", str(history), "--json"]) == 0
    polled = json.loads(capsys.readouterr().out)
    assert polled["passed"] and polled["raw_rows_written"] == polled["curated_rows_written"] > 0
    assert main(["quotes", "cheapest", "--gpu", "h100", "--market", "spot", "--json"]) == 0
    best = json.loads(capsys.readouterr().out)
    assert best["snapshots"] == [polled["snapshot_id"]]
    (row,) = best["cheapest"]
    assert row["gpu_model"] == "H100-80GB" and row["market"] == "spot"
    assert main(["quotes", "cheapest"]) == 0
    assert "A100-40GB" in capsys.readouterr().out
    assert main(["quotes", "cheapest", "--gpu", "v100"]) == 2
    assert "not a known GPU model" in capsys.readouterr().err
    # past the end of the history the replay serves its last week, frozen, on its own clock
    VirtualClock.starting(last + timedelta(days=700), 0).save()
    assert main(["quotes", "poll", "--prices", str(history), "--json"]) == 0
    frozen = json.loads(capsys.readouterr().out)
    assert frozen["passed"] and frozen["snapshot_id"] == polled["snapshot_id"]
    assert frozen["feed_clock"] == last.isoformat() and "frozen market" in frozen["feed_note"]
    # a gap inside the history is stale on the replay's clock: the check fails and says what to do
    gappy = synthetic_history(weeks=8)
    gappy = gappy.filter(
        (gappy["observed_at"] < gappy["observed_at"].min() + timedelta(days=8))
        | (gappy["observed_at"] == gappy["observed_at"].max())
    )
    write_history_csv(gappy, tmp_path / "gap.csv")
    VirtualClock.starting(gappy["observed_at"].max() - timedelta(days=1), 0).save()
    assert main(["quotes", "poll", "--prices", str(tmp_path / "gap.csv")]) == 1
    out = capsys.readouterr().out
    assert "quotes_fresh: FAILED" in out and "SPOTSHIFT_MAX_QUOTE_AGE_H" in out and "poll again" in out


def test_synthetic_and_catalog_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "syn.csv"
    assert main(["quotes", "synthetic", "--out", str(out), "--weeks", "2", "--seed", "5"]) == 0
    assert "SYNTHETIC" in capsys.readouterr().out and out.exists()
    assert main(["quotes", "catalog", "--provider", "azure", "--json"]) == 0
    instances = json.loads(capsys.readouterr().out)["instances"]
    assert {i["provider"] for i in instances} == {"azure"} and all("topology_score" in i for i in instances)
