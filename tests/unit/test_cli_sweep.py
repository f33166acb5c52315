"""Sweep of the command line with malformed and hostile inputs: every command group, every time exit 2
and exactly one line on stderr, no traceback, no credential echoed.

Built from the reproductions of issue 11 (defects 3, 6, 7) plus hostile inputs of our own: garbage
files, wrong types, inf/nan/negative/huge numbers, bad URLs, bad locations. Most cases run
``spotshift.cli.main`` in-process (fast); a few run the installed entry point in a subprocess, as
a user would.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest

from spotshift.cli import main

SECRETS = ("AKIAEXAMPLE", "SECRETKEY", "hunter2")


@pytest.fixture
def lab(tmp_path: Path, spotshift_home: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Hostile files next to one good dataset directory and one good store."""
    t = tmp_path / "lab"
    t.mkdir()
    (t / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (t / "deep-object.json").write_text('{"a":' * 50_000 + "1" + "}" * 50_000)
    (t / "garbage.bin").write_bytes(bytes(range(256)) * 8)
    (t / "garbage.parquet").write_bytes(bytes(range(256)) * 8)
    (t / "notfocus.csv").write_text(
        "BilledCost,ChargePeriodStart,ChargePeriodEnd,RegionId,ProviderName\n1,x,y,r,p\n"
    )
    (t / "empty").write_text("")
    (t / "notjson.json").write_text("{'SpotPriceHistory': nope")
    (t / "src").mkdir()
    (t / "src" / "a.txt").write_text("hello\n")
    (t / "gap-huge.json").write_text(json.dumps({"metadata": {"gap_seconds": 1e300}, "data": [1, 0, 1]}))
    (t / "gap-big.json").write_text(json.dumps({"metadata": {"gap_seconds": 10**8}, "data": [1, 0, 1]}))
    traces = t / "traces"
    traces.mkdir()
    (traces / "us-central1.json").write_text(
        json.dumps({"metadata": {"gap_seconds": 10**8}, "data": [1, 0, 1]})
    )
    (t / "bad.duckdb").write_bytes(b"this is not a duckdb file" * 100)
    (t / "prices.csv").write_text("observed_at,instance_type\n2025-01-01,a2-highgpu-1g\n")
    # a dataset and a job to point hostile options at
    assert main(["datasets", "add", "corpus", str(t / "src"), "--location", "gcp/us-central1"]) == 0
    return {"T": t, "home": spotshift_home}


def _run_inprocess(argv: list[str]) -> tuple[Any, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code: Any = main(argv)
        except SystemExit as exc:
            code = exc.code
        except BaseException:  # noqa: BLE001 - the sweep reports it as a failure with its traceback
            code = "uncaught exception"
            err.write(traceback.format_exc())
    return code, out.getvalue(), err.getvalue()


def assert_one_line_exit_2(code: Any, err: str, what: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"{what}: exit {code!r}, stderr:\n{err[-3000:]}"
    assert "Traceback" not in err, f"{what}: traceback on stderr:\n{err[-3000:]}"
    assert len(lines) == 1, f"{what}: {len(lines)} lines on stderr:\n{err[-3000:]}"
    assert lines[0].startswith("spotshift"), f"{what}: {lines[0]!r}"
    for s in SECRETS:
        assert s not in err, f"{what}: {s} echoed on stderr: {lines[0]}"


# (id, argv) ; {T} is the lab directory, {home} SPOTSHIFT_HOME
CASES: list[tuple[str, list[str]]] = [
    # ---- argparse itself: one line, not a usage block
    ("no-command", []),
    ("unknown-command", ["teleport"]),
    ("home-bad-action", ["home", "destroy"]),
    ("bad-int", ["jobs", "add", "j", "--dataset", "corpus", "--total-steps", "abc", "--work-hours", "1"]),
    ("bad-choice", ["quotes", "normalize", "--provider", "nope", "{T}/empty"]),
    ("unknown-option", ["sync", "verify", "file:///x", "--frobnicate"]),
    # ---- router, tls
    ("router-undeclared", ["router", "nosuch"]),
    ("router-bad-slo", ["router", "chat", "--slo-ms", "nan"]),
    ("router-bad-port", ["router", "chat", "--slo-ms", "500", "--port", "70000"]),
    ("router-bad-user-region", ["router", "chat", "--slo-ms", "500", "--user-region", "mars"]),
    ("tls-bad-role", ["tls", "{T}/tls", "--role", "admin"]),
    # ---- cutover
    ("cutover-bad-location", ["cutover", "start", "chat", "--to", "mars/base", "--usd-per-hour", "1"]),
    ("cutover-bad-stages", ["cutover", "start", "chat", "--to", "aws/us-east-1", "--stages", "50:1h,25:1h"]),
    ("cutover-status-none", ["cutover", "status", "nosuch"]),
    ("cutover-failback-none", ["cutover", "failback", "nosuch"]),
    ("cutover-bad-endpoint-name", ["cutover", "rollback", "Bad Name!"]),
    ("tls-dir-is-a-file", ["tls", "{T}/empty", "--role", "client"]),
    # ---- quotes
    ("deep-json-aws", ["quotes", "normalize", "--provider", "aws", "{T}/deep.json"]),
    ("deep-json-gcp", ["quotes", "normalize", "--provider", "gcp", "{T}/deep.json"]),
    ("deep-json-azure", ["quotes", "normalize", "--provider", "azure", "{T}/deep-object.json"]),
    ("garbage-replay", ["quotes", "normalize", "--provider", "replay", "{T}/garbage.bin"]),
    ("notjson-aws", ["quotes", "normalize", "--provider", "aws", "{T}/notjson.json"]),
    ("missing-file", ["quotes", "normalize", "--provider", "aws", "{T}/nope.json"]),
    ("directory-as-file", ["quotes", "normalize", "--provider", "gcp", "{T}/src"]),
    ("poll-garbage-prices", ["quotes", "poll", "--prices", "{T}/garbage.bin"]),
    ("poll-short-prices", ["quotes", "poll", "--prices", "{T}/prices.csv"]),
    ("poll-corrupt-warehouse", ["quotes", "poll"]),
    ("cheapest-corrupt-warehouse", ["quotes", "cheapest"]),
    ("synthetic-unwritable", ["quotes", "synthetic", "--out", "/proc/nope/x.csv"]),
    # ---- sync
    ("fingerprint-missing", ["sync", "fingerprint", "{T}/nope"]),
    ("fingerprint-bad-size", ["sync", "fingerprint", "{T}/src", "--avg-chunk", "abc"]),
    ("fingerprint-negative-size", ["sync", "fingerprint", "{T}/src", "--avg-chunk", "-5"]),
    ("fingerprint-workers-0", ["sync", "fingerprint", "{T}/src", "--workers", "0"]),
    ("push-workers-0", ["sync", "push", "{T}/src", "file://{T}/st", "--workers", "0"]),
    ("push-workers-negative", ["sync", "push", "{T}/src", "file://{T}/st", "--workers", "-3"]),
    ("push-userinfo-url", ["sync", "push", "{T}/src", "s3://AKIAEXAMPLE:SECRETKEY@bucket/x"]),
    ("push-userinfo-gs", ["sync", "push", "{T}/src", "gs://AKIAEXAMPLE:SECRETKEY@bucket/x"]),
    ("push-userinfo-file", ["sync", "push", "{T}/src", "file://AKIAEXAMPLE:SECRETKEY@host/x"]),
    ("push-bad-scheme", ["sync", "push", "{T}/src", "ftp://host/x"]),
    ("push-bad-dataset-name", ["sync", "push", "{T}/src", "file://{T}/st", "--dataset", "../x"]),
    ("push-bad-location", ["sync", "push", "{T}/src", "file://{T}/st", "--from-location", "mars/olympus"]),
    ("push-corrupt-warehouse", ["sync", "push", "{T}/src", "file://{T}/st"]),
    ("pull-no-store", ["sync", "pull", "file://{T}/nostore", "{T}/out"]),
    ("pull-userinfo-url", ["sync", "pull", "s3://AKIAEXAMPLE:SECRETKEY@bucket/x", "{T}/out"]),
    ("pull-into-file", ["sync", "pull", "file://{T}/st", "{T}/garbage.bin"]),
    ("pull-workers-0", ["sync", "pull", "file://{T}/st", "{T}/out", "--workers", "0"]),
    ("replicate-no-store", ["sync", "replicate", "file://{T}/nostore", "file://{T}/st2"]),
    (
        "replicate-workers-negative",
        ["sync", "replicate", "file://{T}/st", "file://{T}/st2", "--workers", "-1"],
    ),
    ("verify-no-store", ["sync", "verify", "file://{T}/nostore"]),
    ("verify-userinfo-gs", ["sync", "verify", "gs://AKIAEXAMPLE:SECRETKEY@bucket/x"]),
    ("verify-workers-0", ["sync", "verify", "file://{T}/st", "--workers", "0"]),
    # ---- datasets
    ("datasets-bad-name", ["datasets", "add", "BAD NAME", "{T}/src"]),
    ("datasets-bad-location", ["datasets", "add", "ds", "{T}/src", "--location", "mars/olympus"]),
    ("datasets-bad-region", ["datasets", "add", "ds", "{T}/src", "--location", "aws/olympus-1"]),
    ("datasets-no-slash", ["datasets", "add", "ds", "{T}/src", "--location", "aws"]),
    (
        "datasets-tiny-chunks",
        ["datasets", "add", "ds", "{T}/src", "--min-chunk", "1", "--avg-chunk", "2", "--max-chunk", "3"],
    ),
    # ---- jobs
    (
        "jobs-undeclared-dataset",
        ["jobs", "add", "j", "--dataset", "nope", "--total-steps", "10", "--work-hours", "1"],
    ),
    (
        "jobs-work-inf",
        ["jobs", "add", "j", "--dataset", "corpus", "--total-steps", "10", "--work-hours", "inf"],
    ),
    (
        "jobs-work-nan",
        ["jobs", "add", "j", "--dataset", "corpus", "--total-steps", "10", "--work-hours", "nan"],
    ),
    (
        "jobs-work-negative",
        ["jobs", "add", "j", "--dataset", "corpus", "--total-steps", "10", "--work-hours", "-4"],
    ),
    (
        "jobs-steps-beyond-64-bits",
        ["jobs", "add", "j", "--dataset", "corpus", "--total-steps", str(2**70), "--work-hours", "1"],
    ),
    (
        "jobs-deadline-shorter-than-work",
        [
            "jobs",
            "add",
            "j",
            "--dataset",
            "corpus",
            "--total-steps",
            "10",
            "--work-hours",
            "10",
            "--deadline-hours",
            "5",
        ],
    ),
    (
        "jobs-deadline-inf",
        [
            "jobs",
            "add",
            "j",
            "--dataset",
            "corpus",
            "--total-steps",
            "10",
            "--work-hours",
            "1",
            "--deadline-hours",
            "inf",
        ],
    ),
    (
        "jobs-start-mars",
        [
            "jobs",
            "add",
            "j",
            "--dataset",
            "corpus",
            "--total-steps",
            "10",
            "--work-hours",
            "1",
            "--start-location",
            "mars/olympus",
        ],
    ),
    (
        "jobs-start-unknown-region",
        [
            "jobs",
            "add",
            "j",
            "--dataset",
            "corpus",
            "--total-steps",
            "10",
            "--work-hours",
            "1",
            "--start-location",
            "gcp/olympus1",
        ],
    ),
    (
        "jobs-allow-mars",
        [
            "jobs",
            "add",
            "j",
            "--dataset",
            "corpus",
            "--total-steps",
            "10",
            "--work-hours",
            "1",
            "--allow",
            "mars/*",
        ],
    ),
    (
        "jobs-d-model-0",
        [
            "jobs",
            "add",
            "j",
            "--dataset",
            "corpus",
            "--total-steps",
            "10",
            "--work-hours",
            "1",
            "--model",
            "d_model=0",
        ],
    ),
    (
        "jobs-n-head-not-dividing",
        [
            "jobs",
            "add",
            "j",
            "--dataset",
            "corpus",
            "--total-steps",
            "10",
            "--work-hours",
            "1",
            "--model",
            "n_head=3",
        ],
    ),
    (
        "jobs-vocab-negative",
        [
            "jobs",
            "add",
            "j",
            "--dataset",
            "corpus",
            "--total-steps",
            "10",
            "--work-hours",
            "1",
            "--model",
            "vocab_size=-1",
        ],
    ),
    (
        "jobs-model-garbage",
        [
            "jobs",
            "add",
            "j",
            "--dataset",
            "corpus",
            "--total-steps",
            "10",
            "--work-hours",
            "1",
            "--model",
            "d_model",
        ],
    ),
    (
        "jobs-lr-inf",
        [
            "jobs",
            "add",
            "j",
            "--dataset",
            "corpus",
            "--total-steps",
            "10",
            "--work-hours",
            "1",
            "--learning-rate",
            "inf",
        ],
    ),
    (
        "jobs-max-usd-nan",
        [
            "jobs",
            "add",
            "j",
            "--dataset",
            "corpus",
            "--total-steps",
            "10",
            "--work-hours",
            "1",
            "--max-usd-per-hour",
            "nan",
        ],
    ),
    (
        "jobs-bad-submitted",
        [
            "jobs",
            "add",
            "j",
            "--dataset",
            "corpus",
            "--total-steps",
            "10",
            "--work-hours",
            "1",
            "--submitted-at",
            "yesterday",
        ],
    ),
    ("jobs-show-unknown", ["jobs", "show", "nope"]),
    ("placement-unknown-job", ["placement", "plan", "nope"]),
    ("move-unknown-job", ["move", "nope", "--to", "aws/us-east-1"]),
    ("move-no-target", ["move", "nope"]),
    # ---- simulate / traces
    ("simulate-deadline-inf", ["simulate", "--deadline-hours", "inf"]),
    ("simulate-deadline-1e308", ["simulate", "--deadline-hours", "1e308"]),
    ("simulate-work-nan", ["simulate", "--work-hours", "nan"]),
    ("simulate-work-negative", ["simulate", "--work-hours", "-1"]),
    ("simulate-deadline-shorter-than-work", ["simulate", "--deadline-hours", "10", "--work-hours", "100"]),
    ("simulate-start-after-history", ["simulate", "--start", "2099-01-01"]),
    ("simulate-start-garbage", ["simulate", "--start", "garbage"]),
    ("simulate-garbage-prices", ["simulate", "--prices", "{T}/garbage.bin"]),
    ("simulate-deep-trace", ["simulate", "--traces", "{T}", "--trace-map", "us-central1=deep.json"]),
    (
        "simulate-absurd-gap",
        ["simulate", "--traces", "{T}/traces", "--trace-map", "us-central1=us-central1.json"],
    ),
    ("simulate-gap-inf-flag", ["simulate", "--gap-seconds", "0"]),
    ("simulate-checkpoint-gb-inf", ["simulate", "--checkpoint-gb", "inf"]),
    # ---- simulate-fleet
    ("simulate-fleet-jobs-zero", ["simulate-fleet", "--jobs", "0"]),
    ("simulate-fleet-days-nan", ["simulate-fleet", "--days", "nan"]),
    ("simulate-fleet-days-huge", ["simulate-fleet", "--days", "1e308"]),
    ("simulate-fleet-garbage-prices", ["simulate-fleet", "--prices", "{T}/garbage.bin"]),
    ("simulate-fleet-start-garbage", ["simulate-fleet", "--start", "garbage"]),
    # ---- simulate-inference
    ("simulate-inference-slo-nan", ["simulate-inference", "--slo-ms", "nan", "--demand", "synthetic"]),
    ("simulate-inference-days-negative", ["simulate-inference", "--slo-ms", "500", "--days", "-3"]),
    (
        "simulate-inference-demand-garbage",
        ["simulate-inference", "--slo-ms", "500", "--demand", "{T}/garbage.bin"],
    ),
    # ---- serving
    ("endpoints-add-slo-nan", ["endpoints", "add", "e", "--model", "{T}/s/checkpoints/j", "--slo-ms", "nan"]),
    (
        "endpoints-add-users-inf",
        [
            "endpoints",
            "add",
            "e",
            "--model",
            "{T}/s/checkpoints/j",
            "--slo-ms",
            "9",
            "--users",
            "us-east=inf",
        ],
    ),
    (
        "endpoints-add-model-userinfo",
        ["endpoints", "add", "e", "--model", "s3://AKIAEXAMPLE:SECRETKEY@b/checkpoints", "--slo-ms", "9"],
    ),
    ("endpoints-show-unknown", ["endpoints", "show", "nope"]),
    ("serve-unknown-endpoint", ["serve", "nope", "--location", "gcp/us-central1", "--market", "spot"]),
    ("serve-bad-market", ["serve", "nope", "--location", "gcp/us-central1", "--market", "preemptible"]),
    (
        "loadgen-remote-host",
        ["loadgen", "http://AKIAEXAMPLE:hunter2@10.1.2.3:80", "--rps", "1", "--duration", "1"],
    ),
    ("loadgen-rps-nan", ["loadgen", "http://127.0.0.1:9", "--rps", "nan", "--duration", "1"]),
    ("traces-hours-inf", ["traces", "generate", "{T}/out", "x", "--hours", "inf"]),
    ("traces-hours-nan", ["traces", "generate", "{T}/out", "x", "--hours", "nan"]),
    ("traces-hours-1e308", ["traces", "generate", "{T}/out", "x", "--hours", "1e308"]),
    ("traces-stats-deep", ["traces", "stats", "{T}/deep.json"]),
    ("traces-stats-gap-huge", ["traces", "stats", "{T}/gap-huge.json"]),
    ("traces-stats-gap-big", ["traces", "stats", "{T}/gap-big.json"]),
    ("traces-stats-garbage", ["traces", "stats", "{T}/garbage.bin"]),
    # ---- training
    ("train-unknown-job", ["train", "nope"]),
    ("train-bad-location", ["train", "nope", "--location", "mars/olympus"]),
    ("trainers-stop-unknown", ["trainers", "stop", "nope"]),
    ("run-unknown-job", ["run", "nope", "--", "python", "train.py"]),
    ("run-bad-location", ["run", "nope", "--location", "mars/olympus", "--", "python", "train.py"]),
    (
        "jobs-add-unclosed-command",
        [
            "jobs",
            "add",
            "j",
            "--dataset",
            "corpus",
            "--total-steps",
            "9",
            "--work-hours",
            "1",
            "--command",
            "x '",
        ],
    ),
    # ---- checkpoints (read paths only)
    ("ckpt-inspect-missing", ["ckpt", "inspect", "{T}/nope"]),
    ("ckpt-list-userinfo", ["ckpt", "list", "s3://AKIAEXAMPLE:SECRETKEY@bucket/x/checkpoints/j"]),
    # ---- costs
    ("report-corrupt-warehouse", ["report"]),
    ("report-garbage-warehouse-flag", ["report", "--warehouse", "{T}/garbage.bin"]),
    ("report-missing-warehouse", ["report", "--warehouse", "{T}/nope.duckdb", "--no-build"]),
    ("focus-export-corrupt-warehouse", ["focus", "export", "{T}/out.csv"]),
    ("focus-export-bad-extension", ["focus", "export", "{T}/out.txt"]),
    ("focus-check-garbage", ["focus", "check", "{T}/garbage.bin"]),
    ("budgets-negative", ["budgets", "set", "ml", "--monthly-usd", "-1"]),
    ("budgets-alert-above-1", ["budgets", "set", "ml", "--monthly-usd", "10", "--alert", "2"]),
    ("budgets-bad-team", ["budgets", "set", "Team A", "--monthly-usd", "10"]),
    ("budgets-show-undeclared", ["budgets", "show", "nobody"]),
    ("reconcile-garbage-parquet", ["reconcile", "{T}/garbage.parquet"]),
    ("reconcile-bad-extension", ["reconcile", "{T}/garbage.bin"]),
    ("reconcile-corrupt-warehouse", ["reconcile", "{T}/notfocus.csv"]),
    # ---- topology, pools, dev environments (issue 19)
    ("topology-score-garbage", ["topology", "score", "{T}/garbage.bin"]),
    ("topology-score-deep-json", ["topology", "score", "{T}/deep.json"]),
    (
        "topology-check-bad-location",
        ["topology", "check", "--location", "mars/olympus", "--instance-type", "x"],
    ),
    (
        "topology-check-nan-score",
        ["topology", "check", "--location", "aws/us-east-1", "--instance-type", "x", "--min-score", "nan"],
    ),
    ("topology-measure-world-0", ["topology", "measure", "--world-size", "0"]),
    ("pools-add-negative-gpus", ["pools", "add", "dc", "--gpu-model", "A100", "--gpus", "-8"]),
    (
        "pools-add-inf-price",
        ["pools", "add", "dc", "--gpu-model", "A100", "--gpus", "8", "--usd-per-gpu-hour", "inf"],
    ),
    (
        "pools-add-cloud-location",
        ["pools", "add", "dc", "--gpu-model", "A100", "--gpus", "8", "--location", "aws/us-east-1"],
    ),
    ("pools-submit-unknown", ["pools", "submit", "nope", "nojob"]),
    ("pools-tick-bad-time", ["pools", "tick", "nope", "--at", "yesterday"]),
    (
        "devenvs-add-relative-missing",
        ["devenvs", "add", "nb", "--workspace", "{T}/nope", "--command", "sleep 1", "--gpu-model", "A100"],
    ),
    (
        "devenvs-add-nan-idle",
        [
            "devenvs",
            "add",
            "nb",
            "--workspace",
            "{T}/src",
            "--command",
            "sleep 1",
            "--gpu-model",
            "A100",
            "--idle-hours",
            "nan",
        ],
    ),
    ("devenvs-resume-unknown", ["devenvs", "resume", "nope"]),
    ("workers-start-in-process-home", ["workers", "start", "--region", "aws/us-east-1"]),
    ("workers-stop-unknown", ["workers", "stop", "--name", "nope"]),
    ("workers-run-no-queue", ["workers", "run"]),
]

#: cases that find a corrupt warehouse.duckdb in SPOTSHIFT_HOME
CORRUPT_WAREHOUSE = {
    "poll-corrupt-warehouse",
    "cheapest-corrupt-warehouse",
    "push-corrupt-warehouse",
    "report-corrupt-warehouse",
    "focus-export-corrupt-warehouse",
    "reconcile-corrupt-warehouse",
}
#: cases that need a good store with one dataset at {T}/st
NEED_STORE = {"pull-into-file", "pull-workers-0", "replicate-workers-negative", "verify-workers-0"}


def _expand(argv: list[str], lab: dict[str, Path]) -> list[str]:
    return [a.replace("{T}", str(lab["T"])).replace("{home}", str(lab["home"])) for a in argv]


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_malformed_input_is_one_line_exit_2(case: str, lab: dict[str, Path]) -> None:
    argv = _expand(dict(CASES)[case], lab)
    if case in NEED_STORE:
        assert main(["sync", "push", str(lab["T"] / "src"), f"file://{lab['T']}/st", "--no-record"]) == 0
    if case in CORRUPT_WAREHOUSE:
        (lab["home"] / "warehouse.duckdb").write_bytes(b"not a duckdb database" * 200)
    code, _, err = _run_inprocess(argv)
    assert_one_line_exit_2(code, err, " ".join(argv))


def test_case_ids_are_unique() -> None:
    assert len({c[0] for c in CASES}) == len(CASES)


def test_sweep_covers_every_command_group() -> None:
    from spotshift.cli import build_parser

    parser = build_parser()
    groups = set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    covered = {argv[0] for _, argv in CASES if argv}
    assert groups <= covered, f"no malformed-input case for {sorted(groups - covered)}"


# ---- a few as a user runs them: the installed entry point in a subprocess ---------------------
SUBPROCESS_CASES: list[tuple[str, list[str]]] = [
    ("traces-hours-inf", ["traces", "generate", "{T}/out", "x", "--hours", "inf"]),
    ("push-userinfo-url", ["sync", "push", "{T}/src", "s3://AKIAEXAMPLE:SECRETKEY@bucket/x"]),
    ("report-corrupt-warehouse", ["report"]),
    ("jobs-argparse-error", ["jobs", "add", "j", "--total-steps", "x"]),
]


@pytest.mark.parametrize("case", [c[0] for c in SUBPROCESS_CASES])
def test_malformed_input_subprocess(case: str, lab: dict[str, Path]) -> None:
    argv = _expand(dict(SUBPROCESS_CASES)[case], lab)
    if case == "report-corrupt-warehouse":
        (lab["home"] / "warehouse.duckdb").write_bytes(b"not a duckdb database" * 200)
    env = {
        **os.environ,
        "SPOTSHIFT_HOME": str(lab["home"]),
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
    }
    exe = Path(sys.executable).with_name("spotshift")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "spotshift.cli"]
    proc = subprocess.run([*cmd, *argv], capture_output=True, text=True, env=env, timeout=120)
    assert_one_line_exit_2(proc.returncode, proc.stderr, " ".join(argv))
