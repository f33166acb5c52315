"""Workers per region, the settings side: which executor the move jobs use, the broker without its
password on disk, and bad input refused in one line (the Celery runs are in tests/dagster/test_workers.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spotshift.cli import main
from spotshift.errors import ConfigError
from spotshift.workers import processes
from spotshift.workers.settings import load_settings, settings_path


def test_home_init_executor_celery_keeps_the_broker_password_out_of_files(
    spotshift_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for var in ("SPOTSHIFT_EXECUTOR", "SPOTSHIFT_CELERY_BROKER", "SPOTSHIFT_CELERY_BROKER_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    assert load_settings().kind == "in_process"  # the embedded default
    assert (
        main(["home", "init", "--executor", "celery", "--broker", "amqp://mq:s3cr3t@mq.example:5672/prod"])
        == 0
    )
    out = capsys.readouterr()
    assert "s3cr3t" not in out.out + out.err + settings_path().read_text()
    assert "export SPOTSHIFT_CELERY_BROKER_PASSWORD" in out.err
    assert json.loads(settings_path().read_text()) == {
        "executor": "celery",
        "broker": "amqp://mq@mq.example:5672/prod",
    }
    settings = load_settings()
    assert settings.distributed and settings.broker_url() == "amqp://mq@mq.example:5672/prod"
    monkeypatch.setenv("SPOTSHIFT_CELERY_BROKER_PASSWORD", "p@ss")
    assert load_settings().broker_url() == "amqp://mq:p%40ss@mq.example:5672/prod"
    assert "p@ss" not in load_settings().describe() and "mq.example" in load_settings().describe()
    monkeypatch.setenv("SPOTSHIFT_EXECUTOR", "in_process")  # the variable wins over the file
    assert not load_settings().distributed
    monkeypatch.setenv("SPOTSHIFT_CELERY_QUEUE_PREFIX", "staging.")
    assert load_settings().queue_name("aws/us-east-1") == "staging.aws/us-east-1"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["home", "init", "--executor", "celery", "--broker", "http://mq:hunter2@mq.example/"],
            "use amqp://",
        ),
        (["home", "init", "--broker", "amqp://mq.example//"], "--broker needs --executor celery"),
        (["home", "--executor", "celery"], "apply to `spotshift home init`"),
        (["workers", "start", "--region", "aws/us-east-1"], "the move jobs run in-process"),
        (["workers", "run"], "give --region LOCATION or --control"),
    ],
)
def test_bad_worker_settings_fail_in_one_line(
    spotshift_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.delenv("SPOTSHIFT_EXECUTOR", raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "hunter2" not in err


def test_unknown_executor_names_the_variable(spotshift_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPOTSHIFT_EXECUTOR", "k8s")
    with pytest.raises(ConfigError, match="SPOTSHIFT_EXECUTOR='k8s': use one of in_process, celery"):
        load_settings()


def test_worker_command_serves_one_queue_one_step_at_a_time() -> None:
    cmd = processes.worker_command("python", "aws/us-east-1", processes.worker_name("aws/us-east-1", 2))
    assert cmd[:6] == ["python", "-m", "celery", "-A", processes.APP_MODULE, "worker"]
    assert cmd[cmd.index("-Q") + 1] == "aws/us-east-1"
    assert cmd[cmd.index("-n") + 1] == "spotshift-aws-us-east-1-2@%h"
    assert cmd[cmd.index("--concurrency") + 1] == "1" and cmd[cmd.index("--prefetch-multiplier") + 1] == "1"
