"""``spotshift serve`` (a model-server replica), ``spotshift endpoints`` (declare endpoints) and
``spotshift loadgen`` (bounded load on a replica or router). Standard library at import time."""

from __future__ import annotations

import argparse
import sys
from typing import Any

MARKETS = ("spot", "on_demand", "reserved")


def register(sub: Any) -> None:
    _register_serve(sub)
    _register_endpoints(sub)
    _register_loadgen(sub)


def _register_serve(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run a model-server replica of an endpoint (OpenAI-style /v1/completions, /healthz, /metrics)",
        description="Loads the endpoint's model (a committed checkpoint, verified and decrypted first; a "
        "checkpoint that does not verify is refused) and serves greedy completions on 127.0.0.1 until stopped. "
        "Registers in $SPOTSHIFT_HOME/serving/<endpoint>/replicas.json once listening and prints one line "
        "with its URL. SIGTERM/Ctrl-C drains: new requests get 503 + Retry-After, in-flight ones finish, "
        "then it deregisters and exits. On spot it also drains on its provider's preemption notice. "
        "Writes raw.inference_usage per minute.",
    )
    p.add_argument("endpoint", help="declared endpoint (spotshift endpoints add)")
    p.add_argument("--location", required=True, metavar="PROVIDER/REGION", help="where this replica runs")
    p.add_argument("--market", required=True, choices=MARKETS, help="capacity market it is paid in")
    p.add_argument(
        "--port", type=int, default=0, metavar="N", help="TCP port on 127.0.0.1 (default 0: any free port)"
    )
    p.add_argument(
        "--usd-per-hour",
        type=float,
        metavar="USD",
        help="price of the replica's capacity (default: cheapest per-GPU quote at LOCATION in the warehouse)",
    )
    p.add_argument("--key-provider", help="key provider spec (default $SPOTSHIFT_KEY_PROVIDER or local)")
    p.add_argument(
        "--model",
        metavar="CHECKPOINT",
        help="serve this checkpoint path or job instead of the endpoint's model (a cutover's target)",
    )
    p.add_argument(
        "--no-network-delay",
        action="store_true",
        help="do not apply the user-region round trip (a replica really deployed in LOCATION)",
    )
    p.add_argument(
        "--tls-dir",
        metavar="DIR",
        help="serve HTTPS requiring client certificates: ca.pem, server.pem, server-key.pem",
    )
    p.add_argument("--no-record", action="store_true", help="do not write raw.inference_usage (benchmarks)")
    p.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from spotshift.errors import ConfigError, check_range
    from spotshift.pricing.regions import check_location
    from spotshift.serving.endpoints import get_endpoint
    from spotshift.serving.model_host import load_served_model
    from spotshift.serving.replica import ReplicaConfig
    from spotshift.serving.serve import (
        check_port_free,
        print_announcement,
        replica_price_usd_hour,
        run_replica,
    )

    logging.basicConfig(level=logging.WARNING, format="spotshift serve: %(message)s")
    endpoint = get_endpoint(args.endpoint)
    location = check_location(args.location, "--location")
    if not endpoint.allows(location):
        raise ConfigError(
            f"--location {location} is not allowed for endpoint {endpoint.name!r} ({', '.join(endpoint.allowed_locations)})"
        )
    check_range(args.port, "--port", low=0, high=65535, low_inclusive=True, integer=True)
    check_port_free("127.0.0.1", args.port)  # before the model loads: a taken port fails in a second
    price = args.usd_per_hour
    if price is None:
        price = replica_price_usd_hour(location, args.market)
    check_range(price, "--usd-per-hour", low=0, high=1e6, low_inclusive=True)
    tls_dir = Path(args.tls_dir).expanduser().resolve() if args.tls_dir else None
    model_ref = endpoint.model
    if args.model:
        from spotshift.serving.endpoints import check_model_ref

        check_model_ref(args.model)
        model_ref = args.model
    model = load_served_model(model_ref, location, key_provider=args.key_provider)
    cfg = ReplicaConfig(
        endpoint=endpoint.name,
        location=location,
        market=args.market,
        slo_ms=endpoint.slo_ms,
        usd_per_hour=float(price),
        usd_per_violation=endpoint.usd_per_violation,
        port=args.port,
        emulate_network=not args.no_network_delay,
        record_usage=not args.no_record,
    )
    report = run_replica(
        cfg, model, checkpoint=model.checkpoint_id, tls_dir=tls_dir, announce=print_announcement
    )
    sys.stderr.write(f"spotshift serve: drained ({report.get('reason', 'stopped')}): {report}\n")
    return 0


def _register_endpoints(sub: Any) -> None:
    p = sub.add_parser("endpoints", help="declare, list, show and remove inference endpoints")
    es = p.add_subparsers(dest="endpoints_command", metavar="ACTION")
    es.required = True
    add = es.add_parser(
        "add",
        help="declare an endpoint: the model it serves, its latency SLO, where its users are",
        description="MODEL is a declared job (its newest verified checkpoint) or a checkpoint path "
        "<store>/checkpoints/<job>[/<id>]. User regions: "
        "us-east us-west sa-east eu-west eu-central ap-south ap-southeast ap-northeast au-east.",
    )
    add.add_argument("name", help="endpoint name (a-z 0-9 _ . -)")
    add.add_argument("--model", required=True, metavar="JOB|CHECKPOINT", help="what the replicas serve")
    add.add_argument("--slo-ms", required=True, type=float, metavar="N", help="end-to-end latency SLO, ms")
    add.add_argument(
        "--users",
        metavar="REGION=SHARE,...",
        help="user regions and their shares of requests (default us-east=0.4,us-west=0.2,eu-west=0.25,ap-northeast=0.15)",
    )
    add.add_argument(
        "--allow",
        action="append",
        metavar="LOCATION",
        help="where replicas may run, provider/region or a pattern (repeatable; default anywhere)",
    )
    add.add_argument(
        "--usd-per-violation",
        type=float,
        metavar="USD",
        help="penalty per request over the SLO (default 0.002)",
    )
    add.add_argument("--replace", action="store_true", help="replace an endpoint of the same name")
    add.set_defaults(handler=_endpoints_add)
    ls = es.add_parser("list", help="list declared endpoints")
    ls.add_argument("--json", action="store_true", help="print one JSON object")
    ls.set_defaults(handler=_endpoints_list)
    show = es.add_parser("show", help="one endpoint's declaration and its live replicas")
    show.add_argument("name", help="declared endpoint")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.set_defaults(handler=_endpoints_show)
    rm = es.add_parser("remove", help="undeclare an endpoint (refused while a replica serves it)")
    rm.add_argument("name", help="declared endpoint")
    rm.set_defaults(handler=_endpoints_remove)


def _endpoints_add(args: argparse.Namespace) -> int:
    from spotshift.serving.endpoints import (
        DEFAULT_USD_PER_VIOLATION,
        Endpoint,
        add_endpoint,
        default_users,
        normalised_users,
    )
    from spotshift.serving.simulate_commands import parse_users

    users = normalised_users(parse_users(args.users)) if args.users is not None else default_users()
    endpoint = Endpoint(
        name=args.name,
        model=args.model,
        slo_ms=args.slo_ms,
        users=users,
        allowed_locations=args.allow or ["*"],
        usd_per_violation=DEFAULT_USD_PER_VIOLATION
        if args.usd_per_violation is None
        else args.usd_per_violation,
    )
    add_endpoint(endpoint, replace=args.replace)
    print(f"declared endpoint {endpoint.name}: model {endpoint.model}, SLO {endpoint.slo_ms:g} ms")
    return 0


def _users_text(users: dict[str, float]) -> str:
    return ",".join(f"{u}={s:g}" for u, s in sorted(users.items()))


def _endpoints_list(args: argparse.Namespace) -> int:
    from spotshift.cliutil import emit_json
    from spotshift.serving.endpoints import load_endpoints
    from spotshift.serving.replica_api import live_replicas

    rows = [(e, len(live_replicas(e.name))) for e in load_endpoints()]
    if args.json:
        emit_json({"endpoints": [{**e.to_dict(), "live_replicas": n} for e, n in rows]})
        return 0
    if not rows:
        print("no endpoints declared (spotshift endpoints add NAME --model JOB --slo-ms N)")
        return 0
    print(f"{'NAME':16s} {'MODEL':28s} {'SLO_MS':>7s} {'REPLICAS':>8s}  USERS")
    for e, n in rows:
        print(f"{e.name:16s} {e.model:28s} {e.slo_ms:7g} {n:8d}  {_users_text(e.users)}")
    return 0


def _endpoints_show(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from spotshift.cliutil import emit_json
    from spotshift.serving.endpoints import get_endpoint
    from spotshift.serving.replica_api import live_replicas

    e = get_endpoint(args.name)
    replicas = live_replicas(e.name, include_draining=True)
    if args.json:
        emit_json({**e.to_dict(), "replicas": [asdict(r) for r in replicas]})
        return 0
    print(f"endpoint          {e.name}")
    print(f"model             {e.model} ({e.model_kind})")
    print(f"slo_ms            {e.slo_ms:g}")
    print(f"users             {_users_text(e.users)}")
    print(f"allowed           {', '.join(e.allowed_locations)}")
    print(f"usd_per_violation {e.usd_per_violation:g}")
    if not replicas:
        print("replicas          none live (spotshift serve " + e.name + " --location P/R --market M)")
        return 0
    print(f"{'REPLICA':44s} {'LOCATION':22s} {'MARKET':10s} {'USD/H':>8s} {'STATE':9s} URL")
    for r in replicas:
        print(
            f"{r.replica_id:44s} {r.location:22s} {r.market:10s} {r.price_usd_per_hour:8.4f} {r.state:9s} {r.url}"
        )
    return 0


def _endpoints_remove(args: argparse.Namespace) -> int:
    from spotshift.serving.endpoints import remove_endpoint

    remove_endpoint(args.name)
    print(f"removed endpoint {args.name}")
    return 0


def _register_loadgen(sub: Any) -> None:
    p = sub.add_parser(
        "loadgen",
        help="send a bounded open-loop load of completions to a replica or router on this host",
        description="Request i leaves at i/RPS seconds whatever the answers do (open loop). Loopback URLs only; "
        "at most 5000 req/s, 3600 s and 2000 requests outstanding.",
    )
    p.add_argument("url", help="http://127.0.0.1:PORT (adds /v1/completions) or the full completions URL")
    p.add_argument("--rps", type=float, required=True, metavar="N", help="requests per second")
    p.add_argument("--duration", type=float, required=True, metavar="S", help="seconds of load")
    p.add_argument(
        "--users", metavar="REGION=SHARE,...", help="user regions to draw each request's region from"
    )
    p.add_argument(
        "--max-tokens", type=int, default=8, metavar="N", help="completion tokens per request (default 8)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the user-region draw (default 0)")
    p.add_argument("--json", action="store_true", help='print {"requests","ok","errors","p50_ms","p99_ms"}')
    p.set_defaults(handler=_loadgen)


def _loadgen(args: argparse.Namespace) -> int:
    import asyncio

    from spotshift.cliutil import emit_json
    from spotshift.errors import check_range
    from spotshift.serving.loadgen import check_load, completions_url, run_load
    from spotshift.serving.replica_api import MAX_COMPLETION_TOKENS
    from spotshift.serving.simulate_commands import parse_users

    completions_url(args.url)
    check_load(args.rps, args.duration)
    check_range(args.max_tokens, "--max-tokens", low=0, high=MAX_COMPLETION_TOKENS, integer=True)
    users = parse_users(args.users) if args.users is not None else None
    result = asyncio.run(
        run_load(
            args.url,
            rps=args.rps,
            duration_s=args.duration,
            users=users,
            max_tokens=args.max_tokens,
            seed=args.seed,
        )
    )
    if args.json:
        emit_json(result.to_dict())
    else:
        p50 = "-" if result.p50_ms is None else f"{result.p50_ms:.1f} ms"
        p99 = "-" if result.p99_ms is None else f"{result.p99_ms:.1f} ms"
        print(f"requests {result.requests}  ok {result.ok}  errors {result.errors}  p50 {p50}  p99 {p99}")
    return 0 if result.errors == 0 else 1
