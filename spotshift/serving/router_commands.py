"""``spotshift router`` (route an endpoint's requests by cost under its SLO) and ``spotshift tls``
(certificates from the local CA for mutual TLS). Standard library at import time."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    _register_router(sub)
    _register_tls(sub)


def _register_router(sub: Any) -> None:
    p = sub.add_parser(
        "router",
        help="reverse proxy for an endpoint: each request to the cheapest replica meeting the SLO (80/20)",
        description="Serves POST /v1/completions on 127.0.0.1 and forwards each request to one of the "
        "endpoint's live replicas ($SPOTSHIFT_HOME/serving/<endpoint>/replicas.json): among those whose "
        "predicted latency (round trip from the user region + queueing from in-flight requests + inference "
        "time learned online) meets the SLO, 80 percent to the cheapest by cost per million tokens and 20 percent to the "
        "fastest (seeded draws), least outstanding requests within a region. None within the SLO: the "
        "fastest, counted as an SLO violation in router_signal.json for the autoscaler. A replica that "
        "refuses (503 draining) or fails mid-request gets the request retried on another. Also serves "
        "/healthz, /metrics (Prometheus) and /v1/policy (the routing weights and why). During a cutover "
        "(spotshift cutover start) it splits requests between source and target by the cutover's weights, "
        "mirrors a share to the target and compares the answers, and sets the target's weight to 0 when an "
        "analysis window fails. Prints one line with its URL, runs until SIGTERM/Ctrl-C.",
    )
    p.add_argument("endpoint", help="declared endpoint (spotshift endpoints add)")
    p.add_argument(
        "--port", type=int, default=0, metavar="N", help="TCP port on 127.0.0.1 (default 0: any free port)"
    )
    p.add_argument("--slo-ms", type=float, metavar="MS", help="latency SLO (default: the endpoint's)")
    p.add_argument(
        "--user-region",
        default="us-east",
        metavar="REGION",
        help="user region of requests without an X-Spotshift-User-Region header (default us-east)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the 80/20 draws (default 0)")
    p.add_argument(
        "--capacity-tokens-s",
        type=float,
        default=2400.0,
        metavar="N",
        help="tokens/s one replica serves within the SLO, for cost per million tokens (default 2400)",
    )
    p.add_argument(
        "--tls-dir",
        metavar="DIR",
        help="speak mutual TLS to the replicas: the router's client certificate from the local CA is "
        "kept (and rotated every 24 h of virtual time) in DIR",
    )
    p.set_defaults(handler=_router)


def _router(args: argparse.Namespace) -> int:
    from spotshift.errors import ConfigError
    from spotshift.serving.router_app import run_router
    from spotshift.serving.router_state import RouterConfig

    slo, users = args.slo_ms, None
    try:
        from spotshift.serving.endpoints import get_endpoint

        declared = get_endpoint(args.endpoint)
        users = dict(declared.users)
        slo = slo if slo is not None else declared.slo_ms
    except ConfigError:
        if slo is None:
            raise
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is not a TCP port")
    cfg = RouterConfig(
        args.endpoint,
        slo_ms=float(slo),
        user_region=args.user_region,
        users=users,
        seed=args.seed,
        capacity_tokens_s=args.capacity_tokens_s,
        tls_dir=Path(args.tls_dir) if args.tls_dir else None,
    )
    run_router(cfg, args.port, announce=lambda url: print(f"routing {args.endpoint} at {url}", flush=True))
    return 0


def _register_tls(sub: Any) -> None:
    p = sub.add_parser(
        "tls",
        help="issue a certificate from the local CA ($SPOTSHIFT_HOME/serving/ca) for mutual TLS",
        description="Writes a leaf certificate valid 25 h into DIR: --role server writes ca.pem, server.pem "
        "and server-key.pem (what spotshift serve --tls-dir reads), --role client writes ca.pem and "
        "client.pem (certificate and key). Creates the CA on first use. Key files are mode 0600.",
    )
    p.add_argument("dir", metavar="DIR", help="directory to write into")
    p.add_argument(
        "--role",
        choices=["server", "client"],
        required=True,
        help="server: a replica's certificate; client: the router's",
    )
    p.add_argument("--name", default="spotshift", help="certificate common name (default spotshift)")
    p.set_defaults(handler=_tls)


def _tls(args: argparse.Namespace) -> int:
    from spotshift.serving.mtls import LocalCA

    ca = LocalCA.open()
    d = Path(args.dir)
    if args.role == "server":
        ca.write_server_files(d, args.name)
    else:
        ca.write_client_file(d, args.name)
    sys.stdout.write(f"issued a {args.role} certificate for {args.name} into {d}\n")
    return 0
