"""``spotshift sync ...`` and ``spotshift datasets ...``.

Only the standard library is imported at module level: ``spotshift sync fingerprint`` is timed with
its start-up, so the sync engine is imported inside the handlers (and pyarrow, duckdb and the cloud
SDKs only where a command needs them).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

_URL_HELP = "store URL: file:///path, s3://bucket/prefix or gs://bucket/prefix"
_CHECK_HELP = (
    "also look up chunks of the store's current snapshot and resend missing ones (repairs a damaged store)"
)


def register(sub: Any) -> None:
    """Add the ``sync`` and ``datasets`` command groups."""
    _register_sync(sub)
    _register_datasets(sub)


# ---- shared options ------------------------------------------------------------------------------
def _chunk_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("chunking (default: pyfastcdc-2020, 1 MiB / 4 MiB / 16 MiB, blake3-128)")
    g.add_argument("--min-chunk", metavar="SIZE", help="minimum chunk size, e.g. 16384, 64K, 2M")
    g.add_argument("--avg-chunk", metavar="SIZE", help="average (target) chunk size")
    g.add_argument("--max-chunk", metavar="SIZE", help="maximum chunk size")
    g.add_argument(
        "--engine",
        choices=["pyfastcdc-2020", "fastcdc-2016"],
        help="chunking engine (default: pyfastcdc-2020 when the sizes allow, else fastcdc-2016)",
    )
    g.add_argument(
        "--digest", choices=["blake3-128", "blake2b-128"], help="chunk digest (default blake3-128)"
    )


def _params(args: argparse.Namespace, base: Any = None) -> Any:
    from spotshift.sync.chunking import ChunkParams, parse_size

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


def _io_options(p: argparse.ArgumentParser, record: bool = True) -> None:
    p.add_argument("--workers", type=int, metavar="N", help="parallel transfers (default 4 local, 16 cloud)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "-q", "--quiet", action="store_true", help="no progress display (shown on stderr at a terminal)"
    )
    if record:
        p.add_argument(
            "--no-record",
            action="store_true",
            help="do not append the transfer to warehouse table raw.transfers",
        )


def _emit(obj: dict[str, Any]) -> None:
    from spotshift.cliutil import emit_json

    emit_json(obj)


def _hb(n: float) -> str:
    from spotshift.sync.chunking import human_bytes

    return human_bytes(n)


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
        _emit(stats.to_dict())
        return 0
    amp = stats.transfer_amplification
    print(
        f"{verb} {stats.dataset}: {stats.src} -> {stats.dst}\n"
        f"  root {stats.root}: {stats.files_total} files, {_hb(stats.bytes_full)}, {stats.chunks_total} chunks\n"
        f"  sent {stats.chunks_sent} chunks, {_hb(stats.bytes_sent)} (changed {_hb(stats.bytes_changed)}, "
        f"scanned {_hb(stats.bytes_scanned)}, amplification {f'{amp:.2f}' if amp else '-'}) "
        f"in {stats.seconds:.2f}s; egress ${stats.egress_usd:.4f}"
    )
    return 0


# ---- sync --------------------------------------------------------------------------------------------
def _register_sync(sub: Any) -> None:
    p = sub.add_parser(
        "sync",
        help="content-defined delta sync of datasets between directories and stores",
        description="Fingerprint trees, push them to stores, replicate between stores, pull, verify and repair. "
        "Stores are URLs: file:///path, s3://bucket/prefix or gs://bucket/prefix.",
    )
    ss = p.add_subparsers(dest="sync_command", metavar="ACTION")
    ss.required = True

    f = ss.add_parser(
        "fingerprint",
        help="chunk a directory and print its Merkle root (unchanged files come from the files cache)",
        description="Chunk DIR with content-defined chunking and print its Merkle root. Unchanged files are "
        "not read again: their chunks come from the files cache ($SPOTSHIFT_HOME/cache/files.sqlite).",
    )
    f.add_argument("dir", metavar="DIR", help="directory to fingerprint")
    _chunk_options(f)
    f.add_argument("--workers", type=int, metavar="N", help="chunking threads (default: one per core)")
    f.add_argument(
        "--no-cache", action="store_true", help="read every file (ignore and do not update the cache)"
    )
    f.add_argument("--manifest", metavar="FILE", help="also write the manifest (Parquet) to FILE")
    f.add_argument("--json", action="store_true", help="print one JSON object")
    f.set_defaults(handler=_fingerprint)

    pu = ss.add_parser(
        "push",
        help="snapshot DIR into a store, sending only chunks the store lacks",
        description="Snapshot DIR into the store at URL as a dataset: send missing chunks, then the manifest, "
        "then the dataset's pointer refs/<dataset>/latest. Safe to kill and rerun.",
    )
    pu.add_argument("dir", metavar="DIR", help="directory to snapshot into the store")
    pu.add_argument("url", metavar="URL", help=_URL_HELP)
    pu.add_argument(
        "--dataset", help="dataset name (default: the name of DIR); declared datasets use their chunking"
    )
    _chunk_options(pu)
    pu.add_argument("--from-location", metavar="PROVIDER/REGION", help="where DIR is (for egress pricing)")
    pu.add_argument(
        "--to-location", metavar="PROVIDER/REGION", help="where the store is (default: from its URL)"
    )
    pu.add_argument("--check-existing", action="store_true", help=_CHECK_HELP)
    _io_options(pu)
    pu.set_defaults(handler=_push)

    pl = ss.add_parser(
        "pull",
        help="restore a dataset snapshot from a store into DIR, verifying every chunk",
        description="Restore the latest snapshot (or --root) of a dataset into DIR: every chunk is checked against "
        "its digest, file modes and mtimes are restored, symlinks recreated. Chunks already in DIR are reused.",
    )
    pl.add_argument("url", metavar="URL", help=_URL_HELP)
    pl.add_argument("dir", metavar="DIR", help="directory to restore into")
    pl.add_argument("--dataset", help="dataset to restore (default: the store's only dataset)")
    pl.add_argument("--root", help="restore this snapshot root instead of the latest")
    pl.add_argument("--no-reuse", action="store_true", help="download every chunk even if DIR holds it")
    pl.add_argument(
        "--keep-special-bits",
        action="store_true",
        help="restore setuid, setgid and sticky bits recorded in the manifest (default: stripped, as tar "
        "and rsync do for archives they do not trust)",
    )
    pl.add_argument("--to-location", metavar="PROVIDER/REGION", help="where DIR is (for egress pricing)")
    _io_options(pl)
    pl.set_defaults(handler=_pull)

    r = ss.add_parser(
        "replicate",
        help="copy a dataset snapshot from one store to another (delta only)",
        description="Copy the latest snapshot (or --root) of a dataset from SRC_URL to DST_URL, sending only chunks "
        "DST_URL lacks; every chunk is verified on arrival.",
    )
    r.add_argument("src_url", metavar="SRC_URL", help=_URL_HELP)
    r.add_argument("dst_url", metavar="DST_URL", help=_URL_HELP)
    r.add_argument("--dataset", help="dataset to copy (default: the source store's only dataset)")
    r.add_argument("--root", help="copy this snapshot root instead of the latest")
    r.add_argument(
        "--from-location", metavar="PROVIDER/REGION", help="where SRC_URL is (default: from its URL)"
    )
    r.add_argument(
        "--to-location", metavar="PROVIDER/REGION", help="where DST_URL is (default: from its URL)"
    )
    r.add_argument("--check-existing", action="store_true", help=_CHECK_HELP)
    _io_options(r)
    r.set_defaults(handler=_replicate)

    sn = ss.add_parser(
        "snapshots",
        help="list a store's dataset snapshots with their dates, sizes and roots",
        description="List the snapshot history of every dataset in the store (newest first; * marks the one "
        "refs/<dataset>/latest names), then manifests no history record names (untracked).",
    )
    sn.add_argument("url", metavar="URL", help=_URL_HELP)
    sn.add_argument("--dataset", help="only this dataset")
    sn.add_argument("--json", action="store_true", help="print one JSON object")
    sn.set_defaults(handler=_snapshots)

    pr = ss.add_parser(
        "prune",
        help="keep the N newest snapshots per dataset and delete chunks and packs nothing kept references",
        description="Mark and sweep under the store's exclusive lock: forget all but the --keep newest snapshots "
        "of each dataset (never the latest), then delete manifests, chunks and pack files no kept snapshot "
        "references (a pack goes only when none of its chunks is referenced: packs are never rewritten). "
        "Refuses (exit 2, nothing deleted) while a push, replicate or repair holds the store. Unreferenced "
        "objects younger than --grace-hours are kept (writers that take no lock, pushes to be rerun).",
    )
    pr.add_argument("url", metavar="URL", help=_URL_HELP)
    pr.add_argument(
        "--keep", type=int, required=True, metavar="N", help="snapshots to keep per dataset (>= 1)"
    )
    pr.add_argument("--dataset", help="forget snapshots of this dataset only")
    pr.add_argument(
        "--grace-hours",
        type=float,
        default=24.0,
        metavar="H",
        help="never delete an unreferenced object younger than H hours (default 24)",
    )
    pr.add_argument(
        "--forget-untracked",
        action="store_true",
        help="also delete manifests no snapshot record names (default: keep them)",
    )
    pr.add_argument("--dry-run", action="store_true", help="report what would be deleted, delete nothing")
    pr.add_argument(
        "--wait-seconds",
        type=float,
        default=0.0,
        metavar="S",
        help="wait up to S seconds for running pushes to release the store (default 0: refuse at once)",
    )
    pr.add_argument("--json", action="store_true", help="print one JSON object")
    pr.set_defaults(handler=_prune)

    v = ss.add_parser(
        "verify",
        help="check every chunk of the store's dataset snapshots; --repair refetches bad ones",
        description="Check the latest snapshot of every dataset in the store (or --dataset): the manifest must hash "
        "to its root and every chunk must be present and match its digest. Exit 0 when all is well, 1 when "
        "something is missing or corrupt (after repair, when asked).",
    )
    v.add_argument("url", metavar="URL", help=_URL_HELP)
    v.add_argument("--dataset", help="check only this dataset")
    v.add_argument("--quick", action="store_true", help="check presence and size only (do not read chunks)")
    v.add_argument(
        "--repair", action="store_true", help="rewrite missing/corrupt chunks from --source or --from"
    )
    v.add_argument("--source", metavar="DIR", help="repair from the original directory (re-chunked)")
    v.add_argument(
        "--from", dest="from_url", metavar="URL", help="repair from another store holding the snapshot"
    )
    v.add_argument("--workers", type=int, metavar="N", help="parallel reads")
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.set_defaults(handler=_verify)


def _fingerprint(args: argparse.Namespace) -> int:
    from spotshift.sync.fingerprint import fingerprint

    fp = fingerprint(args.dir, _params(args), workers=args.workers, use_cache=not args.no_cache)
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
        _emit(out)
    else:
        rate = st.bytes_read / st.seconds / 1e9 if st.seconds and st.bytes_read else 0.0
        print(
            f"{m.root}  {args.dir}\n  {st.files} files, {_hb(st.bytes_total)}, {st.chunks} chunks "
            f"({m.params.describe()}); read {_hb(st.bytes_read)} ({st.cache_hits} files from cache) "
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


def _declared_sources() -> dict[str, str]:
    from spotshift.sync.datasets import load_datasets

    return {d.name: str(d.source_path) for d in load_datasets()}


def _push(args: argparse.Namespace) -> int:
    import os

    from spotshift.progress import progress_for
    from spotshift.sync.delta import push

    dataset = args.dataset or os.path.basename(os.path.abspath(args.dir).rstrip("/"))
    params = _params(args, _declared_params(args.dataset))
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


def _pull(args: argparse.Namespace) -> int:
    from spotshift.progress import progress_for
    from spotshift.sync.delta import pull

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


def _replicate(args: argparse.Namespace) -> int:
    from spotshift.progress import progress_for
    from spotshift.sync.delta import replicate
    from spotshift.sync.refs import resolve_dataset
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


def _snapshots(args: argparse.Namespace) -> int:
    from spotshift.sync.prune import list_snapshots
    from spotshift.sync.store_url import open_store

    store = open_store(args.url)
    snaps = list_snapshots(store, args.dataset)
    if args.json:
        _emit({"store": store.url, "snapshots": [s.to_dict() for s in snaps]})
        return 0
    if not snaps:
        what = f"dataset {args.dataset!r}" if args.dataset else "any dataset"
        print(f"no snapshots of {what} in {store.url}; create one with `spotshift sync push DIR {args.url}`")
        return 0
    print(f"  {'dataset':20s} {'committed (UTC)':25s} {'files':>7s} {'size':>10s} {'chunks':>7s}  root")
    for s in snaps:
        mark = "*" if s.latest else " "
        if s.dataset is None:
            size = _hb(s.manifest_bytes or 0) + " manifest"
            print(f"  {'(untracked)':20s} {'-':25s} {'-':>7s} {size:>10s} {'-':>7s}  {s.root}")
            continue
        print(
            f"{mark} {s.dataset:20s} {s.committed_at or '-':25s} {s.files or 0:7d} {_hb(s.bytes or 0):>10s} "
            f"{s.chunks or 0:7d}  {s.root}" + ("" if s.manifest_bytes is not None else "  (manifest missing)")
        )
    return 0


def _prune(args: argparse.Namespace) -> int:
    from spotshift.sync.prune import prune
    from spotshift.sync.store_url import open_store

    store = open_store(args.url)
    r = prune(
        store,
        keep=args.keep,
        dataset=args.dataset,
        grace_s=args.grace_hours * 3600.0,
        forget_untracked=args.forget_untracked,
        dry_run=args.dry_run,
        lock_wait_s=args.wait_seconds,
    )
    if args.json:
        _emit(r.to_dict())
        return 0
    verb = "would delete" if r.dry_run else "deleted"
    print(
        f"{'dry run: ' if r.dry_run else ''}{store.url}: kept {r.kept_snapshots} snapshot(s), forgot "
        f"{len(r.forgotten)}; {verb} {len(r.manifests_deleted)} manifest(s), {r.chunks_deleted} chunk(s) and "
        f"{r.packs_deleted} pack(s), {_hb(r.bytes_freed)}; {r.chunks_kept} chunk(s) in {r.packs_kept} pack(s) "
        "or their own objects referenced"
    )
    for f in r.forgotten:
        print(f"  forgot {f['dataset']} {f['committed_at']} {f['root']}")
    if r.young_kept:
        print(f"  kept {r.young_kept} unreferenced object(s) younger than {args.grace_hours:g} h")
    if r.untracked_kept:
        print(f"  kept {len(r.untracked_kept)} untracked manifest(s) (--forget-untracked deletes them)")
    for lock in r.stale_locks_removed:
        print(f"  removed stale lock {lock}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from spotshift.errors import ConfigError
    from spotshift.sync.delta import VerifyReport, verify
    from spotshift.sync.refs import list_datasets
    from spotshift.sync.store_url import open_store

    if (args.source or args.from_url) and not args.repair:
        raise ConfigError("--source/--from name where repairs come from; add --repair to repair")
    if args.source and args.from_url:
        raise ConfigError("give one repair source: --source DIR or --from URL")
    store = open_store(args.url)
    full = not args.quick
    if args.repair and not (args.source or args.from_url):
        # no source given: repair each dataset from its declared source directory
        sources = _declared_sources()
        names = [args.dataset] if args.dataset else list_datasets(store)
        missing = [n for n in names if n not in sources]
        if missing:
            raise ConfigError(
                f"--repair needs --source DIR or --from URL: {', '.join(missing)} not declared "
                "(spotshift datasets add) so its source directory is unknown"
            )
        report = VerifyReport(store.url, [], full=full)
        for n in names:
            part = verify(store, n, repair_from=sources[n], full=full, workers=args.workers)
            report.datasets.extend(part.datasets)
            report.seconds += part.seconds
    else:
        repair_from = (args.source or args.from_url) if args.repair else None
        report = verify(store, args.dataset, repair_from=repair_from, full=full, workers=args.workers)
    if args.json:
        _emit(report.to_dict())
    else:
        for d in report.datasets:
            if d.manifest_error and not d.manifest_repaired:
                print(f"FAILED {d.dataset}: {d.manifest_error}")
                continue
            what = f"{d.chunks_checked} chunks, {_hb(d.bytes_checked)} {'read and hashed' if report.full else 'present'}"
            bad = len(set(d.missing) | set(d.corrupt))
            if bad:
                print(
                    f"{'ok' if d.ok else 'FAILED'} {d.dataset} {d.root}: {what}; {len(d.missing)} missing, "
                    f"{len(d.corrupt)} corrupt, {len(d.repaired)} repaired"
                    + ("; manifest repaired" if d.manifest_repaired else "")
                )
                for h in [x for x in [*d.missing, *d.corrupt] if x not in d.repaired][:10]:
                    print(f"  bad chunk {h}")
            else:
                print(
                    f"ok {d.dataset} {d.root}: {what}"
                    + ("; manifest repaired" if d.manifest_repaired else "")
                )
    if report.leftover_temp_files and not args.json:
        n, size = len(report.leftover_temp_files), _hb(report.leftover_temp_bytes)
        if report.leftovers_removed:
            print(f"removed {report.leftovers_removed} temp file(s) of killed writers ({size})")
        else:
            print(
                f"{n} temp file(s) of killed writers ({size}) in {report.store}: the next write to the store "
                "removes them (or --repair now)"
            )
    return 0 if report.ok else 1


# ---- datasets ----------------------------------------------------------------------------------------
def _register_datasets(sub: Any) -> None:
    p = sub.add_parser(
        "datasets",
        help="declare and list datasets (name, source directory, home location, chunking)",
        description="Datasets are declared in $SPOTSHIFT_HOME/spotshift.yaml (section datasets); each becomes a "
        "partition of the dataset_fingerprints and dataset_replicas assets.",
    )
    ds = p.add_subparsers(dest="datasets_command", metavar="ACTION")
    ds.required = True
    a = ds.add_parser("add", help="declare a dataset")
    a.add_argument("name", metavar="NAME", help="dataset name (letters, digits, '.', '_', '-')")
    a.add_argument("source", metavar="SOURCE", help="directory or file:/// URL of the original files")
    a.add_argument(
        "--location",
        default=None,
        metavar="PROVIDER/REGION",
        help="where the source lives; its snapshots go to that region's store (default gcp/us-central1)",
    )
    a.add_argument("--description", default="", help="free text")
    _chunk_options(a)
    a.add_argument("--replace", action="store_true", help="replace an existing declaration of NAME")
    a.add_argument("--json", action="store_true", help="print one JSON object")
    a.set_defaults(handler=_datasets_add)
    ls = ds.add_parser("list", help="list declared datasets")
    ls.add_argument("--json", action="store_true", help="print one JSON object")
    ls.set_defaults(handler=_datasets_list)
    rm = ds.add_parser(
        "remove",
        help="undeclare a dataset (refused while a declared job trains on it)",
        description="Remove NAME from spotshift.yaml. Its snapshots in the stores are kept; reclaim their "
        "space with `spotshift sync prune`.",
    )
    rm.add_argument("name", help="declared dataset")
    rm.add_argument("--json", action="store_true", help="print one JSON object")
    rm.set_defaults(handler=_datasets_remove)


def _datasets_add(args: argparse.Namespace) -> int:
    from spotshift.sync.datasets import DEFAULT_LOCATION, Dataset, add_dataset

    ds = Dataset.declare(
        args.name,
        args.source,
        location=args.location or DEFAULT_LOCATION,
        params=_params(args),
        description=args.description,
    )
    if not ds.source_path.is_dir():
        sys.stderr.write(f"spotshift: warning: {ds.source_path} is not a directory (yet)\n")
    add_dataset(ds, replace=args.replace)
    if args.json:
        _emit(ds.to_dict())
    else:
        print(f"declared dataset {ds.name}: {ds.source} at {ds.location} ({ds.params.describe()})")
    return 0


def _datasets_list(args: argparse.Namespace) -> int:
    from spotshift.sync.datasets import load_datasets

    items = load_datasets()
    if args.json:
        _emit({"datasets": [d.to_dict() for d in items]})
    else:
        if not items:
            print(
                "no datasets declared; add one with `spotshift datasets add NAME DIR --location PROVIDER/REGION`"
            )
            return 0
        print(f"{'dataset':20s} {'location':22s} {'chunking':45s} source")
        for d in items:
            print(f"{d.name:20s} {d.location:22s} {d.params.describe():45s} {d.source}")
    return 0


def _datasets_remove(args: argparse.Namespace) -> int:
    from spotshift.sync.datasets import remove_dataset

    remove_dataset(args.name)
    if args.json:
        _emit({"removed": args.name})
    else:
        print(f"removed dataset {args.name} (its snapshots in the stores are kept)")
    return 0
