"""Which executor runs the steps of a move, on which broker, and the queue of each region.

The embedded default is ``in_process``: every step of a move runs in the run's own process.
``spotshift home init --executor celery [--broker URL]`` (or ``SPOTSHIFT_EXECUTOR=celery`` with
``SPOTSHIFT_CELERY_BROKER``) makes the move jobs hand each step to a Celery queue on the broker:
one queue per region, named after the region (``aws/us-east-1``), served by workers in that region
(``spotshift workers start --region ...``). Steps that touch no region (planning a move) go to
the control queue, dagster-celery's default queue ``dagster``.

The broker URL is kept in ``$SPOTSHIFT_HOME/executor.json`` without its password; the password,
when there is one, comes from ``SPOTSHIFT_CELERY_BROKER_PASSWORD`` in each process's environment.
The variables win over the file, so one process can be pointed elsewhere without rewriting it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from spotshift.atomic import atomic_write_json
from spotshift.cloud_errors import redact_url
from spotshift.errors import ConfigError
from spotshift.home import spotshift_home
from spotshift.sync.store import parse_store_url

EXECUTOR_ENV = "SPOTSHIFT_EXECUTOR"
BROKER_ENV = "SPOTSHIFT_CELERY_BROKER"
BROKER_PASSWORD_ENV = "SPOTSHIFT_CELERY_BROKER_PASSWORD"
#: put before every queue name, so deployments (or test runs) can share one broker
QUEUE_PREFIX_ENV = "SPOTSHIFT_CELERY_QUEUE_PREFIX"
#: where the steps of a move hand each other their results (a store URL; default: the instance's
#: storage directory, which every worker must then share)
STEP_STORE_ENV = "SPOTSHIFT_STEP_STORE"
#: the embedded default and the distributed executor
EXECUTORS = ("in_process", "celery")
#: RabbitMQ on this machine (guest/guest is RabbitMQ's own default account, loopback only)
DEFAULT_BROKER = "amqp://guest@127.0.0.1:5672//"
BROKER_SCHEMES = ("amqp", "pyamqp")
#: steps that touch no region (plan_move, plan_recovery): dagster-celery's default queue
CONTROL_QUEUE = "dagster"


@dataclass(frozen=True)
class ExecutorSettings:
    """The executor of the move jobs: ``in_process`` or ``celery`` on ``broker`` (no password in it)."""

    kind: str = "in_process"
    broker: str = DEFAULT_BROKER
    queue_prefix: str = ""
    control_queue: str = CONTROL_QUEUE
    step_store: str = ""

    @property
    def distributed(self) -> bool:
        return self.kind == "celery"

    def broker_url(self) -> str:
        """The broker URL to connect with: the password from ``SPOTSHIFT_CELERY_BROKER_PASSWORD``
        inserted when set (never store or print what this returns)."""
        password = os.environ.get(BROKER_PASSWORD_ENV, "")
        if not password:
            return self.broker
        parts = urlsplit(self.broker)
        user, _, host = parts.netloc.rpartition("@")
        netloc = f"{user or 'guest'}:{quote(password, safe='')}@{host}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    def queue_name(self, queue: str) -> str:
        """The broker's name of a queue (a region's ``provider/region``, or the control queue)."""
        return f"{self.queue_prefix}{queue}"

    def describe(self) -> str:
        """One line for people: the executor and the broker without credentials."""
        steps = f"; step results in {self.step_store}" if self.step_store else ""
        if not self.distributed:
            return f"in-process (every step in the run's process){steps}"
        return f"celery on {redact_url(self.broker)} (one queue per region){steps}"


def settings_path() -> Path:
    """``$SPOTSHIFT_HOME/executor.json``: what ``spotshift home init --executor`` wrote."""
    return spotshift_home() / "executor.json"


def parse_broker(url: str) -> tuple[str, bool]:
    """``(url without its password, whether it had one)``; ConfigError naming what is wrong (the
    password is never echoed)."""
    text = url.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        raise ConfigError(f"broker URL {redact_url(text)!r} is malformed") from None
    if parts.scheme not in BROKER_SCHEMES or not parts.hostname:
        raise ConfigError(f"broker URL {redact_url(text)!r}: use amqp://user@host:5672/vhost (RabbitMQ)")
    had_password = parts.password is not None
    if had_password:
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        text = urlunsplit((parts.scheme, f"{user}@{host}" if user else host, parts.path, parts.query, ""))
    return text, had_password


def check_kind(kind: str, source: str) -> str:
    """``kind`` when it is a known executor, else ConfigError naming ``source``."""
    if kind not in EXECUTORS:
        raise ConfigError(f"{source}={kind!r}: use one of {', '.join(EXECUTORS)}")
    return kind


def load_settings() -> ExecutorSettings:
    """The executor in force: ``SPOTSHIFT_EXECUTOR`` / ``SPOTSHIFT_CELERY_BROKER`` over
    ``executor.json`` over the in-process default. ConfigError naming the file or variable."""
    kind, broker, prefix, step_store = "in_process", DEFAULT_BROKER, "", ""
    path = settings_path()
    if path.exists():
        try:
            raw = json.loads(path.read_text())
            kind, broker = str(raw["executor"]), str(raw.get("broker") or DEFAULT_BROKER)
            prefix = str(raw.get("queue_prefix") or "")
            step_store = str(raw.get("step_store") or "")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: not an executor settings file ({type(exc).__name__})") from None
        check_kind(kind, str(path))
    if os.environ.get(EXECUTOR_ENV, "").strip():
        kind = check_kind(os.environ[EXECUTOR_ENV].strip(), EXECUTOR_ENV)
    env_broker = os.environ.get(BROKER_ENV, "").strip()
    if env_broker:  # a process's own environment may hold the whole URL: used as given
        parse_broker(env_broker)
        broker = env_broker
    prefix = os.environ.get(QUEUE_PREFIX_ENV, prefix).strip()
    step_store = os.environ.get(STEP_STORE_ENV, step_store).strip()
    if step_store:
        check_step_store(step_store, STEP_STORE_ENV if os.environ.get(STEP_STORE_ENV) else str(path))
    return ExecutorSettings(kind, broker, prefix, step_store=step_store)


def check_step_store(url: str, source: str) -> str:
    """``url`` when it names a store (``file:///path``, ``s3://bucket/prefix``, ``gs://...``) without
    credentials in it; ConfigError naming ``source`` otherwise (the URL redacted)."""
    parsed = parse_store_url(url)
    if parsed.scheme.lower() not in ("file", "s3", "gs") or not (parsed.netloc or parsed.path.strip("/")):
        raise ConfigError(
            f"{source}: step store {redact_url(url)!r}: use file:///path, s3://bucket/prefix or gs://bucket/prefix"
        )
    return url


def write_settings(
    kind: str, broker: str | None = None, notes: list[str] | None = None, step_store: str | None = None
) -> ExecutorSettings:
    """Write ``executor.json`` (atomically, the broker without its password); ``notes`` receives
    what the user must do (export the password variable)."""
    check_kind(kind, "--executor")
    url, had_password = parse_broker(broker or DEFAULT_BROKER)
    record = {"executor": kind, "broker": url}
    if step_store:
        record["step_store"] = check_step_store(step_store, "--step-store")
    atomic_write_json(settings_path(), record)
    if had_password and notes is not None and not os.environ.get(BROKER_PASSWORD_ENV):
        notes.append(
            f"the broker password is not written to {settings_path()}: export {BROKER_PASSWORD_ENV} "
            "in the environment of every Dagster process and worker"
        )
    return ExecutorSettings(kind, url, step_store=step_store or "")
