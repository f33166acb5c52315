"""Handlers of ``spotshift sync snapshots | prune | verify``: look after a store. Standard library
only at module level (see :mod:`spotshift.sync.commands`)."""

from __future__ import annotations

import argparse

from spotshift.cliutil import emit_json
from spotshift.sync.chunking import human_bytes


def declared_sources() -> dict[str, str]:
    """The source directory of every declared dataset, by name (where ``verify --repair`` reads)."""
    from spotshift.sync.datasets import load_datasets

    return {d.name: str(d.source_path) for d in load_datasets()}


def run_snapshots(args: argparse.Namespace) -> int:
    from spotshift.sync.prune import list_snapshots
    from spotshift.sync.store_url import open_store

    store = open_store(args.url)
    snaps = list_snapshots(store, args.dataset)
    if args.json:
        emit_json({"store": store.url, "snapshots": [s.to_dict() for s in snaps]})
        return 0
    if not snaps:
        what = f"dataset {args.dataset!r}" if args.dataset else "any dataset"
        print(f"no snapshots of {what} in {store.url}; create one with `spotshift sync push DIR {args.url}`")
        return 0
    print(f"  {'dataset':20s} {'committed (UTC)':25s} {'files':>7s} {'size':>10s} {'chunks':>7s}  root")
    for s in snaps:
        mark = "*" if s.latest else " "
        if s.dataset is None:
            size = human_bytes(s.manifest_bytes or 0) + " manifest"
            print(f"  {'(untracked)':20s} {'-':25s} {'-':>7s} {size:>10s} {'-':>7s}  {s.root}")
            continue
        print(
            f"{mark} {s.dataset:20s} {s.committed_at or '-':25s} {s.files or 0:7d} {human_bytes(s.bytes or 0):>10s} "
            f"{s.chunks or 0:7d}  {s.root}" + ("" if s.manifest_bytes is not None else "  (manifest missing)")
        )
    return 0


def run_prune(args: argparse.Namespace) -> int:
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
        emit_json(r.to_dict())
        return 0
    verb = "would delete" if r.dry_run else "deleted"
    print(
        f"{'dry run: ' if r.dry_run else ''}{store.url}: kept {r.kept_snapshots} snapshot(s), forgot "
        f"{len(r.forgotten)}; {verb} {len(r.manifests_deleted)} manifest(s), {r.chunks_deleted} chunk(s) and "
        f"{r.packs_deleted} pack(s), {human_bytes(r.bytes_freed)}; {r.chunks_kept} chunk(s) in {r.packs_kept} pack(s) "
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


def run_verify(args: argparse.Namespace) -> int:
    from spotshift.errors import ConfigError
    from spotshift.sync.checker import VerifyReport, verify
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
        sources = declared_sources()
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
        emit_json(report.to_dict())
    else:
        for d in report.datasets:
            if d.manifest_error and not d.manifest_repaired:
                print(f"FAILED {d.dataset}: {d.manifest_error}")
                continue
            what = f"{d.chunks_checked} chunks, {human_bytes(d.bytes_checked)} {'read and hashed' if report.full else 'present'}"
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
        n, size = len(report.leftover_temp_files), human_bytes(report.leftover_temp_bytes)
        if report.leftovers_removed:
            print(f"removed {report.leftovers_removed} temp file(s) of killed writers ({size})")
        else:
            print(
                f"{n} temp file(s) of killed writers ({size}) in {report.store}: the next write to the store "
                "removes them (or --repair now)"
            )
    return 0 if report.ok else 1
