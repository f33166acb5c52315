"""The command line as a whole: --help texts, one name per concept, lists, removing declarations."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from spotshift.cli import build_parser, main

#: one spelling per concept: these were renamed and survive only as hidden, deprecated aliases
DEPRECATED = (
    "--checkpoint-every",
    "--timeout",
    "--ckpt-gb",
    "--ckpt-interval-hours",
    "--ckpt-delta-fraction",
)


def all_parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    stack = [("spotshift", build_parser())]
    while stack:
        name, parser = stack.pop()
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack += [(f"{name} {sub}", p) for sub, p in action.choices.items()]


def test_every_help_renders_clean_and_names_follow_one_convention() -> None:
    problems = []
    for name, parser in all_parsers():
        text = parser.format_help()
        if "%%" in text or "%(" in text:
            problems.append(f"{name}: unformatted % in --help")
        for action in parser._actions:
            if isinstance(
                action, argparse._SubParsersAction | argparse._HelpAction | argparse._VersionAction
            ):
                continue
            if action.help == argparse.SUPPRESS:
                continue
            if not action.help:
                problems.append(f"{name}: {action.option_strings or action.dest} has no help text")
            for opt in action.option_strings:
                if opt.startswith("--") and not re.fullmatch(r"--[a-z0-9]+(-[a-z0-9]+)*", opt):
                    problems.append(f"{name}: {opt} is not lower-case kebab-case")
                if opt in DEPRECATED:
                    problems.append(f"{name}: deprecated {opt} is visible in --help")
    assert not problems, problems


def test_help_states_units_of_timed_options() -> None:
    # a duration or size option says its unit in its name
    for name, parser in all_parsers():
        for action in parser._actions:
            if action.help == argparse.SUPPRESS:
                continue
            for opt in action.option_strings:
                if re.search(r"(timeout|interval|grace|wait|deadline|gap)", opt):
                    assert re.search(r"-(seconds|hours|minutes|steps)$", opt), f"{name} {opt}"


def test_renamed_options_keep_working_with_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    args = parser.parse_args(["train", "j", "--checkpoint-every", "7"])
    assert args.checkpoint_every_steps == 7
    assert "--checkpoint-every is deprecated; use --checkpoint-every-steps" in capsys.readouterr().err
    args = parser.parse_args(["simulate", "--ckpt-gb", "3"])
    assert args.ckpt_gb == 3.0
    assert parser.parse_args(["trainers", "stop", "j", "--timeout", "5"]).timeout_seconds == 5.0
    assert "deprecated" not in parser.parse_args(["train", "j", "--checkpoint-every-steps", "9"]).__repr__()


def test_lists_have_headers_and_say_what_to_do_when_empty(
    spotshift_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv, hint in (
        (["datasets", "list"], "no datasets declared; add one with `spotshift datasets add"),
        (["jobs", "list"], "no jobs declared; add one with `spotshift jobs add"),
        (["trainers", "list"], "no trainers running; start one with `spotshift train"),
        (["ckpt", "list", f"{tmp_path}/store/checkpoints/j"], "no committed checkpoints of j"),
        (["sync", "snapshots", f"file://{tmp_path}/store"], "no snapshots of any dataset"),
    ):
        assert main(argv) == 0
        assert hint in capsys.readouterr().out, argv
    (tmp_path / "d").mkdir()
    assert main(["datasets", "add", "corpus", str(tmp_path / "d"), "--location", "aws/us-east-1"]) == 0
    capsys.readouterr()
    assert main(["datasets", "list"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["dataset", "location", "chunking"] and row.startswith("corpus")


def test_remove_job_and_dataset_refuse_while_in_use(
    spotshift_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from spotshift.placement import state

    (tmp_path / "d").mkdir()
    assert main(["datasets", "add", "corpus", str(tmp_path / "d"), "--location", "aws/us-east-1"]) == 0
    job = ["jobs", "add", "ft", "--dataset", "corpus", "--total-steps", "10", "--work-hours", "1"]
    assert main(job) == 0
    capsys.readouterr()
    # the dataset is in use by a job
    assert main(["datasets", "remove", "corpus"]) == 2
    assert "used by job(s) ft: remove them first" in capsys.readouterr().err
    # the job is migrating (a migration run owns it)
    from datetime import UTC, datetime

    state.record_placement(
        "ft", location="aws/us-east-1", market="spot", instance_type="p4d.24xlarge", now=datetime.now(UTC)
    )
    state.set_status("ft", "migrating", now=datetime.now(UTC))
    assert main(["jobs", "remove", "ft"]) == 2
    err = capsys.readouterr().err
    assert "is migrating in aws/us-east-1" in err and "--force" in err and err.count("\n") == 1
    assert main(["jobs", "remove", "ft", "--force", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "job": "ft",
        "placement_state_removed": True,
        "status_was": "migrating",
    }
    assert not state.state_path("ft").exists()
    assert main(["datasets", "remove", "corpus"]) == 0
    capsys.readouterr()
    assert main(["jobs", "list"]) == 0 and "no jobs declared" in capsys.readouterr().out
    assert main(["datasets", "remove", "corpus"]) == 2
    assert "is not declared" in capsys.readouterr().err


def test_remove_job_never_while_its_trainer_is_alive(
    spotshift_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from spotshift.training.backend import LocalProcessBackend, TrainerInfo

    (tmp_path / "d").mkdir()
    main(["datasets", "add", "corpus", str(tmp_path / "d")])
    main(["jobs", "add", "ft", "--dataset", "corpus", "--total-steps", "10", "--work-hours", "1"])
    capsys.readouterr()
    live = TrainerInfo("ft", "ft", "gcp/us-central1", "train", 4242, 0.0, str(tmp_path), "now", alive=True)
    monkeypatch.setattr(LocalProcessBackend, "list", lambda self, location=None: [live])
    assert main(["jobs", "remove", "ft", "--force"]) == 2
    assert "live trainer in gcp/us-central1 (pid 4242): stop it first" in capsys.readouterr().err
