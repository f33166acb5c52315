"""``spotshift topology score|check|measure|list``: GPU topology verification (seed 000).

Standard library only at module level: heavy imports (torch) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from spotshift.cliutil import emit_json


def register(sub: Any) -> None:
    """Add the ``topology`` command group."""
    t = sub.add_parser("topology", help="verify GPU topology (nvidia-smi topo -m, all-reduce bandwidth)")
    tsub = t.add_subparsers(dest="topology_command", metavar="ACTION")
    tsub.required = True

    s = tsub.add_parser(
        "score",
        help="score an `nvidia-smi topo -m` output (0-10; training needs >= 7)",
        description="Parse the GPU link matrix of `nvidia-smi topo -m` (a file, or - for stdin) and "
        "score it. With --record, keep the score for LOCATION's INSTANCE_TYPE: it overrides the "
        "catalog's documented score in every placement decision from now on.",
    )
    s.add_argument("file", help="saved `nvidia-smi topo -m` output, or - for stdin")
    s.add_argument("--location", help="provider/region the machine is in (with --record)")
    s.add_argument("--instance-type", help="the machine's instance type (with --record)")
    s.add_argument("--record", action="store_true", help="keep the measured score (needs both above)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(handler=_score)

    c = tsub.add_parser(
        "check",
        help="probe a target's topology as a move's probation does; exit 1 below the minimum",
        description="Run the topology probe ($SPOTSHIFT_TOPOLOGY_PROBE, a command template with "
        "{location} and {instance_type}; default `nvidia-smi topo -m` when it is on PATH) for "
        "LOCATION's INSTANCE_TYPE, keep the measured score and compare it with --min-score.",
    )
    c.add_argument("--location", required=True, help="provider/region of the target")
    c.add_argument("--instance-type", required=True, help="instance type of the target")
    c.add_argument("--min-score", type=float, default=7.0, help="minimum score (default 7: training)")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(handler=_check)

    m = tsub.add_parser(
        "measure",
        help="measure all-reduce bandwidth with torch.distributed (NCCL on GPUs, gloo on CPU)",
        description="Start WORLD_SIZE processes, all-reduce a float32 tensor and report algbw and "
        "busbw (nccl-tests' definitions) in Gbit/s; on 8 GPUs with NCCL, compare with the seed's "
        "> 150 Gbps for 8x A100 NVLink.",
    )
    m.add_argument("--world-size", type=int, default=2, help="ranks (default 2)")
    m.add_argument("--size-mb", type=float, default=16.0, help="payload in MiB (default 16)")
    m.add_argument("--iterations", type=int, default=5, help="timed all-reduces (default 5)")
    m.add_argument("--backend", choices=["nccl", "gloo"], help="default: nccl when enough GPUs, else gloo")
    m.add_argument("--json", action="store_true", help="print one JSON object")
    m.set_defaults(handler=_measure)

    ls = tsub.add_parser("list", help="measured topology scores next to the catalog's")
    ls.add_argument("--json", action="store_true", help="print one JSON object")
    ls.set_defaults(handler=_list)


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _catalog_score(location: str, instance_type: str) -> float | None:
    from spotshift.pricing.catalog import load_catalog

    entry = load_catalog().get(location.split("/")[0], instance_type)
    return entry.topology_score if entry is not None else None


def _score(args: argparse.Namespace) -> int:
    from spotshift.errors import ConfigError
    from spotshift.placement.topology import parse_topo_matrix, record_measurement, score_topology

    if args.record and not (args.location and args.instance_type):
        raise ConfigError("topology score --record needs --location and --instance-type")
    scored = score_topology(parse_topo_matrix(_read(args.file), what=f"topology file {args.file}"))
    out: dict[str, Any] = scored.to_dict()
    if args.record:
        record_measurement(args.location, args.instance_type, scored, source=f"file {args.file}")
        out.update(
            recorded=True,
            location=args.location,
            instance_type=args.instance_type,
            catalog_score=_catalog_score(args.location, args.instance_type),
        )
    if args.json:
        emit_json(out)
    else:
        islands = " | ".join(",".join(map(str, i)) for i in scored.nvlink_islands)
        print(f"score {scored.score:g}: {scored.reason}")
        print(f"gpus {scored.gpus}, NVLink islands [{islands}], worst link {scored.worst_link}")
        if args.record:
            print(f"kept for {args.location} {args.instance_type} (catalog: {out['catalog_score']})")
    return 0


def _check(args: argparse.Namespace) -> int:
    from spotshift.errors import check_range
    from spotshift.placement.topology import probe_target
    from spotshift.pricing.regions import check_location

    check_location(args.location, "--location")
    check_range(args.min_score, "--min-score", low=0, high=10, low_inclusive=True)
    result = probe_target(
        args.location,
        args.instance_type,
        args.min_score,
        provider_catalog_score=_catalog_score(args.location, args.instance_type),
    )
    if args.json:
        emit_json(result.to_dict())
    else:
        print(("ok: " if result.passed else "refused: ") + result.description)
    return 0 if result.passed else 1


def _measure(args: argparse.Namespace) -> int:
    from spotshift.errors import check_range
    from spotshift.placement.allreduce import measure_allreduce

    check_range(args.size_mb, "--size-mb", low=0, high=4096)
    res = measure_allreduce(
        args.world_size,
        max(4, int(args.size_mb * (1 << 20))),
        iterations=args.iterations,
        backend=args.backend,
    )
    if args.json:
        emit_json(res.to_dict())
    else:
        print(
            f"{res.backend} x{res.world_size}, {res.size_bytes} bytes: median {res.median_s * 1e3:.2f} ms, "
            f"algbw {res.algbw_gbps:.2f} Gbit/s, busbw {res.busbw_gbps:.2f} Gbit/s, seed formula {res.seed_gbps:.2f} Gbit/s"
        )
        if res.expected_gbps is not None:
            verdict = "meets" if res.meets_expectation else "BELOW"
            print(
                f"{verdict} the seed's > {res.expected_gbps:g} Gbit/s for 8x A100 NVLink: fragmented topology?"
            )
    return 0


def _list(args: argparse.Namespace) -> int:
    from spotshift.placement.topology import load_measurements

    rows = [
        {
            "location": m.location,
            "instance_type": m.instance_type,
            "measured_score": m.score,
            "catalog_score": _catalog_score(m.location, m.instance_type),
            "reason": m.reason,
            "measured_at": m.measured_at,
            "source": m.source,
        }
        for m in load_measurements().values()
    ]
    if args.json:
        emit_json({"measurements": rows})
    else:
        if not rows:
            print("no measured topology scores (spotshift topology score --record / check)")
        for r in rows:
            cat = "-" if r["catalog_score"] is None else f"{r['catalog_score']:g}"
            print(
                f"{r['location']:24s} {r['instance_type']:24s} measured {r['measured_score']:g} "
                f"(catalog {cat})  {r['reason']}"
            )
    return 0
