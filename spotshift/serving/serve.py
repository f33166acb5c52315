"""Running one replica: uvicorn around :class:`~spotshift.serving.replica.Replica`, its registration,
its spot-notice watcher, SIGTERM as a planned drain, mutual TLS with certificate reload.

:func:`run_replica` blocks until the replica has drained and the server stopped; it is what
``spotshift serve`` calls. Registration happens once the socket listens (so ``--port 0`` registers
the port the kernel chose); deregistration is the last step of the drain.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spotshift.clock import virtual_now
from spotshift.errors import ConfigError, NotFoundError, SpotshiftError
from spotshift.pricing.regions import split_location
from spotshift.pricing.reserved import reserved_price_usd_hour
from spotshift.pricing.snapshots import latest_quotes
from spotshift.serving import replica_api as api
from spotshift.serving.mtls import CertRotator, LocalCA, TLSReloader, ca_dir, uvicorn_ssl_options
from spotshift.serving.notices import record_replica_notice
from spotshift.serving.one_send import http_protocol
from spotshift.serving.replica import Replica, ReplicaConfig
from spotshift.training.preemption import StopController, WatcherThread, build_watchers, watcher_urls_for
from spotshift.warehouse import connect

log = logging.getLogger("spotshift.serving")

SIGTERM_GRACE_S = 30.0  # a planned stop finishes in-flight requests for at most this long


def _uvicorn_server(config: Any, on_exit: Callable[[], None]) -> Any:
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """First SIGTERM/SIGINT starts a drain (the replica exits when it is done); a second one forces."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            if getattr(self, "_drain_requested", False):
                super().handle_exit(sig, frame)
                return
            self._drain_requested = True
            on_exit()

    return DrainingServer(config)


def _own_rotator(tls_dir: Path, name: str) -> Any:
    """A :class:`~spotshift.serving.mtls.CertRotator` re-issuing this replica's server certificate every
    24 h of virtual time, when ``tls_dir`` trusts the local CA of this ``SPOTSHIFT_HOME`` (the embedded
    default); None when its certificates come from elsewhere (whoever issued them rotates them)."""
    local = ca_dir() / api.TLS_CA_FILE
    try:
        if not local.is_file() or local.read_bytes() != (tls_dir / api.TLS_CA_FILE).read_bytes():
            return None
    except OSError:
        return None
    return CertRotator(LocalCA.open(), tls_dir, name, "server", virtual_now, issued_at=virtual_now())


async def _tls_loop(ctx: ssl.SSLContext, tls_dir: Path, name: str, stop: asyncio.Event) -> None:
    """Every second: rotate this replica's own certificate when due, then load changed files into the
    live TLS context (:class:`~spotshift.serving.mtls.TLSReloader`: new handshakes use them, open
    connections finish on the old ones; a half-rotated pair is never loaded)."""
    reloader, rotator = TLSReloader(ctx, tls_dir), _own_rotator(tls_dir, name)
    while not stop.is_set():
        await asyncio.sleep(1.0)
        if rotator is not None:
            try:
                if await asyncio.to_thread(rotator.check):
                    log.info("issued a new server certificate in %s", tls_dir)
            except (OSError, SpotshiftError) as exc:  # keep serving on the current certificate
                log.warning("certificate rotation in %s failed (%s)", tls_dir, type(exc).__name__)
        if reloader.check():
            log.info("reloaded TLS certificates from %s", tls_dir)


async def _watch_notices(replica: Replica, location: str, urls: dict[str, str]) -> None:
    """Poll the provider's notices (the trainer's watchers); on a notice, drain before its deadline."""
    watchers = build_watchers(urls)
    if not watchers:
        return
    controller = StopController()
    thread = WatcherThread(watchers, controller, interval_s=0.25)
    thread.start()
    try:
        while not controller.is_set() and not replica.draining:
            await asyncio.sleep(0.05)
        notice = controller.notice
        if notice is None:
            return
        notice.assign_id(replica.record.replica_id, location)
        drain = asyncio.ensure_future(
            replica.drain(f"{notice.kind} notice {notice.notice_id}", notice.remaining_s())
        )
        try:  # the trainers' notice path: region-store event + raw.preemptions (while draining)
            await asyncio.to_thread(
                record_replica_notice, replica.cfg.endpoint, replica.record.replica_id, location, notice
            )
        except (SpotshiftError, OSError) as exc:
            log.warning("notice %s not recorded: %s", notice.notice_id, exc)
        report = await drain
        log.warning("drained on %s: %s", notice.notice_id, report)
        w = thread.watcher(notice.kind)
        if w is not None:
            try:
                await asyncio.to_thread(w.acknowledge, notice)
            except OSError as exc:
                log.warning("could not acknowledge %s: %s", notice.notice_id, exc)
    finally:
        thread.stop()


def _record(cfg: ReplicaConfig, port: int, *, checkpoint: str, tls: bool) -> api.ReplicaRecord:
    """The registry record of this process's replica listening on ``port``."""
    return api.ReplicaRecord(
        replica_id=api.replica_id_for(cfg.endpoint, cfg.location, port),
        endpoint=cfg.endpoint,
        url=f"{'https' if tls else 'http'}://{cfg.host}:{port}",
        location=cfg.location,
        market=cfg.market,
        price_usd_per_hour=cfg.usd_per_hour,
        pid=os.getpid(),
        started_at_s=time.time(),
        checkpoint=checkpoint,
    )


def run_replica(
    cfg: ReplicaConfig,
    model: Any,
    *,
    checkpoint: str,
    tls_dir: Path | None = None,
    watcher_urls: dict[str, str] | None = None,
    announce: Callable[[api.ReplicaRecord], None] | None = None,
) -> dict[str, Any]:
    """Serve until drained; returns the drain report. ``watcher_urls`` defaults to the location's
    notice endpoints when the market is spot (none otherwise); ``announce`` is called once registered."""
    if watcher_urls is None:
        watcher_urls = watcher_urls_for(cfg.location) if cfg.market == "spot" else {}
    state: dict[str, Any] = {}
    config = _uvicorn_config(cfg, state, tls_dir)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        server = _uvicorn_server(
            config, lambda: loop.call_soon_threadsafe(_start_drain, "stop signal", SIGTERM_GRACE_S)
        )

        def _start_drain(reason: str, deadline_s: float | None) -> None:
            if "replica" not in state:  # stopped while starting: drain as soon as it exists
                state["early_stop"] = (reason, deadline_s)
            elif "drain_task" not in state:
                state["drain_task"] = asyncio.ensure_future(state["replica"].drain(reason, deadline_s))

        serve_task = asyncio.ensure_future(server.serve())
        if not await _started(server, serve_task):
            return
        port = server.servers[0].sockets[0].getsockname()[1]
        record = _record(cfg, port, checkpoint=checkpoint, tls=tls_dir is not None)
        replica = Replica(cfg, model, record)
        state["app"], state["replica"] = replica.app(), replica
        await asyncio.to_thread(api.register, record)
        if announce:
            announce(record)
        tasks = _side_tasks(replica, watcher_urls, tls_dir, config.ssl, stop)
        if "early_stop" in state:
            _start_drain(*state["early_stop"])
        await replica.finished.wait()
        state["report"] = replica.report
        stop.set()
        server.should_exit = True
        await serve_task
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    try:
        # uvicorn's own event loop (uvloop when installed), as `uvicorn.Server.run` would pick it
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(main())
    except SystemExit:  # uvicorn exits when it cannot bind (a port taken between check and bind)
        raise ConfigError(
            f"cannot listen on {cfg.host}:{cfg.port} (address in use or not permitted)"
        ) from None
    return state.get("report", {})


def _uvicorn_config(cfg: ReplicaConfig, state: dict[str, Any], tls_dir: Path | None) -> Any:
    """The replica's uvicorn config: the app is looked up in ``state`` once the port is known
    (:class:`_Lazy`), no access log, no lifespan, 5 s graceful shutdown, TLS when ``tls_dir``, and
    each answer in one send (:func:`~spotshift.serving.one_send.http_protocol`: the router reading
    it is woken once per answer, not once for the headers and again for the body)."""
    import uvicorn

    return uvicorn.Config(
        _Lazy(state),
        http=http_protocol(),
        host=cfg.host,
        port=cfg.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
        **(uvicorn_ssl_options(tls_dir) if tls_dir is not None else {}),
    )


async def _started(server: Any, serve_task: asyncio.Future[Any]) -> bool:
    """Wait until uvicorn listens: True; False when it stopped first (a bind failure is raised)."""
    while not server.started:
        if serve_task.done():
            serve_task.result()  # bind failure: raise it
            return False
        await asyncio.sleep(0.01)
    return True


def _side_tasks(
    replica: Replica,
    watcher_urls: dict[str, str],
    tls_dir: Path | None,
    ssl_context: Any,
    stop: asyncio.Event,
) -> list[asyncio.Future[Any]]:
    """What runs beside the server: usage windows, the provider's notices (spot), TLS rotation."""
    tasks = [asyncio.ensure_future(replica.usage_loop())]
    if watcher_urls:
        tasks.append(asyncio.ensure_future(_watch_notices(replica, replica.cfg.location, watcher_urls)))
    if tls_dir:
        tasks.append(asyncio.ensure_future(_tls_loop(ssl_context, tls_dir, replica.record.replica_id, stop)))
    return tasks


def check_port_free(host: str, port: int) -> None:
    """:class:`ConfigError` (one line) when ``host:port`` cannot be bound now; port 0 always can."""
    import socket

    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror})") from None


class _Lazy:
    """The ASGI app uvicorn starts with: forwards to the replica's app once it exists (it needs the
    port the socket got, which exists only after uvicorn bound it); 503 until then."""

    def __init__(self, state: dict[str, Any]):
        self.state = state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        app = self.state.get("app")
        if app is None:
            if scope["type"] != "http":
                return
            await send({"type": "http.response.start", "status": 503, "headers": [(b"retry-after", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await app(scope, receive, send)


def print_announcement(record: api.ReplicaRecord) -> None:
    """The one line ``spotshift serve`` prints once it listens (tests and scripts read the URL from it)."""
    sys.stdout.write(
        f"serving {record.endpoint} at {record.url} (replica {record.replica_id}, {record.location}, "
        f"{record.market}, ${record.price_usd_per_hour:.4f}/h, checkpoint {record.checkpoint})\n"
    )
    sys.stdout.flush()


def replica_price_usd_hour(location: str, market: str) -> float:
    """What one GPU of capacity costs per hour at ``location`` in ``market``, from the newest quotes in
    the warehouse: the cheapest quote there per GPU (``price_usd_hour / gpu_count``) — spot for spot,
    on-demand for on_demand, and :func:`spotshift.pricing.reserved.reserved_price_usd_hour` of the
    on-demand quote for reserved. :class:`NotFoundError` (one line saying what to do) without quotes."""
    import polars as pl

    provider, region = split_location(location, zone=True)
    try:
        with connect(read_only=True) as con:
            quotes = latest_quotes(con)
    except NotFoundError:
        quotes = None
    wanted = "spot" if market == "spot" else "on_demand"
    if quotes is not None:
        here = quotes.filter(
            (pl.col("provider") == provider) & (pl.col("region") == region) & (pl.col("market") == wanted)
        )
        if here.height:
            per_gpu = float((here["price_usd_hour"] / here["gpu_count"]).min())
            return reserved_price_usd_hour(provider, per_gpu) if market == "reserved" else per_gpu
    raise NotFoundError(
        f"no {wanted} quote for {location} in the warehouse: poll prices (spotshift quotes poll) or pass --usd-per-hour"
    )
