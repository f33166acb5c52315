"""The contract between a model-server replica (``spotshift serve``) and whoever sends it traffic
(``spotshift router``, ``spotshift loadgen``, the nginx backend, the autoscaler).

One module so both sides agree on names and shapes; it imports nothing heavier than the standard
library and :mod:`spotshift.atomic`.

HTTP surface of a replica
-------------------------

* ``POST /v1/completions`` — OpenAI-style text completion. Request JSON (:class:`CompletionRequest`)::

      {"prompt": "text", "max_tokens": 16}           # optional: "temperature": 0 (greedy, default),
                                                      # "model": ignored, "user": ignored

  Response 200 JSON (:func:`completion_response`)::

      {"id": "cmpl-<hex>", "object": "text_completion", "created": <unix s>, "model": "<endpoint>",
       "choices": [{"index": 0, "text": "...", "finish_reason": "length"}],
       "usage": {"prompt_tokens": P, "completion_tokens": C, "total_tokens": P + C}}

  Response headers the router may learn from: :data:`HEADER_REPLICA` (replica id),
  :data:`HEADER_INFERENCE_MS` (model time, excluding queueing and the emulated network),
  :data:`HEADER_QUEUE_MS` (time waiting for the model). Greedy decoding makes a completion
  idempotent: the same prompt and ``max_tokens`` give the same text on every replica serving the
  same checkpoint, so a router may retry a refused or failed request elsewhere.

  Request header :data:`HEADER_USER_REGION` names the user region (one of
  :func:`spotshift.serving.latency.user_regions`) the request comes from. On the embedded default the
  *replica* applies the round trip ``latency.rtt_ms(user_region, replica location)`` as a real delay
  before answering (the router and loadgen never sleep for the network themselves), so latency
  measured end to end includes the network. No header: no delay.

  Errors: 400 (malformed JSON or fields; body ``{"error": {"type": "invalid_request", "message": ...}}``),
  503 while draining (below).

* ``GET /healthz`` — 200 ``{"status": "ok", ...}`` with the replica's :class:`ReplicaRecord` fields plus
  live ``in_flight`` and ``queue_depth``; 503 with ``"status": "draining"`` once draining started.
* ``GET /metrics`` — Prometheus text exposition; metric names in :data:`METRIC_NAMES`.

Draining
--------

A draining replica (spot notice received, or asked to stop) answers every new completion with
**503**, header ``Retry-After: 0`` and header :data:`HEADER_DRAINING` ``: 1``, body
``{"error": {"type": "draining", ...}}`` — it did no work, so the caller retries on another replica
at once. Requests already accepted are finished. Its registry entry turns ``state: draining``
as soon as draining starts and is removed once the last in-flight request has been answered.

Mutual TLS
----------

``spotshift serve ... --tls-dir DIR`` serves HTTPS and requires a client certificate: DIR holds
:data:`TLS_CA_FILE` (the local CA, PEM; client certificates must chain to it),
:data:`TLS_CERT_FILE` and :data:`TLS_KEY_FILE` (the replica's server certificate and key, PEM). The
files are replaced atomically by whoever rotates them (the router helper's CA code); the replica
checks their modification times every second and loads the new chain and CA into its live TLS
context, so new handshakes use the new certificate while open connections finish on the old one —
no request dropped. A changed ``ca.pem`` is *added* to the trusted set (the previous CA stays
trusted until the replica restarts), so clients holding certificates of either CA keep working
through a CA rotation. The registered ``url`` is then ``https://127.0.0.1:PORT``.

Registry
--------

Each endpoint has one JSON file, :func:`registry_path` =
``$SPOTSHIFT_HOME/serving/<endpoint>/replicas.json``::

    {"endpoint": "chat", "replicas": {"<replica_id>": {ReplicaRecord fields...}}}

Writers (replicas registering and deregistering) take an exclusive ``flock`` on
``replicas.json.lock``, read, modify and replace the file atomically (temp + rename), so a reader
never locks and never sees half a file. A replica killed without deregistering leaves a record whose
``pid`` is dead: :func:`live_replicas` skips those (``pid`` is this host's process id; the embedded
default runs replicas as local processes).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from spotshift.atomic import atomic_write_json, pid_alive
from spotshift.errors import ConfigError, InputError
from spotshift.home import spotshift_home
from spotshift.registry import locked

COMPLETIONS_PATH = "/v1/completions"
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"

HEADER_USER_REGION = "X-Spotshift-User-Region"
HEADER_REPLICA = "X-Spotshift-Replica"
HEADER_INFERENCE_MS = "X-Spotshift-Inference-Ms"
HEADER_QUEUE_MS = "X-Spotshift-Queue-Ms"
HEADER_DRAINING = "X-Spotshift-Draining"

TLS_CA_FILE = "ca.pem"
TLS_CERT_FILE = "server.pem"
TLS_KEY_FILE = "server-key.pem"

DRAINING_STATUS = 503
MAX_PROMPT_CHARS = 16_384
MAX_COMPLETION_TOKENS = 512

MARKETS = ("spot", "on_demand", "reserved")
STATES = ("ready", "draining")

#: Prometheus metric names a replica exposes on /metrics (labels: endpoint, replica, location, market)
METRIC_NAMES = {
    "requests": "spotshift_replica_requests_total",  # counter, extra label ``status`` (ok|error|refused)
    "tokens_in": "spotshift_replica_prompt_tokens_total",  # counter
    "tokens_out": "spotshift_replica_completion_tokens_total",  # counter
    "latency": "spotshift_replica_request_latency_seconds",  # histogram, accept to answer
    "queue_depth": "spotshift_replica_queue_depth",  # gauge: accepted, waiting for the model
    "in_flight": "spotshift_replica_in_flight",  # gauge: accepted, not yet answered
}

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


def check_endpoint_name(name: str) -> str:
    """``name`` if it is a valid endpoint name (lowercase letters, digits, ``_.-``; 1-63 chars)."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(
            f"endpoint name {name!r} must be 1-63 of a-z 0-9 _ . - starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class CompletionRequest:
    """A validated ``POST /v1/completions`` body."""

    prompt: str
    max_tokens: int = 16
    temperature: float = 0.0


def parse_completion_request(body: Any) -> CompletionRequest:
    """Validate a decoded request body; :class:`InputError` (one line, HTTP 400) when it is wrong.

    ``prompt`` must be a non-empty string of at most :data:`MAX_PROMPT_CHARS` characters,
    ``max_tokens`` an integer 1..:data:`MAX_COMPLETION_TOKENS`, ``temperature`` 0 (greedy) — sampling
    is not offered, so replies stay reproducible and retries idempotent. ``model`` and ``user`` are
    accepted and ignored (OpenAI clients send them); other keys are refused.
    """
    if not isinstance(body, dict):
        raise InputError("completion request: expected a JSON object")
    unknown = sorted(set(body) - {"prompt", "max_tokens", "temperature", "model", "user"})
    if unknown:
        raise InputError(f"completion request: unknown field(s) {', '.join(unknown)}")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise InputError("completion request: 'prompt' must be a non-empty string")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InputError(f"completion request: 'prompt' longer than {MAX_PROMPT_CHARS} characters")
    max_tokens = body.get("max_tokens", 16)
    if (
        isinstance(max_tokens, bool)
        or not isinstance(max_tokens, int)
        or not 1 <= max_tokens <= MAX_COMPLETION_TOKENS
    ):
        raise InputError(
            f"completion request: 'max_tokens' must be an integer from 1 to {MAX_COMPLETION_TOKENS}"
        )
    temperature = body.get("temperature", 0.0)
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not math.isfinite(temperature)
    ):
        raise InputError("completion request: 'temperature' must be a number")
    if temperature != 0:
        raise InputError("completion request: only greedy decoding ('temperature': 0) is served")
    return CompletionRequest(prompt=prompt, max_tokens=max_tokens, temperature=0.0)


def completion_response(
    *, completion_id: str, created_s: int, model: str, text: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """The 200 response body of ``POST /v1/completions`` (OpenAI text_completion shape)."""
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": created_s,
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": "length"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def error_body(kind: str, message: str) -> dict[str, Any]:
    """The JSON body of an error answer: ``{"error": {"type": kind, "message": message}}``."""
    return {"error": {"type": kind, "message": message}}


@dataclass(frozen=True)
class ReplicaRecord:
    """One replica as the registry lists it.

    ``url`` is the base URL (``http://127.0.0.1:PORT`` or ``https://...`` under mutual TLS);
    ``price_usd_per_hour`` what its capacity costs in its market; ``checkpoint`` the digest of the
    checkpoint it serves (replicas of one endpoint on different checkpoints give different text).
    """

    replica_id: str
    endpoint: str
    url: str
    location: str
    market: str
    price_usd_per_hour: float
    pid: int
    started_at_s: float
    checkpoint: str
    state: str = "ready"

    def __post_init__(self) -> None:
        if self.market not in MARKETS:
            raise ConfigError(
                f"replica {self.replica_id}: market {self.market!r} is not one of {', '.join(MARKETS)}"
            )
        if self.state not in STATES:
            raise ConfigError(
                f"replica {self.replica_id}: state {self.state!r} is not one of {', '.join(STATES)}"
            )


def registry_path(endpoint: str) -> Path:
    """The endpoint's replica registry file: ``$SPOTSHIFT_HOME/serving/<endpoint>/replicas.json``."""
    return spotshift_home() / "serving" / check_endpoint_name(endpoint) / "replicas.json"


def read_registry(endpoint: str) -> dict[str, ReplicaRecord]:
    """All records in the endpoint's registry (dead ones included), by replica id; empty when absent."""
    path = registry_path(endpoint)
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return {}
    try:
        doc = json.loads(raw)
        replicas = doc["replicas"]
        return {rid: ReplicaRecord(**rec) for rid, rec in replicas.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path}: not a replica registry ({type(exc).__name__})") from None


def live_replicas(endpoint: str, *, include_draining: bool = False) -> list[ReplicaRecord]:
    """Records whose process is alive, ``ready`` ones only unless ``include_draining``; sorted by id."""
    out = [
        r
        for r in read_registry(endpoint).values()
        if pid_alive(r.pid) and (include_draining or r.state == "ready")
    ]
    return sorted(out, key=lambda r: r.replica_id)


def _rewrite(endpoint: str, change: Any) -> None:
    path = registry_path(endpoint)
    with locked(path):
        records = read_registry(endpoint)
        change(records)
        doc = {"endpoint": endpoint, "replicas": {rid: asdict(r) for rid, r in sorted(records.items())}}
        atomic_write_json(path, doc)


def register(record: ReplicaRecord) -> None:
    """Add or replace ``record`` in its endpoint's registry (and drop records of dead processes)."""

    def change(records: dict[str, ReplicaRecord]) -> None:
        for rid in [rid for rid, r in records.items() if not pid_alive(r.pid)]:
            del records[rid]
        records[record.replica_id] = record

    _rewrite(record.endpoint, change)


def set_state(endpoint: str, replica_id: str, state: str) -> None:
    """Mark a registered replica ``ready`` or ``draining`` (no-op when it is not registered)."""
    from dataclasses import replace

    def change(records: dict[str, ReplicaRecord]) -> None:
        if replica_id in records:
            records[replica_id] = replace(records[replica_id], state=state)

    _rewrite(endpoint, change)


def deregister(endpoint: str, replica_id: str) -> None:
    """Remove a replica from its endpoint's registry (no-op when it is not there)."""
    _rewrite(endpoint, lambda records: records.pop(replica_id, None))


def replica_id_for(endpoint: str, location: str, port: int, pid: int | None = None) -> str:
    """A replica id unique on this host: ``<endpoint>-<provider>-<region>-<port>-<pid>``."""
    loc = location.replace("/", "-")
    return f"{endpoint}-{loc}-{port}-{pid if pid is not None else os.getpid()}"
