"""Handlers of ``spotshift sync fingerprint | push | pull | replicate``: move bytes and record the
transfer (``raw.transfers``). Only the standard library and
the light chunking parameters at module level (see :mod:`spotshift.sync.commands`): each handler
imports the part of the engine it runs."""

from __future__ import annotations

import argparse
from typing import Any

from spotshift.cliutil import emit_json
from spotshift.sync.chunking import ChunkParams, human_bytes, parse_size


def chunk_params_from(args: argparse.Namespace, base: ChunkParams | None = None) -> ChunkParams:
    """The chunking the ``--min-chunk/--avg-chunk/--max-chunk/--engine/--digest`` options ask for;
    ``base`` (a declared dataset's chunking) when none is given, else ``base`` with those changed."""
    sizes = [
        parse_size(v) if v is not None else None for v in (args.min_chunk, args.avg_chunk, args.max_chunk)
    ]
    if base is not None and all(v is None for v in sizes) and args.engine is None and args.digest is None:
        return base
    if base is not None:
        sizes = [
            v if v is not None else b
            for v, b in zip(sizes, (base.min_size, base.avg_size, base.max_size), strict=True)
        ]
    return ChunkParams.resolve(*sizes, engine=args.engine, digest=args.digest)


def _record(args: argparse.Namespace, stats: Any) -> None:
    if getattr(args, "no_record", False):
        return
    from spotshift.sync.transfer import record_transfers

    # a locked warehouse queues the row (a warning says so); one that cannot be opened is exit 2
    record_transfers([stats], run_id=f"cli:{stats.transfer_id}")


def _report_transfer(args: argparse.Namespace, verb: str, stats: Any) -> int:
    """Record the transfer in the warehouse (unless --no-record) and print it."""
    _record(args, stats)
    if args.json:
        emit_json(stats.to_dict())
        return 0
    amp = stats.transfer_amplification
    print(
        f"{verb} {stats.dataset}: {stats.src} -> {stats.dst}\n"
        f"  root {stats.root}: {stats.files_total} files, {human_bytes(stats.bytes_full)}, {stats.chunks_total} chunks\n"
        f"  sent {stats.chunks_sent} chunks, {human_bytes(stats.bytes_sent)} (changed {human_bytes(stats.bytes_changed)}, "
        f"scanned {human_bytes(stats.bytes_scanned)}, amplification {f'{amp:.2f}' if amp else '-'}) "
        f"in {stats.seconds:.2f}s; egress ${stats.egress_usd:.4f}"
    )
    return 0


def run_fingerprint(args: argparse.Namespace) -> int:
    from spotshift.sync.fingerprint import fingerprint

    fp = fingerprint(args.dir, chunk_params_from(args), workers=args.workers, use_cache=not args.no_cache)
    m, st = fp.manifest, fp.stats
    out: dict[str, Any] = {
        "root": m.root,
        "dir": args.dir,
        "files": st.files,
        "dirs": st.dirs,
        "symlinks": st.symlinks,
        "skipped": st.skipped,
        "bytes_total": st.bytes_total,
        "bytes_scanned": st.bytes_read,
        "bytes_changed": st.bytes_read,
        "chunks_total": st.chunks,
        "chunks_sent": 0,
        "bytes_sent": 0,
        "cache_hits": st.cache_hits,
        "workers": st.workers,
        "seconds": st.seconds,
        "params": m.params.to_dict(),
    }
    if args.manifest:
        from spotshift.atomic import atomic_write_bytes

        atomic_write_bytes(args.manifest, m.to_parquet_bytes())
        out["manifest"] = args.manifest
    if args.json:
        emit_json(out)
    else:
        rate = st.bytes_read / st.seconds / 1e9 if st.seconds and st.bytes_read else 0.0
        print(
            f"{m.root}  {args.dir}\n  {st.files} files, {human_bytes(st.bytes_total)}, {st.chunks} chunks "
            f"({m.params.describe()}); read {human_bytes(st.bytes_read)} ({st.cache_hits} files from cache) "
            f"in {st.seconds:.2f}s{f', {rate:.2f} GB/s' if rate else ''}"
        )
        if st.skipped:
            print(f"  skipped {len(st.skipped)} special files: {', '.join(st.skipped[:5])}")
    return 0


def _declared_params(name: str | None) -> Any:
    if not name:
        return None
    from spotshift import registry
    from spotshift.sync.datasets import Dataset

    for e in registry.entries("datasets"):
        if e.get("name") == name:
            return Dataset.from_dict(e).params
    return None


def run_push(args: argparse.Namespace) -> int:
    import os

    from spotshift.progress import progress_for
    from spotshift.sync.archiver import push

    dataset = args.dataset or os.path.basename(os.path.abspath(args.dir).rstrip("/"))
    params = chunk_params_from(args, _declared_params(args.dataset))
    with progress_for(args.quiet) as progress:
        stats = push(
            args.dir,
            args.url,
            dataset,
            params=params,
            workers=args.workers,
            src_location=args.from_location,
            dst_location=args.to_location,
            check_existing=args.check_existing,
            progress=progress,
        )
    return _report_transfer(args, "pushed", stats)


def run_pull(args: argparse.Namespace) -> int:
    from spotshift.progress import progress_for
    from spotshift.sync.restorer import pull

    with progress_for(args.quiet) as progress:
        stats = pull(
            args.url,
            args.dir,
            args.dataset,
            root=args.root,
            workers=args.workers,
            reuse_local=not args.no_reuse,
            dst_location=args.to_location,
            keep_special_bits=args.keep_special_bits,
            progress=progress,
        )
    return _report_transfer(args, "pulled", stats)


def run_replicate(args: argparse.Namespace) -> int:
    from spotshift.progress import progress_for
    from spotshift.sync.refs import resolve_dataset
    from spotshift.sync.replicator import replicate
    from spotshift.sync.store_url import open_store

    src = open_store(args.src_url)
    dataset = args.dataset or resolve_dataset(src, None)[0]
    with progress_for(args.quiet) as progress:
        stats = replicate(
            src,
            args.dst_url,
            dataset,
            root=args.root,
            workers=args.workers,
            src_location=args.from_location,
            dst_location=args.to_location,
            check_existing=args.check_existing,
            progress=progress,
        )
    return _report_transfer(args, "replicated", stats)
