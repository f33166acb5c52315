"""A model-less replica speaking the replica HTTP contract, for router tests and the router benchmark.

Served as ``spotshift serve`` serves a replica (uvicorn, each answer in one send:
:func:`spotshift.serving.one_send.http_protocol`). It answers ``POST /v1/completions`` after ``service_ms`` (asyncio sleep, so replicas are cheap to
run by the dozen) with a deterministic completion, ``/healthz`` and 503 while draining, exactly as
:mod:`spotshift.serving.replica_api` specifies. It measures the *proxy*: with no model in the
way, router overhead is the difference between calling it directly and through the router.
(``spotshift serve`` with a real model is exercised by its own tests and one router integration
test.)

Run in-process with :class:`ServerThread`, or as a process (killable mid-request)::

    python bench/_replica_peer.py --id r1 --service-ms 300 [--tls-dir DIR]   # prints the port

or as a launchable replica, keeping ``spotshift serve``'s contract, so that
:class:`~spotshift.serving.launcher.LocalReplicaLauncher` (``program=("bench/_replica_peer.py",)``)
starts and stops it exactly as it does a model server::

    python bench/_replica_peer.py serve ENDPOINT --location L --market M --usd-per-hour P [--knobs FILE]

It warms up (a few completions to itself), then registers in the endpoint's registry; the first
SIGTERM drains it (503 to new
requests, in-flight ones finish, then it deregisters and exits 0). ``--knobs``: a JSON file
``{location: {"service_ms": N, "perturb": F}}`` read at start (per-side behaviour of a benchmark).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spotshift.serving import replica_api as api  # noqa: E402
from spotshift.serving.one_send import http_protocol  # noqa: E402


class PeerState:
    """Mutable knobs of a running peer (tests flip ``draining`` and ``service_ms``).

    ``perturb`` > 0: the peer's answers come from :class:`BigramModel` with its weights perturbed by
    that much Gaussian noise (a numerically different kernel or a wrong checkpoint: no crash, some
    greedy tokens differ); 0 answers exactly as every other peer."""

    def __init__(self, replica_id: str, service_ms: float, perturb: float = 0.0) -> None:
        self.replica_id, self.service_ms = replica_id, service_ms
        self.draining = False
        self.hold = False  # a test's knob: new requests get no answer until it is cleared
        self.served = 0
        self.in_flight = 0
        self.held = 0  # requests held now (surely in flight: none finishes before the release)
        self.model = BigramModel(perturb)


class BigramModel:
    """A byte-level bigram model with seeded weights decoded greedily: every peer with ``perturb``
    0 gives the same tokens for a prompt; a perturbed one flips some argmaxes."""

    _base: Any = None

    def __init__(self, perturb: float = 0.0, seed: int = 0) -> None:
        import numpy as np

        if BigramModel._base is None:
            BigramModel._base = np.random.default_rng(seed).standard_normal((256, 256))
        self.weights = BigramModel._base
        if perturb > 0:
            self.weights = self.weights + perturb * np.random.default_rng(seed + 1).standard_normal(
                (256, 256)
            )

    def complete(self, prompt: str, max_tokens: int) -> str:
        data = prompt.encode() or b"\0"
        prev, tok = (sum(data) * 31) % 256, data[-1]
        out = []
        for i in range(max_tokens):
            # logits of the last token plus a context row (the prompt so far), argmax: greedy decoding
            logits = self.weights[tok] + self.weights[(prev + 7 * i) % 256]
            prev, tok = (prev * 31 + tok) % 256, int(logits.argmax())
            out.append(tok)
        return bytes(out).hex()


def peer_app(state: PeerState) -> Any:
    """The Starlette app of one peer."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def completions(request: Request) -> Response:
        if state.draining:
            return JSONResponse(
                api.error_body("draining", f"replica {state.replica_id} is draining"),
                api.DRAINING_STATUS,
                headers={"Retry-After": "0", api.HEADER_DRAINING: "1"},
            )
        try:
            req = api.parse_completion_request(json.loads(await request.body()))
        except (ValueError, api.InputError) as exc:
            return JSONResponse(api.error_body("invalid_request", str(exc)), 400)
        state.in_flight += 1
        t0 = time.perf_counter()
        try:
            if state.hold:
                state.held += 1
                try:
                    while state.hold:
                        await asyncio.sleep(0.01)
                finally:
                    state.held -= 1
            if state.service_ms > 0:
                await asyncio.sleep(state.service_ms / 1000.0)
        finally:
            state.in_flight -= 1
        text = state.model.complete(req.prompt, req.max_tokens)
        state.served += 1
        body = api.completion_response(
            completion_id="cmpl-" + text[:12],
            created_s=0,
            model="peer",
            text=text,
            prompt_tokens=len(req.prompt) // 4 + 1,
            completion_tokens=req.max_tokens,
        )
        ms = f"{(time.perf_counter() - t0) * 1000:.3f}"
        return JSONResponse(body, headers={api.HEADER_REPLICA: state.replica_id, api.HEADER_INFERENCE_MS: ms})

    async def healthz(request: Request) -> Response:
        status = "draining" if state.draining else "ok"
        return JSONResponse(
            {"status": status, "replica_id": state.replica_id, "in_flight": state.in_flight},
            api.DRAINING_STATUS if state.draining else 200,
        )

    async def control(request: Request) -> Response:
        """Test knobs of a peer in its own process: ``{"service_ms": N, "draining": true, "hold": true}``."""
        knobs = json.loads(await request.body())
        if "service_ms" in knobs:
            state.service_ms = float(knobs["service_ms"])
        if "draining" in knobs:
            state.draining = bool(knobs["draining"])
        if "hold" in knobs:
            state.hold = bool(knobs["hold"])
        return JSONResponse(
            {
                "service_ms": state.service_ms,
                "draining": state.draining,
                "in_flight": state.in_flight,
                "held": state.held,
            }
        )

    return Starlette(
        routes=[
            Route(api.COMPLETIONS_PATH, completions, methods=["POST"]),
            Route(api.HEALTH_PATH, healthz),
            Route("/_peer", control, methods=["POST"]),
        ]
    )


def bound_socket() -> socket.socket:
    """A listening-ready TCP socket on 127.0.0.1 with an ephemeral port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class ReloadingTLS:
    """ASGI wrapper that polls a :class:`~spotshift.serving.mtls.TLSReloader` from the server's own
    event loop (as a replica does): the live TLS context is only ever changed by the thread that
    runs the handshakes."""

    def __init__(self, app: Any, reloader: Any, every_s: float = 0.05) -> None:
        self.app, self.reloader, self.every_s = app, reloader, every_s

    async def _poll(self) -> None:
        while True:
            self.reloader.check()
            await asyncio.sleep(self.every_s)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        task = None
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                task = asyncio.create_task(self._poll())
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                if task:
                    task.cancel()
                await send({"type": "lifespan.shutdown.complete"})
                return


class ServerThread:
    """Run an ASGI app under uvicorn in a background thread on an ephemeral port.

    ``ssl``: uvicorn ``ssl_*`` options (:func:`spotshift.serving.mtls.uvicorn_ssl_options`); the
    live TLS context is then ``self.config.ssl``, and ``self.reloader`` (a
    :class:`~spotshift.serving.mtls.TLSReloader` polled in the server's loop) picks up rotated files.
    """

    def __init__(self, app: Any, ssl: dict[str, Any] | None = None) -> None:
        import uvicorn

        self.sock = bound_socket()
        self.port = self.sock.getsockname()[1]
        self.reloader = None
        wrapper = _Late(app)
        self.config = uvicorn.Config(
            wrapper,
            http=http_protocol(),  # as spotshift serve: each answer in one send
            log_level="warning",
            access_log=False,
            lifespan="auto",
            timeout_graceful_shutdown=5,
            **(ssl or {}),
        )
        self.config.load()
        if self.config.ssl:
            from spotshift.serving.mtls import TLSReloader

            self.reloader = TLSReloader(self.config.ssl, Path(ssl["ssl_certfile"]).parent)  # type: ignore[index]
            wrapper.app = ReloadingTLS(app, self.reloader)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    @property
    def url(self) -> str:
        scheme = "https" if self.config.ssl else "http"
        return f"{scheme}://127.0.0.1:{self.port}"


class _Late:
    """Forwards to ``app``, which may be replaced before the server starts."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def _warm_up(url: str, n: int = 3) -> None:
    """A few completions to itself before registering (imports and first-request paths loaded)."""
    import httpx

    with httpx.Client(timeout=30, trust_env=False) as client:
        for i in range(n):
            client.post(url + api.COMPLETIONS_PATH, json={"prompt": f"warm {i}", "max_tokens": 4})


def serve_main(argv: list[str]) -> int:
    """``serve ENDPOINT --location L --market M --usd-per-hour P``: a registered, draining replica."""
    import os
    import signal as _signal

    import uvicorn

    p = argparse.ArgumentParser(prog="_replica_peer.py serve")
    p.add_argument("endpoint")
    p.add_argument("--location", required=True)
    p.add_argument("--market", required=True)
    p.add_argument("--usd-per-hour", type=float, required=True)
    p.add_argument("--knobs", type=Path)
    p.add_argument("--service-ms", type=float, default=40.0)
    p.add_argument(
        "--model",
        default="",
        help="a peer has no model: registered as the checkpoint it serves (last path part)",
    )
    args = p.parse_args(argv)
    checkpoint = args.model.rstrip("/").rsplit("/", 1)[-1] if args.model else "peer"
    all_knobs = json.loads(args.knobs.read_text()) if args.knobs else {}
    # knobs per location, overridden per checkpoint ("checkpoint:<id>") for a new one in the same place
    knobs = {**all_knobs.get(args.location, {}), **all_knobs.get(f"checkpoint:{checkpoint}", {})}
    sock = bound_socket()
    port = sock.getsockname()[1]
    rid = api.replica_id_for(args.endpoint, args.location, port)
    state = PeerState(rid, float(knobs.get("service_ms", args.service_ms)), float(knobs.get("perturb", 0.0)))
    config = uvicorn.Config(
        peer_app(state),
        http=http_protocol(),
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )

    async def run() -> None:
        loop = asyncio.get_running_loop()
        drain = asyncio.Event()

        class DrainingServer(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:
                if state.draining:  # a second signal forces
                    super().handle_exit(sig, frame)
                    return
                state.draining = True
                loop.call_soon_threadsafe(drain.set)

        server = DrainingServer(config)
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(_warm_up, f"http://127.0.0.1:{port}")  # first requests are not cold
        rec = api.ReplicaRecord(
            rid, args.endpoint, f"http://127.0.0.1:{port}", args.location, args.market,
            args.usd_per_hour, os.getpid(), time.time(), checkpoint,
        )  # fmt: skip
        await asyncio.to_thread(api.register, rec)
        print(port, flush=True)
        if early:  # stopped while starting: drain at once
            state.draining = True
            drain.set()
        await drain.wait()
        await asyncio.to_thread(api.set_state, args.endpoint, rid, "draining")
        await asyncio.sleep(0.2)  # requests the router sent before it saw the drain arrive (and get 503)
        while state.in_flight:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(api.deregister, args.endpoint, rid)
        server.should_exit = True
        await task

    early: list[int] = []  # a SIGTERM before uvicorn's handler is in place: drain once started
    _signal.signal(_signal.SIGTERM, lambda sig, _frame: early.append(sig))
    asyncio.run(run())
    return 0


def main() -> int:
    """Serve one peer in this process; print its port on stdout, then serve until killed."""
    import uvicorn

    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        return serve_main(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--id", default="peer")
    p.add_argument("--service-ms", type=float, default=0.0)
    p.add_argument("--tls-dir", type=Path)
    p.add_argument("--perturb", type=float, default=0.0)
    args = p.parse_args()
    ssl_opts: dict[str, Any] = {}
    if args.tls_dir:
        from spotshift.serving.mtls import uvicorn_ssl_options

        ssl_opts = uvicorn_ssl_options(args.tls_dir)
    sock = bound_socket()
    config = uvicorn.Config(
        peer_app(PeerState(args.id, args.service_ms, args.perturb)),
        http=http_protocol(),
        log_level="warning",
        access_log=False,
        **ssl_opts,
    )
    print(sock.getsockname()[1], flush=True)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
