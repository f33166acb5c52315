"""The router's HTTP side: its Starlette application and the uvicorn runner of ``spotshift router``.

Routing itself lives in :mod:`spotshift.serving.router` (:class:`~spotshift.serving.router.Router`);
this module only wires it to HTTP: ``POST /v1/completions``, ``GET /healthz``, ``GET /metrics``,
``GET /v1/policy``, and the once-a-second :meth:`~spotshift.serving.router.Router.tick`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from spotshift.errors import ConfigError
from spotshift.serving import replica_api as api
from spotshift.serving.latency import user_regions
from spotshift.serving.router import Router, RouterConfig, estimate_tokens


def build_app(router: Router, tick_s: float = 1.0) -> Any:
    """The router's Starlette application (its lifespan opens the client and runs :meth:`Router.tick`)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    regions = set(user_regions())

    async def completions(request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            return JSONResponse(api.error_body("invalid_request", "body is not a JSON object"), 400)
        region = request.headers.get(api.HEADER_USER_REGION) or router.cfg.user_region
        if region not in regions:
            return JSONResponse(api.error_body("invalid_request", f"unknown user region {region!r}"), 400)
        status, content, headers = await router.forward(raw, region, estimate_tokens(body))
        return Response(content, status, headers=headers, media_type="application/json")

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

        async def loop() -> None:
            while True:
                await asyncio.sleep(tick_s)
                router.tick()
                await router.close_gone()

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            await router.stop()

    return Starlette(
        routes=[
            Route(api.COMPLETIONS_PATH, completions, methods=["POST"]),
            Route(api.HEALTH_PATH, healthz),
            Route(api.METRICS_PATH, metrics),
            Route("/v1/policy", policy),
        ],
        lifespan=lifespan,
    )


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
        build_app(router), log_level="warning", access_log=False, timeout_graceful_shutdown=5
    )
    if announce:
        announce(f"http://127.0.0.1:{sock.getsockname()[1]}")
    # Server.run picks uvicorn's event loop (uvloop when installed): measured here, a router under
    # plain asyncio.run added ~4x the latency of one under uvloop on this loaded machine
    uvicorn.Server(config).run(sockets=[sock])
