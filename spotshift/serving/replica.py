"""A model-server replica: the HTTP surface of :mod:`spotshift.serving.replica_api` over a served model.

The app (Starlette, served by uvicorn; :func:`run_replica`) answers ``POST /v1/completions`` with
real forward passes of the checkpoint it loaded (:mod:`spotshift.serving.model_host`), one request on
the model at a time in a dedicated worker thread (the others wait in the queue the metrics report),
``GET /healthz`` and ``GET /metrics`` (prometheus-client exposition, its own registry per replica).

Network on the embedded default: a request that names its user region
(:data:`~spotshift.serving.replica_api.HEADER_USER_REGION`) is delayed by the round trip from that
region to the replica's location (:func:`spotshift.serving.latency.rtt_ms`, a sourced table) — half
before it joins the queue (the request's way in), half after the answer is computed (the way back)
— so the latency the replica measures and the client sees is end to end. ``emulate_network=False``
(a replica really deployed in its region) turns the delay off.

Draining (:meth:`Replica.drain`): new completions get 503 + ``Retry-After: 0`` +
``X-Spotshift-Draining: 1`` at once, the registry says ``draining``, accepted requests finish, then
the replica deregisters, records its last usage window and the server exits. It starts on a spot
provider's preemption notice (the trainer's watchers, :mod:`spotshift.training.preemption`, polled for
the replica's location), on SIGTERM/SIGINT, or when asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from spotshift.clock import load_clock
from spotshift.errors import ConfigError, InputError, SpotshiftError
from spotshift.jsondoc import parse_json
from spotshift.serving import replica_api as api
from spotshift.serving.latency import rtt_ms
from spotshift.serving.usage import ReplicaIdentity, UsageWindows, record_usage

log = logging.getLogger("spotshift.serving")

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class ReplicaConfig:
    """Where and how a replica serves. ``usd_per_hour`` prices its capacity in ``market``."""

    endpoint: str
    location: str
    market: str
    slo_ms: float
    usd_per_hour: float
    usd_per_violation: float
    host: str = "127.0.0.1"
    port: int = 0
    emulate_network: bool = True
    record_usage: bool = True
    usage_flush_s: float = 5.0
    drain_margin_s: float = 2.0  # deregister this long before a notice's deadline at the latest


class _Metrics:
    def __init__(self, labels: dict[str, str]):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        names, keys = api.METRIC_NAMES, list(labels)
        kw: dict[str, Any] = {"registry": self.registry}
        self.requests = Counter(
            names["requests"].removesuffix("_total"),
            "Completion requests by outcome",
            [*keys, "status"],
            **kw,
        )
        self.tokens_in = Counter(
            names["tokens_in"].removesuffix("_total"), "Prompt tokens", keys, **kw
        ).labels(**labels)
        self.tokens_out = Counter(
            names["tokens_out"].removesuffix("_total"), "Completion tokens", keys, **kw
        ).labels(**labels)
        self.latency = Histogram(
            names["latency"],
            "Accept-to-answer latency incl. emulated network, seconds",
            keys,
            buckets=LATENCY_BUCKETS_S,
            **kw,
        ).labels(**labels)
        self.queue_depth = Gauge(names["queue_depth"], "Requests waiting for the model", keys, **kw).labels(
            **labels
        )
        self.in_flight = Gauge(names["in_flight"], "Requests accepted, not yet answered", keys, **kw).labels(
            **labels
        )
        self.labels = labels

    def count(self, status: str) -> None:
        self.requests.labels(**self.labels, status=status).inc()


class Replica:
    """One replica's state: the model, counters, the drain flag; :meth:`app` is its ASGI application."""

    def __init__(self, cfg: ReplicaConfig, model: Any, record: api.ReplicaRecord):
        self.cfg = cfg
        self.model = model
        self.record = record
        self.in_flight = 0
        self.queued = 0
        self.draining = False
        self.drained = asyncio.Event()  # draining and nothing in flight any more
        self.finished = asyncio.Event()  # the drain is complete: deregistered, usage recorded
        self.drain_reason = ""
        self.report: dict[str, Any] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        # usage windows on the shared clock (the real time unless a virtual clock is saved, as in the
        # demo), read once at start: one clock for every fact
        self.clock = load_clock()
        self.metrics = _Metrics(
            {
                "endpoint": cfg.endpoint,
                "replica": record.replica_id,
                "location": cfg.location,
                "market": cfg.market,
            }
        )
        self.usage = UsageWindows(
            ReplicaIdentity(
                cfg.endpoint,
                record.replica_id,
                cfg.location,
                cfg.market,
                cfg.usd_per_hour,
                cfg.slo_ms,
                cfg.usd_per_violation,
            ),
            self.clock.now(),
        )

    # -- HTTP ------------------------------------------------------------------------------------
    def app(self) -> Any:
        """The Starlette application (routes of :mod:`spotshift.serving.replica_api`)."""
        from starlette.applications import Starlette
        from starlette.routing import Route

        return Starlette(
            routes=[
                Route(api.COMPLETIONS_PATH, self.completions, methods=["POST"]),
                Route(api.HEALTH_PATH, self.healthz, methods=["GET"]),
                Route(api.METRICS_PATH, self.metrics_page, methods=["GET"]),
            ]
        )

    def _refuse(self) -> Any:
        from starlette.responses import JSONResponse

        self.metrics.count("refused")
        return JSONResponse(
            api.error_body("draining", f"replica {self.record.replica_id} is draining ({self.drain_reason})"),
            status_code=api.DRAINING_STATUS,
            headers={
                "Retry-After": "0",
                api.HEADER_DRAINING: "1",
                api.HEADER_REPLICA: self.record.replica_id,
            },
        )

    def _network_s(self, request: Any) -> float:
        region = request.headers.get(api.HEADER_USER_REGION)
        if not region or not self.cfg.emulate_network:
            return 0.0

        try:
            return rtt_ms(region.strip(), self.cfg.location) / 1000.0
        except ConfigError as exc:
            raise InputError(f"{api.HEADER_USER_REGION}: {exc}") from None

    async def completions(self, request: Any) -> Any:
        """``POST /v1/completions``: validate, (network), queue, greedy-decode, (network), answer."""
        from starlette.responses import JSONResponse

        if self.draining:
            return self._refuse()
        accepted = time.perf_counter()
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            try:
                req = api.parse_completion_request(await _json_body(request))
                network_s = self._network_s(request)
            except InputError as exc:
                self.metrics.count("error")
                return JSONResponse(api.error_body("invalid_request", str(exc)), status_code=400)
            await asyncio.sleep(network_s / 2)
            self.queued += 1
            self.metrics.queue_depth.inc()
            queued_at = time.perf_counter()
            try:
                started, done, result = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._run_model, req
                )
            except Exception:  # a model failure is the replica's 500, never the caller's traceback
                self.metrics.count("error")
                return JSONResponse(
                    api.error_body("server_error", "the model failed on this request"), status_code=500
                )
            await asyncio.sleep(network_s / 2)
            latency_s = time.perf_counter() - accepted
            self._account(result, latency_s)
            body = api.completion_response(
                completion_id=f"cmpl-{secrets.token_hex(8)}",
                created_s=int(time.time()),
                model=self.cfg.endpoint,
                text=result.text,
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
            )
            headers = {
                api.HEADER_REPLICA: self.record.replica_id,
                api.HEADER_INFERENCE_MS: f"{(done - started) * 1000:.3f}",
                api.HEADER_QUEUE_MS: f"{(started - queued_at) * 1000:.3f}",
            }
            return JSONResponse(body, headers=headers)
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()
            if self.draining and self.in_flight == 0:
                self.drained.set()

    def _run_model(self, req: api.CompletionRequest) -> tuple[float, float, Any]:
        started = time.perf_counter()
        self.queued -= 1  # (a plain int shared with the loop thread: the GIL makes += / -= safe here)
        self.metrics.queue_depth.dec()
        result = self.model.complete(req.prompt, req.max_tokens)
        return started, time.perf_counter(), result

    def _account(self, result: Any, latency_s: float) -> None:
        self.metrics.count("ok")
        self.metrics.tokens_in.inc(result.prompt_tokens)
        self.metrics.tokens_out.inc(result.completion_tokens)
        self.metrics.latency.observe(latency_s)
        self.usage.add(self.clock.now(), latency_s * 1000.0, result.prompt_tokens, result.completion_tokens)

    async def healthz(self, request: Any) -> Any:
        """``GET /healthz``: 200 ready / 503 draining, with the registry record and live counts."""
        from dataclasses import asdict

        from starlette.responses import JSONResponse

        body = {
            **asdict(self.record),
            "status": "draining" if self.draining else "ok",
            "state": "draining" if self.draining else "ready",
            "in_flight": self.in_flight,
            "queue_depth": self.queued,
        }
        return JSONResponse(body, status_code=api.DRAINING_STATUS if self.draining else 200)

    async def metrics_page(self, request: Any) -> Any:
        """``GET /metrics``: Prometheus text exposition of this replica's registry."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        from starlette.responses import Response

        return Response(generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    # -- lifecycle -------------------------------------------------------------------------------
    async def drain(self, reason: str, deadline_s: float | None = None) -> dict[str, Any]:
        """Refuse new requests, finish those in flight (until ``deadline_s`` minus the margin at most),
        deregister and record the last usage window. Returns what happened (``finished``,
        ``abandoned`` in-flight counts, ``seconds``). Idempotent: a second call waits for the first
        and returns its report."""
        if self.draining:
            await self.finished.wait()
            return self.report
        t0 = time.monotonic()
        self.draining, self.drain_reason = True, reason
        at_start = self.in_flight
        if self.in_flight == 0:
            self.drained.set()
        await asyncio.to_thread(api.set_state, self.cfg.endpoint, self.record.replica_id, "draining")
        budget = None if deadline_s is None else max(deadline_s - self.cfg.drain_margin_s, 0.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drained.wait(), timeout=budget)
        abandoned = self.in_flight
        await asyncio.to_thread(api.deregister, self.cfg.endpoint, self.record.replica_id)
        try:
            await self.flush_usage(final=True)
        except SpotshiftError as exc:  # the rows stay in the warehouse's fact lake; the drain goes on
            log.warning("last usage window not recorded: %s", exc)
        self.drained.set()
        self.report = {
            "reason": reason,
            "in_flight_at_start": at_start,
            "finished": at_start - abandoned,
            "abandoned": abandoned,
            "seconds": round(time.monotonic() - t0, 3),
        }
        self.finished.set()
        return self.report

    async def flush_usage(self, *, final: bool = False) -> int:
        """Record the usage windows that are over (all of them, with ``final``)."""
        rows = self.usage.roll(self.clock.now(), final=final)
        if rows and self.cfg.record_usage:
            await asyncio.to_thread(record_usage, rows)
        return len(rows)

    async def usage_loop(self) -> None:
        """Record finished usage windows every ``usage_flush_s`` until draining starts."""
        while not self.draining:
            await asyncio.sleep(self.cfg.usage_flush_s)
            if not self.draining:
                try:
                    await self.flush_usage()
                except (
                    SpotshiftError
                ) as exc:  # pending in the fact lake (or lost with the disk): keep serving
                    log.warning("usage window not recorded: %s", exc)


async def _json_body(request: Any) -> Any:
    return parse_json(await request.body(), "completion request")
