"""Workers per region, the settings side: which executor the move jobs use, the broker without its
password on disk, and bad input refused in one line (the Celery runs are in tests/dagster/test_workers.py)."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spotshift.cli import main
from spotshift.errors import ConfigError
from spotshift.workers import processes, queues
from spotshift.workers.settings import load_settings, settings_path
from tests.conftest import require_service


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


BROKER = "amqp://guest:guest@127.0.0.1:5672//"


@pytest.fixture
def fresh_queue() -> Iterator[str]:
    """A queue name no other test uses; deleted from the shared broker afterwards."""
    from kombu import Connection

    require_service("RabbitMQ", "127.0.0.1", 5672)
    name = f"t{secrets.token_hex(4)}.aws/us-east-1"
    yield name
    with Connection(BROKER) as conn:
        conn.default_channel.queue_delete(name)


def _consume_after(name: str, delay_s: float, stop: threading.Event) -> threading.Thread:
    """A consumer of ``name`` (what a Celery worker is to the broker) that attaches after ``delay_s``."""
    from kombu import Connection, Queue

    def run() -> None:
        time.sleep(delay_s)
        with Connection(BROKER) as conn, conn.Consumer(Queue(name, durable=False), callbacks=[]):
            stop.wait(30)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.services
def test_a_step_waits_for_a_worker_on_its_queue_then_names_the_queue(fresh_queue: str) -> None:
    hint = queues.start_hint("aws/us-east-1", "dagster")
    assert queues.consumers(BROKER, fresh_queue) == 0  # never declared: nobody consumes it
    started = time.monotonic()
    with pytest.raises(queues.NoWorkerError) as caught:
        queues.wait_for_workers(BROKER, [(fresh_queue, hint)], timeout_s=0.6, poll_s=0.1)
    assert time.monotonic() - started >= 0.6
    message = str(caught.value)
    assert f'"{fresh_queue}"' in message and "spotshift workers start --region aws/us-east-1" in message
    assert "guest:guest" not in message and "\n" not in message
    stop = threading.Event()
    try:
        _consume_after(fresh_queue, 0.5, stop)  # a worker that is still starting
        told: list[str] = []
        queues.wait_for_workers(BROKER, [(fresh_queue, hint)], timeout_s=20, poll_s=0.1, log=told.append)
        assert queues.consumers(BROKER, fresh_queue) == 1 and len(told) == 1
    finally:
        stop.set()


def test_an_unreachable_broker_or_a_bad_wait_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(
        ConfigError, match=r"^Celery broker amqp://\*\*\*@127\.0\.0\.1:1//: unreachable \("
    ) as e:
        queues.consumers("amqp://guest:s3cr3t@127.0.0.1:1//", "q")
    assert "s3cr3t" not in str(e.value)
    monkeypatch.setenv(queues.WAIT_ENV, "soon")
    with pytest.raises(ConfigError, match=r"^SPOTSHIFT_WORKER_WAIT_SECONDS='soon': give a number"):
        queues.wait_seconds()
    monkeypatch.setenv(queues.WAIT_ENV, "0")
    assert queues.wait_seconds() == 0
