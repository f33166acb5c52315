"""A local HTTP peer that speaks the three providers' preemption-notice protocols.

Used by the tests and by the preemption injector: point a trainer at it through
``SPOTSHIFT_AWS_IMDS_URL`` / ``SPOTSHIFT_GCP_METADATA_URL`` / ``SPOTSHIFT_AZURE_METADATA_URL`` (or
a request's ``watchers``), then :meth:`MetadataServer.preempt`. It enforces what the real
endpoints enforce: IMDSv2 session tokens (401 without one), ``Metadata-Flavor: Google`` (403
without, echoed in responses), ``Metadata: true`` for Azure (400 without), 404 from AWS until a
notice exists, an incrementing ``DocumentIncarnation`` and ``StartRequests`` acknowledgements.
"""

from __future__ import annotations

import json
import secrets
import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

from spotshift.errors import ConfigError


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tokens: set[str] = set()
        self.aws_action: dict[str, str] | None = None
        self.gcp_preempted = False
        self.azure_events: list[dict[str, Any]] = []
        self.azure_incarnation = 1
        self.acknowledged: list[str] = []
        self.requests: list[tuple[str, str]] = []


class _Server(ThreadingHTTPServer):
    def __init__(self, address: tuple[str, int], state: _State):
        super().__init__(address, _Handler)
        self.state = state


class _Handler(BaseHTTPRequestHandler):
    """One request against the shared :class:`_State` of its :class:`_Server`."""

    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            # the client gave up waiting (a trainer's poll timed out on a busy machine): it
            # polls again; a traceback on the demo's terminal would say something broke
            self.close_connection = True

    def do_PUT(self) -> None:  # noqa: N802
        state = self.server.state
        state.requests.append(("PUT", self.path))
        if urlparse(self.path).path != "/latest/api/token":
            return self._send(404)
        ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        if not ttl or not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
            return self._send(400)
        token = secrets.token_urlsafe(24)
        with state.lock:
            state.tokens.add(token)
        self._send(200, token.encode(), {"Content-Type": "text/plain"})

    def do_GET(self) -> None:  # noqa: N802
        state = self.server.state
        state.requests.append(("GET", self.path))
        path = urlparse(self.path).path
        if path == "/latest/meta-data/spot/instance-action":
            if self.headers.get("X-aws-ec2-metadata-token") not in state.tokens:
                return self._send(401)
            with state.lock:
                action = state.aws_action
            if action is None:
                return self._send(404)
            return self._send(200, json.dumps(action).encode(), {"Content-Type": "application/json"})
        if path == "/computeMetadata/v1/instance/preempted":
            if self.headers.get("Metadata-Flavor") != "Google":
                return self._send(403)
            body = b"TRUE" if state.gcp_preempted else b"FALSE"
            return self._send(200, body, {"Metadata-Flavor": "Google", "Content-Type": "text/plain"})
        if path == "/metadata/scheduledevents":
            if self.headers.get("Metadata") != "true":
                return self._send(400)
            with state.lock:
                doc = {
                    "DocumentIncarnation": state.azure_incarnation,
                    "Events": list(state.azure_events),
                }
            return self._send(200, json.dumps(doc).encode(), {"Content-Type": "application/json"})
        self._send(404)

    def do_POST(self) -> None:  # noqa: N802
        state = self.server.state
        state.requests.append(("POST", self.path))
        if urlparse(self.path).path != "/metadata/scheduledevents" or self.headers.get("Metadata") != "true":
            return self._send(400)
        length = int(self.headers.get("Content-Length") or 0)
        try:
            doc = json.loads(self.rfile.read(length) or b"{}")
            ids = [r["EventId"] for r in doc.get("StartRequests", [])]
        except (ValueError, KeyError, TypeError):
            return self._send(400)
        with state.lock:
            state.acknowledged.extend(ids)
            before = len(state.azure_events)
            state.azure_events = [e for e in state.azure_events if e["EventId"] not in ids]
            if len(state.azure_events) != before:
                state.azure_incarnation += 1
        self._send(200)


class MetadataServer:
    """``with MetadataServer() as md: ...; md.preempt("aws", in_seconds=120)``; ``md.url`` is the base URL."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.state = _State()
        self._server = _Server((host, port), self.state)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="metadata-server",
            daemon=True,
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def env(self) -> dict[str, str]:
        """Environment variables pointing every watcher at this server."""
        return {
            "SPOTSHIFT_AWS_IMDS_URL": self.url,
            "SPOTSHIFT_GCP_METADATA_URL": self.url,
            "SPOTSHIFT_AZURE_METADATA_URL": self.url,
        }

    def preempt(self, provider: str, *, in_seconds: float | None = None, event_id: str | None = None) -> str:
        """Post a preemption notice in the provider's format; returns its provider-side id."""
        now = datetime.now(UTC)
        with self.state.lock:
            if provider == "aws":
                when = now + timedelta(seconds=120 if in_seconds is None else in_seconds)
                t = when.strftime("%Y-%m-%dT%H:%M:%SZ")
                self.state.aws_action = {"action": "terminate", "time": t}
                return t
            if provider == "gcp":
                self.state.gcp_preempted = True
                return "preempted"
            if provider == "azure":
                when = now + timedelta(seconds=30 if in_seconds is None else in_seconds)
                eid = event_id or f"{secrets.token_hex(4).upper()}-{secrets.token_hex(2).upper()}"
                self.state.azure_events.append(
                    {
                        "EventId": eid,
                        "EventType": "Preempt",
                        "ResourceType": "VirtualMachine",
                        "Resources": ["spotshift-vm"],
                        "EventStatus": "Scheduled",
                        "NotBefore": format_datetime(when, usegmt=True),
                        "Description": "Virtual machine is being evicted from Azure Spot",
                        "EventSource": "Platform",
                        "DurationInSeconds": -1,
                    }
                )
                self.state.azure_incarnation += 1
                return eid
        raise ConfigError(f"unknown provider {provider!r} (aws, gcp or azure)")

    def clear(self) -> None:
        """Withdraw every notice."""
        with self.state.lock:
            self.state.aws_action = None
            self.state.gcp_preempted = False
            if self.state.azure_events:
                self.state.azure_events = []
                self.state.azure_incarnation += 1

    @property
    def acknowledged(self) -> list[str]:
        return list(self.state.acknowledged)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> MetadataServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
