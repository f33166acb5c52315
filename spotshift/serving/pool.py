"""Connection pools from the router to its replicas: one ``aiohttp.ClientSession``, keep-alive.

One session serves every replica (its connector keeps up to ``max_connections`` keep-alive
connections per replica host:port, TLS sessions reused on each). aiohttp rather than
``httpx.AsyncClient``: on this machine the router's CPU per proxied request fell from ~1.3 ms
(httpx, already sharded so its per-request pool scan stays small) to a fraction of that
(bench/bench_router.py records the figure as ``cpu_ms_per_request``).

What the router sees is :class:`ReplicaAnswer` (``status_code``, ``content``, ``headers``), and a
transport failure (connection refused or reset, the replica dying mid-request, a timeout) raises
:class:`ReplicaUnreachable`, a subclass of ``httpx.TransportError`` so callers written against the
httpx contract (the cutover mirror) keep catching it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx

# Replicas run uvicorn, which closes an idle keep-alive connection after 5 s: the pool forgets its
# idle connections sooner, so a request never lands on one the replica is closing (which would
# look like a dead replica and set it aside for nothing).
KEEPALIVE_S = 4.0


class ReplicaUnreachable(httpx.TransportError):
    """The replica could not be reached or dropped the connection before answering."""


@dataclass(frozen=True)
class ReplicaAnswer:
    """A replica's complete answer."""

    status_code: int
    content: bytes
    headers: Mapping[str, str]


class ReplicaPool:
    """Pooled keep-alive connections to every replica of one router (created lazily, in the loop).

    ``verify``: an :class:`ssl.SSLContext` (mutual TLS; reloading its certificate in place keeps
    pooled connections going and new ones use the new certificate), ``True`` for default
    verification, or ``False``.
    """

    def __init__(self, verify: Any, max_connections: int, timeout_s: float) -> None:
        self.verify, self.max_connections, self.timeout_s = verify, max_connections, timeout_s
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=0,  # no global cap: the per-replica cap bounds each replica's queue
            limit_per_host=self.max_connections,
            keepalive_timeout=KEEPALIVE_S,
            ssl=self.verify,  # an SSLContext (mutual TLS), True (default verification) or False
            use_dns_cache=True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            auto_decompress=False,
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),  # replicas set no cookies: no jar filtering per request
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        return self._session

    async def post(self, url: str, content: bytes, headers: Mapping[str, str]) -> ReplicaAnswer:
        """POST ``content`` to ``url``; the whole answer, or :class:`ReplicaUnreachable`."""
        session = self._session or self._open()
        try:
            async with session.post(url, data=content, headers=headers) as resp:
                body = await resp.read()
                return ReplicaAnswer(resp.status, body, resp.headers)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ReplicaUnreachable(f"{url}: {type(exc).__name__}") from None

    async def aclose(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None
