"""``spotshift loadgen``: a bounded open-loop load generator for a replica or the router, loopback only.

Requests are sent on a fixed schedule — request ``i`` at ``start + i / rps`` — whether or not
earlier ones were answered (open loop: a slow server sees the queue build up, as with real users,
instead of the generator slowing down with it). Each carries a user region drawn from ``users``
(weighted, seeded, so a run is repeatable) in :data:`~spotshift.serving.replica_api.HEADER_USER_REGION`,
and one of a few fixed prompts with greedy decoding. Latency is measured by the client from send to
full answer. Bounds: at most :data:`MAX_RPS` requests per second, :data:`MAX_DURATION_S` seconds,
:data:`MAX_IN_FLIGHT` requests outstanding (beyond that a request counts as an error rather than
piling up), and the URL must name this host (127.0.0.1, ::1 or localhost).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import random
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from spotshift.cloud_errors import redact_url
from spotshift.errors import ConfigError, check_range
from spotshift.serving import replica_api as api
from spotshift.serving.latency import user_regions

MAX_RPS = 5_000.0
MAX_DURATION_S = 3_600.0
MAX_IN_FLIGHT = 2_000
PROMPTS = (
    "The cheapest GPU is",
    "Spot capacity moves when",
    "A checkpoint is safe once",
    "Latency from Tokyo to Frankfurt",
)


@dataclass(frozen=True)
class LoadResult:
    """What a run measured: requests sent, answered with 200, failed; latency quantiles of the 200s (ms)."""

    requests: int
    ok: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
        }


def completions_url(url: str) -> str:
    """``url`` checked to be loopback http(s); a bare base URL gets ``/v1/completions``."""
    parsed = urlparse(url)
    shown = redact_url(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"loadgen URL {shown!r} must be http(s)://HOST:PORT[/path]")
    host = parsed.hostname
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(f"loadgen URL {shown!r}: only this host (127.0.0.1, ::1, localhost) may be loaded")
    return url if parsed.path not in ("", "/") else url.rstrip("/") + api.COMPLETIONS_PATH


def check_load(rps: float, duration_s: float) -> None:
    """Refuse a rate or duration outside the bounds (one line naming the option)."""
    check_range(rps, "--rps", low=0, high=MAX_RPS)
    check_range(duration_s, "--duration", low=0, high=MAX_DURATION_S)


def _regions(users: dict[str, float] | None, n: int, seed: int) -> list[str | None]:
    if not users:
        return [None] * n
    for region in users:
        if region not in user_regions():
            raise ConfigError(f"--users: user region {region!r} is not one of {', '.join(user_regions())}")
    rng = random.Random(seed)
    names = sorted(users)
    return rng.choices(names, weights=[users[u] for u in names], k=n)


async def run_load(
    url: str,
    *,
    rps: float,
    duration_s: float,
    users: dict[str, float] | None = None,
    max_tokens: int = 8,
    seed: int = 0,
    timeout_s: float = 30.0,
    stop: threading.Event | None = None,
    client: Any = None,
) -> LoadResult:
    """Send ``rps x duration_s`` completions to ``url`` on the open-loop schedule; wait for every answer.
    ``stop``: once set, no further request is sent (``requests`` counts those sent).

    The client is one ``aiohttp`` session with up to :data:`MAX_IN_FLIGHT` keep-alive connections
    (about a third of httpx's CPU per request here, so the generator saturates after the target).
    ``client``: an open ``aiohttp.ClientSession`` to send on instead, left open (its keep-alive
    connections carry over to the next run: a benchmark's alternating short runs open none)."""
    import aiohttp
    import numpy as np

    check_load(rps, duration_s)
    target = completions_url(url)
    n = max(int(round(rps * duration_s)), 1)
    regions = _regions(users, n, seed)
    bodies = [
        json.dumps({"prompt": p, "max_tokens": max_tokens}).encode() for p in PROMPTS
    ]  # serialised once: the generator's CPU goes to sending
    latencies: list[float] = []
    errors = 0
    in_flight = 0
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async with contextlib.AsyncExitStack() as stack:
        if client is None:
            connector = aiohttp.TCPConnector(limit=MAX_IN_FLIGHT, keepalive_timeout=4.0)
            client = await stack.enter_async_context(
                aiohttp.ClientSession(connector=connector, trust_env=False)
            )

        async def one(i: int) -> None:
            nonlocal errors, in_flight
            headers = {"content-type": "application/json"}
            if regions[i]:
                headers[api.HEADER_USER_REGION] = regions[i]
            t0 = time.perf_counter()
            try:
                async with client.post(
                    target, data=bodies[i % len(bodies)], headers=headers, timeout=timeout
                ) as r:
                    await r.read()
                    ok = r.status == 200
            except (TimeoutError, aiohttp.ClientError, OSError):
                ok = False
            finally:
                in_flight -= 1
            if ok:
                latencies.append((time.perf_counter() - t0) * 1000.0)
            else:
                errors += 1

        tasks = []
        start = time.perf_counter()
        for i in range(n):
            if stop is not None and stop.is_set():
                n = i
                break
            delay = start + i / rps - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if in_flight >= MAX_IN_FLIGHT:
                errors += 1
                continue
            in_flight += 1
            tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.gather(*tasks)
    lat = np.asarray(latencies)
    p50, p99 = (round(float(x), 3) for x in np.percentile(lat, [50, 99])) if lat.size else (None, None)
    return LoadResult(requests=n, ok=len(latencies), errors=errors, p50_ms=p50, p99_ms=p99)
