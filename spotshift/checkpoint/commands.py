"""``spotshift ckpt``: inspect, verify, list and migrate checkpoints (standard library at import time).

A checkpoint path is ``<store>/checkpoints/<job>/<checkpoint id>`` (or ``.../<job>`` / ``.../<job>/latest``
for the newest), where ``<store>`` is a ``file://``, ``s3://`` or ``gs://`` URL or a local path.
"""

from __future__ import annotations

import argparse
from typing import Any

KEY_HELP = "key provider spec: local | local:/path/kek.key | aws-kms:<key> | gcp-kms:<key name> (default $SPOTSHIFT_KEY_PROVIDER or local)"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "ckpt",
        help="inspect, verify, list and migrate encrypted training checkpoints",
        description="Checkpoints live at <store>/checkpoints/<job>/<id> (s<step>-<content hash>); <store> is a "
        "file://, s3:// or gs:// URL or a local path. '<store>/checkpoints/<job>' means the newest committed one.",
    )
    cs = p.add_subparsers(dest="ckpt_command", metavar="ACTION")
    cs.required = True
    _register_inspect(cs)
    _register_verify(cs)
    _register_compat(cs)
    _register_list(cs)
    _register_prune(cs)
    _register_migrate(cs)


def _register_inspect(cs: Any) -> None:
    insp = cs.add_parser(
        "inspect",
        help="show a checkpoint's metadata and check its parts are present and whole (no key needed)",
        description="Prints the metadata (nothing decrypted, no key needed) and compares every part's size in "
        "the store with the metadata. Exit 0 when all parts are present at their size; exit 2 with one line "
        "naming the checkpoint when a part is missing, truncated or has extra bytes (the listing marks it "
        "DAMAGED) — the same code 'ckpt verify' uses for damage. Hashes, seal and key: 'ckpt verify'.",
    )
    insp.add_argument("path", help="checkpoint path or URL")
    insp.add_argument("--json", action="store_true", help="print one JSON object")
    insp.set_defaults(handler=_inspect)


def _register_verify(cs: Any) -> None:
    ver = cs.add_parser(
        "verify",
        help="verify commit marker, sizes, hashes, key, seal, every segment and the content hash",
        description="Exit 0 when the checkpoint is intact; exit 2 with one line naming the checkpoint and the "
        "problem (truncated, corrupt or swapped part, wrong key, tampered metadata).",
    )
    ver.add_argument("path", help="checkpoint path or URL")
    ver.add_argument("--key-provider", help=KEY_HELP)
    ver.add_argument("--json", action="store_true", help="print one JSON object")
    ver.set_defaults(handler=_verify)


def _register_compat(cs: Any) -> None:
    cp = cs.add_parser(
        "compat",
        help="show the checkpoint compatibility matrix: runtime pairs proven or known bad by moves",
        description="A runtime is torch, Python (major.minor), CUDA and NCCL. A location runs the 'runtimes' "
        "entry of spotshift.yaml named after its provider/region, else after its provider, else the local "
        "runtime. A move whose probation matched the shadow comparison proves its pair; a failed probe marks "
        "it known bad, and moves of a known-bad pair are refused (exit 2) before any byte moves.",
    )
    cp.add_argument("--json", action="store_true", help="print one JSON object")
    cp.set_defaults(handler=_compat)


def _register_list(cs: Any) -> None:
    ls = cs.add_parser(
        "list",
        help="list the committed checkpoints of a job in a store, and what killed writers left there",
        description="Lists committed checkpoints (* marks the newest) and reports leftovers: temp files of "
        "writers that died (pid gone) in the store's .tmp, undelivered deltas in checkpoints/<job>/incoming, "
        "and checkpoint directories without COMMIT. The next checkpoint writer into the store (train, "
        "ckpt migrate, checkpoint_replicas) removes the first two; list itself changes nothing.",
    )
    ls.add_argument("path", help="<store>/checkpoints/<job>")
    ls.add_argument("--json", action="store_true", help="print one JSON object")
    ls.set_defaults(handler=_list)


def _register_prune(cs: Any) -> None:
    pr = cs.add_parser(
        "prune",
        help="keep the newest N committed checkpoints of a job in a store, delete the rest",
        description="Delete all but the --keep newest committed checkpoints of the job. Never deletes the one "
        "'latest' names, a base an undelivered delta (checkpoints/<job>/incoming/) needs, or an uncommitted "
        "checkpoint; deletes COMMIT first, so an interrupted prune never leaves a broken committed checkpoint.",
    )
    pr.add_argument("path", help="<store>/checkpoints/<job>")
    pr.add_argument("--keep", type=int, required=True, metavar="N", help="checkpoints to keep (>= 1)")
    pr.add_argument("--dry-run", action="store_true", help="report what would be deleted, delete nothing")
    pr.add_argument("--json", action="store_true", help="print one JSON object")
    pr.set_defaults(handler=_prune)


def _register_migrate(cs: Any) -> None:
    mig = cs.add_parser(
        "migrate",
        help="copy a checkpoint to another store, as an encrypted tensor delta when the target has an older one",
        description="Sends a lossless tensor delta (per-tensor bit transforms, byte planes, zstd) against --base "
        "(default: the newest older checkpoint of the job in the target), applies it at the target, checks each "
        "rebuilt tensor's digest and the content hash; falls back to a full "
        "copy when the delta is not smaller than 90% of it. Records the transfer in raw.transfers.",
    )
    mig.add_argument("src", help="source checkpoint path or URL")
    mig.add_argument("url", help="target store URL (or local path)")
    mig.add_argument("--base", help="checkpoint id (or path) in the target to delta against")
    mig.add_argument("--full", action="store_true", help="always send the whole checkpoint")
    mig.add_argument("--key-provider", help=KEY_HELP)
    mig.add_argument("--no-record", action="store_true", help="do not append the transfer to the warehouse")
    mig.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (bytes_full, bytes_sent, ratio, seconds, ...)",
    )
    mig.set_defaults(handler=_migrate)


def _open(path: str):  # noqa: ANN202
    from spotshift.checkpoint.format import open_checkpoint, parse_checkpoint_path
    from spotshift.sync.store_url import open_store

    store_url, job, ckpt = parse_checkpoint_path(path)
    return open_checkpoint(open_store(store_url), job, ckpt)


def _inspect(args: argparse.Namespace) -> int:
    from spotshift.cliutil import emit_json

    ck = _open(args.path)
    s = ck.summary()
    if args.json:
        emit_json(s)
    else:
        _print_summary(s)
    if s["damage"]:
        from spotshift.errors import IntegrityError

        raise IntegrityError(f"{ck.label}: {'; '.join(s['damage'])}")
    return 0


def _print_summary(s: dict[str, Any]) -> None:
    print(f"checkpoint  {s['checkpoint']}  ({s['kind']}, step {s['step']}, {s['tokens']} tokens)")
    print(f"store       {s['store']}")
    print(f"created     {s['created_at']} in {s['location']}; committed {s['committed_at']}")
    print(f"content     {s['content_hash']}")
    print(f"size        {s['stored_bytes']:,} bytes stored, {s['plain_bytes']:,} plaintext")
    for part, info in s["parts"].items():
        found, expected = info["found_bytes"], info["stored_bytes"]
        state = ""
        if found != expected:
            state = "  DAMAGED: " + (
                "missing" if found is None else f"{found:,} of {expected:,} bytes stored"
            )
        print(f"  part {part:8s} {info['tensors']:4d} tensors  {info['plain_bytes']:>14,} bytes{state}")
    print(f"model       {s['model']}")
    enc = s["encryption"]
    print(f"encryption  {enc['alg']}, key {enc['kek_id']}")
    print(f"versions    {s['versions']}  threads {s['num_threads']}")


def _verify(args: argparse.Namespace) -> int:
    from spotshift.checkpoint.keys import open_key_provider
    from spotshift.cliutil import emit_json

    ck = _open(args.path)
    report = ck.verify(open_key_provider(args.key_provider))
    if args.json:
        emit_json(report)
    else:
        print(
            f"ok: {report['checkpoint']} step {report['step']} verified ({report['stored_bytes']:,} bytes, {report['seconds']:.2f}s)"
        )
    return 0


def _compat(args: argparse.Namespace) -> int:
    from spotshift import warehouse
    from spotshift.checkpoint.compat import Runtime, matrix_view
    from spotshift.cliutil import emit_json

    with warehouse.connect() as con:
        view = matrix_view(con)
    if args.json:
        emit_json(view)
        return 0
    print(f"local runtime: {Runtime(**view['local']).key}")
    for name, rt in view["declared"].items():
        print(f"runtime of {name}: {Runtime(**rt).key}" + (f" (image {rt['image']})" if rt["image"] else ""))
    if not view["pairs"]:
        print("no runtime pair tried yet: the first move between two runtimes probes its pair")
    for p in view["pairs"]:
        print(f"{p['verdict']:<9} {p['source_runtime']}  ->  {p['target_runtime']}")
        print(
            f"          by move {p['run_id']} of {p['job']} ({p['source_location']} -> {p['target_location']}): {p['reason']}"
        )
    return 0


def _list(args: argparse.Namespace) -> int:
    from spotshift.checkpoint.format import (
        latest_checkpoint,
        leftovers,
        list_checkpoints,
        parse_checkpoint_path,
    )
    from spotshift.cliutil import emit_json
    from spotshift.sync.store_url import open_store

    store_url, job, _ = parse_checkpoint_path(args.path)
    store = open_store(store_url)
    ids = list_checkpoints(store, job)
    latest = latest_checkpoint(store, job)
    left = leftovers(store, job)
    if args.json:
        emit_json({"store": store_url, "job": job, "checkpoints": ids, "latest": latest, "leftovers": left})
        return 0
    if not ids:
        print(f"no committed checkpoints of {job} in {store_url}; write one with `spotshift train {job}`")
    else:
        print(f"checkpoints of {job} in {store_url} (* = latest)")
        for c in ids:
            print(("* " if c == latest else "  ") + c)
    found = []
    if left["temp_files"]:
        found.append(
            f"{left['temp_files']} temp file(s) of dead writers ({left['temp_bytes']:,} bytes) in .tmp"
        )
    if left["incoming"]:
        found.append(
            f"{left['incoming']} undelivered delta(s) ({left['incoming_bytes']:,} bytes) in checkpoints/{job}/incoming"
        )
    if found:
        print(f"leftovers: {'; '.join(found)} (the next checkpoint writer into this store removes them)")
    if left["uncommitted"]:
        print(
            f"leftovers: {len(left['uncommitted'])} checkpoint dir(s) without COMMIT (cut short or in progress): "
            + ", ".join(left["uncommitted"])
        )
    return 0


def _prune(args: argparse.Namespace) -> int:
    from spotshift.checkpoint.format import parse_checkpoint_path
    from spotshift.checkpoint.prune import prune_checkpoints
    from spotshift.cliutil import emit_json
    from spotshift.errors import ConfigError
    from spotshift.sync.store_url import open_store

    store_url, job, ckpt = parse_checkpoint_path(args.path)
    if ckpt is not None:
        raise ConfigError(f"{args.path!r} names one checkpoint; give <store>/checkpoints/{job}")
    r = prune_checkpoints(open_store(store_url), job, keep=args.keep, dry_run=args.dry_run)
    if args.json:
        emit_json(r.to_dict())
    elif r.blocked_by:
        print(f"deleted nothing: {r.blocked_by} (an unreadable delta could need any checkpoint)")
    else:
        verb = "would delete" if r.dry_run else "deleted"
        print(
            f"{job} in {store_url}: kept {len(r.kept)}, {verb} {len(r.deleted)} checkpoint(s), "
            f"{r.bytes_freed:,} bytes (latest {r.latest or '-'})"
        )
        for c in r.deleted:
            print(f"  {verb} {c}")
        for key, base in r.delta_bases.items():
            print(f"  kept {base}: base of undelivered delta {key}")
    return 1 if r.blocked_by else 0


def _migrate(args: argparse.Namespace) -> int:
    from spotshift.checkpoint.format import parse_checkpoint_path
    from spotshift.checkpoint.keys import open_key_provider
    from spotshift.checkpoint.migrate import migrate_checkpoint
    from spotshift.cliutil import emit_json
    from spotshift.sync.store_url import open_store

    store_url, job, ckpt = parse_checkpoint_path(args.src)
    dst_url = (
        args.url
        if "://" in args.url
        else __import__("pathlib").Path(args.url).expanduser().resolve().as_uri()
    )
    base = args.base
    if base and "/" in base:
        base = parse_checkpoint_path(base)[2]
    report = migrate_checkpoint(
        open_store(store_url),
        job,
        open_store(dst_url),
        open_key_provider(args.key_provider),
        checkpoint_id=ckpt,
        base=base,
        full=args.full,
    )
    if not args.no_record and report.method != "present":
        from spotshift import warehouse

        warehouse.record_facts({"raw.transfers": [report.transfer_row("cli:ckpt-migrate")]})
    if args.json:
        emit_json(report.to_dict())
    else:
        print(
            f"{report.method}: {job}/{report.checkpoint_id} -> {report.dst_store}: sent {report.bytes_sent:,} of "
            f"{report.bytes_full:,} bytes (ratio {report.ratio:.3f}) in {report.seconds:.2f}s"
            + (f", base {report.base}" if report.base else "")
        )
    return 0
