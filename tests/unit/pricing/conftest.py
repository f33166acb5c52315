"""Fixtures of the pricing tests: recorded-shape provider responses and a local JSON HTTP server."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def fixture_json(name: str) -> Any:
    """A recorded response of tests/unit/pricing/fixtures/."""
    return json.loads((FIXTURES / name).read_text())


class JsonServer:
    """A real HTTP server on 127.0.0.1 whose answers come from ``route(path, query) -> (status, body)``."""

    def __init__(self, route: Callable[[str, dict[str, list[str]]], tuple[int, Any]]) -> None:
        self.requests: list[tuple[str, dict[str, list[str]], dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                parts = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(parts.query)
                outer.requests.append((parts.path, query, dict(self.headers)))
                status, body = route(parts.path, query)
                data = json.dumps(body).replace("https://prices.azure.com", outer.base).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def json_server() -> Iterator[Callable[..., JsonServer]]:
    """Factory: ``json_server(route)`` starts a server; all are stopped after the test."""
    servers: list[JsonServer] = []

    def start(route: Callable[[str, dict[str, list[str]]], tuple[int, Any]]) -> JsonServer:
        server = JsonServer(route)
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.close()
