"""The router's HTTP side: its Starlette application and the uvicorn runner of ``spotshift router``.

Routing itself lives in :mod:`spotshift.serving.router` (:class:`~spotshift.serving.router.Router`);
this module only wires it to HTTP: ``POST /v1/completions``, ``GET /healthz``, ``GET /metrics``,
``GET /v1/policy``, and the once-a-second :meth:`~spotshift.serving.router.Router.tick`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from spotshift.errors import ConfigError
from spotshift.serving import replica_api as api
from spotshift.serving.latency import user_regions
from spotshift.serving.one_send import http_protocol
from spotshift.serving.router import Router
from spotshift.serving.router_state import RouterConfig, estimate_tokens


class _Completions:
    """The request path as a bare ASGI app: ``POST /v1/completions`` is served here without a
    framework in the way (measured: Starlette's request/response objects cost more CPU than the
    routing itself); every other path goes to ``other`` (the Starlette app)."""

    def __init__(self, router: Router, other: Any) -> None:
        self.router, self.other = router, other
        self.regions = frozenset(user_regions())
        self.header = api.HEADER_USER_REGION.lower().encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != api.COMPLETIONS_PATH or scope["method"] != "POST":
            await self.other(scope, receive, send)
            return
        chunks = []
        while True:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        raw = b"".join(chunks)
        region = self.router.cfg.user_region
        for name, value in scope["headers"]:
            if name == self.header:
                region = value.decode("latin-1") or region
                break
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            await _send(send, 400, api.error_body("invalid_request", "body is not a JSON object"))
            return
        if region not in self.regions:
            await _send(send, 400, api.error_body("invalid_request", f"unknown user region {region!r}"))
            return
        status, content, headers = await self.router.forward(raw, region, estimate_tokens(body))
        headers += ((b"content-type", b"application/json"), (b"content-length", b"%d" % len(content)))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})


async def _send(send: Any, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def build_app(router: Router, tick_s: float = 1.0) -> Any:
    """The router's ASGI application: completions on the bare path (:class:`_Completions`), the
    rest through Starlette, whose lifespan opens the pool and runs :meth:`Router.tick`."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    async def healthz(request: Request) -> Response:
        ready = sum(1 for r in router.replicas if r.state == "ready")
        return JSONResponse({"status": "ok", "endpoint": router.cfg.endpoint, "ready_replicas": ready})

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(router.metrics_text(), media_type="text/plain; version=0.0.4")

    async def policy(request: Request) -> Response:
        return JSONResponse(router.policy().to_dict())

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        await router.start()
        # what exists now lives as long as the router: out of the collector's way, so the
        # collections that per-request garbage triggers do not walk it again (py-spy: ~7 % of the
        # router's CPU was the collector)
        gc.freeze()

        async def loop() -> None:
            while True:
                await asyncio.sleep(tick_s)
                router.tick()

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            await router.stop()

    other = Starlette(
        routes=[
            Route(api.HEALTH_PATH, healthz),
            Route(api.METRICS_PATH, metrics),
            Route("/v1/policy", policy),
        ],
        lifespan=lifespan,
    )
    return _Completions(router, other)


def run_router(cfg: RouterConfig, port: int = 0, announce: Callable[[str], None] | None = None) -> None:
    """Serve the router on ``127.0.0.1:port`` (0: any free port) until SIGTERM/Ctrl-C; ``announce``
    gets the URL once it listens."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        raise ConfigError(
            f"router {cfg.endpoint}: cannot listen on 127.0.0.1:{port} ({exc.strerror})"
        ) from None
    sock.listen(2048)  # connections made before the app is up wait in the backlog
    router = Router(cfg)
    router.prepare_tls()  # certificate files exist before anyone is told the URL
    config = uvicorn.Config(
        build_app(router),
        http=http_protocol(),  # httptools, one send per answer
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
        # nothing sits in front of the router on loopback: no proxy-header rewriting, and no
        # Server/Date headers built per answer (less CPU per proxied request)
        proxy_headers=False,
        server_header=False,
        date_header=False,
    )
    if announce:
        announce(f"http://127.0.0.1:{sock.getsockname()[1]}")
    # Server.run picks uvicorn's event loop (uvloop when installed): measured here, a router under
    # plain asyncio.run added ~4x the latency of one under uvloop on this loaded machine
    uvicorn.Server(config).run(sockets=[sock])
