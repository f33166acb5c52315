"""Is anybody serving a queue? A step is handed to a region's queue only when a worker listens there.

Celery publishes to a queue whether or not a worker consumes it: a move whose target region has no
worker would wait forever, holding its run (and, after the drain, a job that runs nowhere). Before
a step is submitted, the executor asks the broker how many consumers the step's queue has (AMQP
``queue.declare`` with ``passive``: it reads the count, creates nothing) and waits up to
``SPOTSHIFT_WORKER_WAIT_SECONDS`` (default 120 s: a worker being started or restarted) for one to
appear; after that the run fails with one line naming the queue and how to start a worker for it.
The move jobs check every queue they can resolve before their first step, so a missing region
worker stops a move before anything is drained.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

from spotshift.cloud_errors import redact_url
from spotshift.errors import ConfigError

WAIT_ENV = "SPOTSHIFT_WORKER_WAIT_SECONDS"
DEFAULT_WAIT_S = 120.0


class NoWorkerError(ConfigError):
    """No worker consumes a queue a step must go to (start one, or change the executor)."""


def wait_seconds() -> float:
    """How long a step waits for a worker on its queue: ``SPOTSHIFT_WORKER_WAIT_SECONDS`` or 120.
    ConfigError naming the variable when it is not a number >= 0."""
    raw = os.environ.get(WAIT_ENV, "").strip()
    if not raw:
        return DEFAULT_WAIT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses nan
        raise ConfigError(f"{WAIT_ENV}={raw!r}: give a number of seconds >= 0")
    return value


def consumers(broker_url: str, queue: str) -> int:
    """The number of consumers of ``queue`` on the broker now (0 when the queue does not exist).
    ConfigError naming the broker (without credentials) when it cannot be reached."""
    from amqp.exceptions import AMQPError, NotFound
    from kombu import Connection
    from kombu.exceptions import OperationalError

    try:
        with Connection(broker_url, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)
            try:
                return int(conn.channel().queue_declare(queue=queue, passive=True).consumer_count)
            except NotFound:  # never declared: nobody consumes it
                return 0
    except (OSError, OperationalError, AMQPError) as exc:
        raise ConfigError(
            f"Celery broker {redact_url(broker_url)}: unreachable ({type(exc).__name__})"
        ) from None


def start_hint(queue: str, control_queue: str) -> str:
    """The command that starts a worker for ``queue`` (a region's or the control queue)."""
    if queue == control_queue:
        return "spotshift workers start (it starts the control queue's worker)"
    return f"spotshift workers start --region {queue}"


def wait_for_workers(
    broker_url: str,
    queues: Iterable[tuple[str, str]],
    *,
    timeout_s: float,
    poll_s: float = 0.5,
    log: Callable[[str], None] | None = None,
) -> None:
    """Return once every ``(broker queue name, hint)`` has a consumer; NoWorkerError naming the
    queues still without one after ``timeout_s`` and how to start their workers (the hints)."""
    pending = dict(queues)
    deadline = time.monotonic() + timeout_s
    told = False
    while True:
        pending = {q: hint for q, hint in pending.items() if consumers(broker_url, q) == 0}
        if not pending:
            return
        if time.monotonic() >= deadline:
            names = ", ".join(f'"{q}"' for q in pending)
            hints = "; ".join(dict.fromkeys(pending.values()))
            raise NoWorkerError(
                f"no worker serves the Celery queue{'s' * (len(pending) > 1)} {names} on "
                f"{redact_url(broker_url)} after {timeout_s:g} s ({WAIT_ENV}); start: {hints}"
            )
        if log is not None and not told:
            log(f"waiting up to {timeout_s:g} s for a worker on {', '.join(sorted(pending))}")
            told = True
        time.sleep(poll_s)
