"""``spotshift router ENDPOINT``: the reverse proxy that routes each completion by cost under the SLO.

uvicorn (uvloop, httptools) receives requests (:mod:`spotshift.serving.router_app`); one
``aiohttp`` session with pooled keep-alive connections to every replica
(:mod:`spotshift.serving.pool`) forwards them. For each ``POST /v1/completions`` the router:

1. reads the user region (header ``X-Spotshift-User-Region``, else the router's default) and
   estimates the request's tokens (``ceil(prompt characters / 4) + max_tokens``);
2. asks :func:`spotshift.serving.policy.route` for a replica among the endpoint's live ones
   (registry of :mod:`spotshift.serving.replica_api`, re-read every second), predicted from the
   round trip, the router's live in-flight count per replica and the online inference-time
   model, with a seeded draw (seed 000) for the 80/20 cheapest/fastest split; a replica meets the
   SLO when its prediction plus the router's p99 prediction error
   (:class:`~spotshift.serving.margin.PredictionMargin`, learned from the answers) does, so
   cost-first routing does not fill the cheapest replica to the SLO at the mean and past it at the tail;
3. forwards the body; a replica that refuses (503 draining, 502, 504) or fails at the transport
   level (connection refused, reset, died mid-request, timeout) is set aside and the request is
   retried on another replica — completions are idempotent under greedy decoding, so a spot
   replica that drains or dies fails no request while another replica lives; when every live
   replica was tried or is set aside for a moment, the request waits (twice, at most 1 s each)
   for the first to come back before it fails;
4. learns from the answer (the replica's ``X-Spotshift-Inference-Ms``, or the wall time when the
   replica had a free slot) and returns it with ``X-Spotshift-Route`` (cheapest, fastest,
   fallback) and ``X-Spotshift-Attempts``.

No replica within the SLO: the request goes to the fastest, the router counts an SLO violation and
signals the autoscaler through :func:`~spotshift.serving.router_state.signal_path` (a JSON file of
counters replaced atomically about once a second;
:func:`~spotshift.serving.router_state.read_router_signal`). Also served: ``GET /healthz``,
``GET /metrics`` (Prometheus text) and ``GET /v1/policy`` (the current :class:`~spotshift.serving.policy.TrafficPolicy`).

A cutover in progress (``spotshift cutover``, :mod:`spotshift.serving.cutover_traffic`): each request
first draws its side (source or target, by the persisted weights, re-read every second), the rule
then picks within that side; a share of the source's answers is mirrored to the target and compared,
never returned; every analysis interval the target is judged against the source and a failure sets
its weight to 0 in the same tick.

Mutual TLS (:mod:`spotshift.serving.mtls`): with ``tls`` the router presents a client certificate
from the local CA, trusts only that CA, and rotates its certificate every 24 virtual hours,
reloading the live context so pooled connections keep going.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from pathlib import Path
from typing import Any

from spotshift.atomic import atomic_write_json
from spotshift.clock import virtual_now
from spotshift.errors import ConfigError
from spotshift.serving import replica_api as api
from spotshift.serving.cutover_traffic import CutoverTraffic
from spotshift.serving.margin import PredictionMargin
from spotshift.serving.mtls import CertRotator, LocalCA, client_context, reload_context
from spotshift.serving.policy import (
    InferenceTimeModel,
    ReplicaView,
    TrafficPolicy,
    evaluate,
    route,
    traffic_policy,
)
from spotshift.serving.pool import ReplicaAnswer, ReplicaPool, ReplicaUnreachable
from spotshift.serving.router_state import (
    Counters,
    RouterConfig,
    signal_path,
)

RETRY_STATUSES = frozenset({502, 503, 504})
DOWN_COOLDOWN_S = 1.0  # a replica that failed at the transport level gets no traffic for this long
DRAINING_COOLDOWN_S = 5.0  # one that answered 503 (draining), unless the registry says ready sooner
SET_ASIDE_WAITS = 2  # rounds a request waits (<= DOWN_COOLDOWN_S each) for a set-aside replica
# the replica's answer headers passed on to the caller (content-type is the router's own)
_PASSED = tuple((n.lower().encode(), n) for n in (api.HEADER_REPLICA, api.HEADER_INFERENCE_MS))
_ROUTE_VALUES = {k: k.encode() for k in ("cheapest", "fastest", "fallback")}


async def _sleep_monotonic(seconds: float) -> None:
    """Sleep until ``seconds`` have passed by ``time.monotonic`` (the clock of :attr:`Router.set_aside`):
    uvloop's timers have millisecond resolution and fire up to 1 ms early, and a request that woke
    before its replica's set-aside ran out would find it still set aside and fail."""
    until = time.monotonic() + seconds
    while (left := until - time.monotonic()) > 0:
        await asyncio.sleep(left)


class Router:
    """The routing state of one endpoint: replicas, in-flight counts, the latency model, counters."""

    def __init__(self, cfg: RouterConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.model = InferenceTimeModel()
        self.margin = PredictionMargin()
        self.outstanding: dict[str, int] = {}
        self.set_aside: dict[str, float] = {}  # replica id -> monotonic time it may be used again
        self.counters = Counters()
        self.replicas: list[ReplicaView] = list(cfg.replicas or [])
        self.pool: ReplicaPool | None = None  # keep-alive connections to every replica
        self._headers: dict[str, dict[str, str]] = {}  # user region -> request headers to replicas
        self._verify: Any = True
        self._written: tuple[Any, ...] | None = None  # counters as last written to the signal file
        self._rotator: Any = None

        self.cutover = CutoverTraffic(cfg.endpoint, cfg.seed)  # a cutover's split and mirror, if any
        if cfg.replicas is None:
            self.refresh()

    # -- replicas -------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read the endpoint's live replicas from the registry (fixed lists stay as given)."""
        if self.cfg.replicas is not None:
            return
        self.replicas = [
            ReplicaView(
                r.replica_id,
                r.url,
                r.location,
                r.market,
                r.price_usd_per_hour,
                self.cfg.capacity_tokens_s,
                self.cfg.slots,
                r.state,
                r.checkpoint,
            )
            for r in api.live_replicas(self.cfg.endpoint, include_draining=True)
        ]

    def _usable(self, excluded: set[str]) -> list[ReplicaView]:
        if not excluded and not self.set_aside:
            return self.replicas  # the common case: nothing tried yet, nothing set aside
        now = time.monotonic()
        return [
            r
            for r in self.replicas
            if r.replica_id not in excluded and self.set_aside.get(r.replica_id, 0.0) <= now
        ]

    def _back_in(self, tried: set[str]) -> float | None:
        """Seconds until a ready replica that is only set aside (not tried for this request) is
        usable again; None when there is none."""
        now = time.monotonic()
        times = [
            self.set_aside.get(r.replica_id, 0.0) - now
            for r in self.replicas
            if r.state == "ready"
            and (r.replica_id not in tried or self.set_aside.get(r.replica_id, 0.0) > now)
        ]
        return max(0.0, min(times)) if times else None

    def policy(self) -> TrafficPolicy:
        """The current rule as weights for the configured user mix (what backends render)."""
        users = self.cfg.users or {self.cfg.user_region: 1.0}
        return traffic_policy(
            self.cfg.endpoint,
            self.replicas,
            users,
            self.model,
            self.cfg.slo_ms,
            self.outstanding,
            cheap_share=self.cfg.cheap_share,
        )

    # -- one request ----------------------------------------------------------------------------
    async def forward(
        self, body: bytes, user_region: str, tokens: float
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """Route and forward one completion; returns ``(status, body, headers)`` for the caller,
        the headers as ASGI pairs (lower-case bytes, without content-type and content-length).

        Retries on another replica after a refusal or a transport failure until every replica was
        tried; then 503 naming the endpoint.
        """
        self.counters.requests += 1
        tried: set[str] = set()
        attempts = waits = 0
        side = self.cutover.pick()  # a cutover in progress: source or target, drawn once per request
        while True:
            usable = self.cutover.restrict(self._usable(tried), side)
            slo = self.margin.effective_slo(self.cfg.slo_ms)  # the prediction at its p99 meets the SLO
            cands = evaluate(usable, self.outstanding, user_region, tokens, self.model, slo)
            choice = route(cands, self.rng.random(), self.cfg.cheap_share)
            if choice is None and waits < SET_ASIDE_WAITS and (wait := self._back_in(tried)) is not None:
                # every live replica was tried or is set aside for a moment (a dropped keep-alive
                # connection, a timeout on a loaded box): wait for the first to come back, retry
                waits += 1
                tried.clear()
                await _sleep_monotonic(min(wait, DOWN_COOLDOWN_S))
                continue
            if choice is None:
                self.counters.failed += 1
                msg = f"no replica of endpoint {self.cfg.endpoint} could serve the request (tried {attempts})"
                return 503, json.dumps(api.error_body("unavailable", msg)).encode(), []
            if attempts == 0:
                self.counters.by_route[choice.kind] += 1
                if choice.slo_violation:
                    self._violation(user_region)
            else:
                self.counters.retries += 1
            attempts += 1
            rep = choice.candidate.replica
            rid = rep.replica_id
            tried.add(rid)
            busy = self.outstanding.get(rid, 0)
            self.outstanding[rid] = busy + 1
            t0 = time.perf_counter()
            try:
                resp = await self.post_completion(rep, body, user_region)
            except ReplicaUnreachable:
                self.set_aside[rid] = time.monotonic() + DOWN_COOLDOWN_S
                self.cutover.observe(rep, None, None, tokens)
                continue
            finally:
                self.outstanding[rid] -= 1
            wall_ms = (time.perf_counter() - t0) * 1000.0
            self.cutover.observe(rep, resp.status_code, wall_ms, tokens)
            if resp.status_code in RETRY_STATUSES:
                cool = DRAINING_COOLDOWN_S if resp.status_code == 503 else DOWN_COOLDOWN_S
                self.set_aside[rid] = time.monotonic() + cool
                continue
            if resp.status_code == 200:
                self.counters.ok += 1
                self.margin.observe(choice.candidate.predicted_ms, wall_ms)
                self._learn(rid, tokens, resp.headers.get(api.HEADER_INFERENCE_MS), wall_ms, busy < rep.slots)
                if self.cutover.should_mirror(rep):  # shadow: compared, never returned
                    self.cutover.spawn_mirror(self, body, user_region, tokens, resp.content)
            got = resp.headers.get
            headers = [(k, v.encode("latin-1")) for k, n in _PASSED if (v := got(n)) is not None]
            headers.append((b"x-spotshift-route", _ROUTE_VALUES[choice.kind]))
            headers.append((b"x-spotshift-attempts", str(attempts).encode()))
            return resp.status_code, resp.content, headers

    async def post_completion(self, rep: ReplicaView, body: bytes, user_region: str) -> ReplicaAnswer:
        """POST one completion to ``rep`` over the pooled keep-alive connections; transport
        failures raise :class:`~spotshift.serving.pool.ReplicaUnreachable` (an ``httpx.TransportError``)."""
        headers = self._headers.get(user_region)
        if headers is None:
            headers = self._headers[user_region] = {
                "content-type": "application/json",
                api.HEADER_USER_REGION: user_region,
            }
        return await self._pool().post(rep.url + api.COMPLETIONS_PATH, body, headers)

    def _learn(self, rid: str, tokens: float, inference_ms: str | None, wall_ms: float, free: bool) -> None:
        try:
            ms = float(inference_ms) if inference_ms is not None else None
        except ValueError:
            ms = None
        if ms is None and free:
            ms = wall_ms  # no queueing happened: the wall time is service time (+ loopback)
        if ms is not None:
            self.model.observe(rid, tokens, ms)

    def _violation(self, user_region: str) -> None:
        c = self.counters
        c.slo_violations += 1
        c.violations_by_user_region[user_region] = c.violations_by_user_region.get(user_region, 0) + 1
        now = self.cfg.clock() if self.cfg.clock else None
        c.last_violation_at = (now.isoformat() if now is not None else None) or time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime()
        )

    # -- periodic -------------------------------------------------------------------------------
    def flush_signal(self) -> None:
        """Write the counters to :func:`signal_path` when they changed (atomic replace)."""
        c = self.counters
        state = (c.requests, c.ok, c.failed, c.retries, c.slo_violations)
        if state == self._written:
            return
        self._written = state
        atomic_write_json(
            signal_path(self.cfg.endpoint),
            {
                "endpoint": self.cfg.endpoint,
                "slo_ms": self.cfg.slo_ms,
                "requests": c.requests,
                "ok": c.ok,
                "failed": c.failed,
                "retries": c.retries,
                "slo_violations": c.slo_violations,
                "violations_by_user_region": dict(c.violations_by_user_region),
                "last_violation_at": c.last_violation_at,
                "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            fsync=False,
        )

    def tick(self) -> None:
        """Once a second: registry, signal file, cutover weights and analysis, certificate rotation."""
        with contextlib.suppress(ConfigError):  # a half-written registry never stops routing
            self.refresh()
        now = time.monotonic()  # forget set-asides that ran out (keeps the request path's fast case)
        self.set_aside = {rid: t for rid, t in self.set_aside.items() if t > now}
        self.flush_signal()
        self.cutover.tick()
        if self._rotator is not None and self._rotator.check():
            reload_context(self.ssl_context, self._rotator.tls_dir, "client")

    def metrics_text(self) -> str:
        """Prometheus text exposition of the counters and in-flight gauges."""
        c, ep = self.counters, self.cfg.endpoint
        lines = ["# TYPE spotshift_router_requests_total counter"]
        for outcome, n in (("ok", c.ok), ("failed", c.failed)):
            lines.append(f'spotshift_router_requests_total{{endpoint="{ep}",outcome="{outcome}"}} {n}')
        lines.append("# TYPE spotshift_router_routes_total counter")
        for kind, n in sorted(c.by_route.items()):
            lines.append(f'spotshift_router_routes_total{{endpoint="{ep}",route="{kind}"}} {n}')
        lines += [
            "# TYPE spotshift_router_retries_total counter",
            f'spotshift_router_retries_total{{endpoint="{ep}"}} {c.retries}',
            "# TYPE spotshift_router_slo_violations_total counter",
            f'spotshift_router_slo_violations_total{{endpoint="{ep}"}} {c.slo_violations}',
            "# TYPE spotshift_router_prediction_margin_ms gauge",
            f'spotshift_router_prediction_margin_ms{{endpoint="{ep}"}} {self.margin.ms:.3f}',
            "# TYPE spotshift_router_in_flight gauge",
        ]
        for rid, n in sorted(self.outstanding.items()):
            lines.append(f'spotshift_router_in_flight{{endpoint="{ep}",replica="{rid}"}} {n}')
        return "\n".join(lines) + "\n"

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Set up mutual TLS when configured (pools open lazily, one per replica)."""
        self.prepare_tls()

    def prepare_tls(self) -> None:
        """Issue the router's client certificate and build its TLS context (once; no-op without TLS)."""
        if self.cfg.tls_dir is not None and self._rotator is None:
            self._rotator = CertRotator(
                LocalCA.open(),
                Path(self.cfg.tls_dir),
                f"router-{self.cfg.endpoint}",
                "client",
                self.cfg.clock or virtual_now,
            )
            self._rotator.check()
            self.ssl_context = self._verify = client_context(Path(self.cfg.tls_dir))

    def _pool(self) -> ReplicaPool:
        """The connection pool to every replica (created on first use, inside the event loop)."""
        if self.pool is None:
            self.pool = ReplicaPool(self._verify, self.cfg.max_connections, self.cfg.timeout_s)
        return self.pool

    async def stop(self) -> None:
        """Close the clients and write the last counters."""
        if self.pool is not None:
            await self.pool.aclose()
            self.pool = None
        self.flush_signal()
