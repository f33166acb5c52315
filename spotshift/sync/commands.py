"""``spotshift sync ...`` and ``spotshift datasets ...``: the parsers.

The handlers live by verb: :mod:`spotshift.sync.transfer_commands` (fingerprint, push, pull,
replicate), :mod:`spotshift.sync.store_commands` (snapshots, prune, verify) and
:mod:`spotshift.sync.dataset_commands`. Those modules, like this one, import only the standard
library at module level: ``spotshift sync fingerprint`` is timed with its start-up, so the sync
engine is imported inside the handlers (and pyarrow, duckdb and the cloud SDKs only where a
command needs them).
"""

from __future__ import annotations

import argparse
from typing import Any

from spotshift.sync import dataset_commands, store_commands, transfer_commands

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
    _add_fingerprint(ss)
    _add_push(ss)
    _add_pull(ss)
    _add_replicate(ss)
    _add_snapshots(ss)
    _add_prune(ss)
    _add_verify(ss)


def _add_fingerprint(ss: Any) -> None:
    p = ss.add_parser(
        "fingerprint",
        help="chunk a directory and print its Merkle root (unchanged files come from the files cache)",
        description="Chunk DIR with content-defined chunking and print its Merkle root. Unchanged files are "
        "not read again: their chunks come from the files cache ($SPOTSHIFT_HOME/cache/files.sqlite).",
    )
    p.add_argument("dir", metavar="DIR", help="directory to fingerprint")
    _chunk_options(p)
    p.add_argument("--workers", type=int, metavar="N", help="chunking threads (default: one per core)")
    p.add_argument(
        "--no-cache", action="store_true", help="read every file (ignore and do not update the cache)"
    )
    p.add_argument("--manifest", metavar="FILE", help="also write the manifest (Parquet) to FILE")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=transfer_commands.run_fingerprint)


def _add_push(ss: Any) -> None:
    p = ss.add_parser(
        "push",
        help="snapshot DIR into a store, sending only chunks the store lacks",
        description="Snapshot DIR into the store at URL as a dataset: send missing chunks, then the manifest, "
        "then the dataset's pointer refs/<dataset>/latest. Safe to kill and rerun.",
    )
    p.add_argument("dir", metavar="DIR", help="directory to snapshot into the store")
    p.add_argument("url", metavar="URL", help=_URL_HELP)
    p.add_argument(
        "--dataset", help="dataset name (default: the name of DIR); declared datasets use their chunking"
    )
    _chunk_options(p)
    p.add_argument("--from-location", metavar="PROVIDER/REGION", help="where DIR is (for egress pricing)")
    p.add_argument(
        "--to-location", metavar="PROVIDER/REGION", help="where the store is (default: from its URL)"
    )
    p.add_argument("--check-existing", action="store_true", help=_CHECK_HELP)
    _io_options(p)
    p.set_defaults(handler=transfer_commands.run_push)


def _add_pull(ss: Any) -> None:
    p = ss.add_parser(
        "pull",
        help="restore a dataset snapshot from a store into DIR, verifying every chunk",
        description="Restore the latest snapshot (or --root) of a dataset into DIR: every chunk is checked against "
        "its digest, file modes and mtimes are restored, symlinks recreated. Chunks already in DIR are reused.",
    )
    p.add_argument("url", metavar="URL", help=_URL_HELP)
    p.add_argument("dir", metavar="DIR", help="directory to restore into")
    p.add_argument("--dataset", help="dataset to restore (default: the store's only dataset)")
    p.add_argument("--root", help="restore this snapshot root instead of the latest")
    p.add_argument("--no-reuse", action="store_true", help="download every chunk even if DIR holds it")
    p.add_argument(
        "--keep-special-bits",
        action="store_true",
        help="restore setuid, setgid and sticky bits recorded in the manifest (default: stripped, as tar "
        "and rsync do for archives they do not trust)",
    )
    p.add_argument("--to-location", metavar="PROVIDER/REGION", help="where DIR is (for egress pricing)")
    _io_options(p)
    p.set_defaults(handler=transfer_commands.run_pull)


def _add_replicate(ss: Any) -> None:
    p = ss.add_parser(
        "replicate",
        help="copy a dataset snapshot from one store to another (delta only)",
        description="Copy the latest snapshot (or --root) of a dataset from SRC_URL to DST_URL, sending only chunks "
        "DST_URL lacks; every chunk is verified on arrival.",
    )
    p.add_argument("src_url", metavar="SRC_URL", help=_URL_HELP)
    p.add_argument("dst_url", metavar="DST_URL", help=_URL_HELP)
    p.add_argument("--dataset", help="dataset to copy (default: the source store's only dataset)")
    p.add_argument("--root", help="copy this snapshot root instead of the latest")
    p.add_argument(
        "--from-location", metavar="PROVIDER/REGION", help="where SRC_URL is (default: from its URL)"
    )
    p.add_argument(
        "--to-location", metavar="PROVIDER/REGION", help="where DST_URL is (default: from its URL)"
    )
    p.add_argument("--check-existing", action="store_true", help=_CHECK_HELP)
    _io_options(p)
    p.set_defaults(handler=transfer_commands.run_replicate)


def _add_snapshots(ss: Any) -> None:
    p = ss.add_parser(
        "snapshots",
        help="list a store's dataset snapshots with their dates, sizes and roots",
        description="List the snapshot history of every dataset in the store (newest first; * marks the one "
        "refs/<dataset>/latest names), then manifests no history record names (untracked).",
    )
    p.add_argument("url", metavar="URL", help=_URL_HELP)
    p.add_argument("--dataset", help="only this dataset")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=store_commands.run_snapshots)


def _add_prune(ss: Any) -> None:
    p = ss.add_parser(
        "prune",
        help="keep the N newest snapshots per dataset and delete chunks and packs nothing kept references",
        description="Mark and sweep under the store's exclusive lock: forget all but the --keep newest snapshots "
        "of each dataset (never the latest), then delete manifests, chunks and pack files no kept snapshot "
        "references (a pack goes only when none of its chunks is referenced: packs are never rewritten). "
        "Refuses (exit 2, nothing deleted) while a push, replicate or repair holds the store. Unreferenced "
        "objects younger than --grace-hours are kept (writers that take no lock, pushes to be rerun).",
    )
    p.add_argument("url", metavar="URL", help=_URL_HELP)
    p.add_argument(
        "--keep", type=int, required=True, metavar="N", help="snapshots to keep per dataset (>= 1)"
    )
    p.add_argument("--dataset", help="forget snapshots of this dataset only")
    p.add_argument(
        "--grace-hours",
        type=float,
        default=24.0,
        metavar="H",
        help="never delete an unreferenced object younger than H hours (default 24)",
    )
    p.add_argument(
        "--forget-untracked",
        action="store_true",
        help="also delete manifests no snapshot record names (default: keep them)",
    )
    p.add_argument("--dry-run", action="store_true", help="report what would be deleted, delete nothing")
    p.add_argument(
        "--wait-seconds",
        type=float,
        default=0.0,
        metavar="S",
        help="wait up to S seconds for running pushes to release the store (default 0: refuse at once)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=store_commands.run_prune)


def _add_verify(ss: Any) -> None:
    p = ss.add_parser(
        "verify",
        help="check every chunk of the store's dataset snapshots; --repair refetches bad ones",
        description="Check the latest snapshot of every dataset in the store (or --dataset): the manifest must hash "
        "to its root and every chunk must be present and match its digest. Exit 0 when all is well, 1 when "
        "something is missing or corrupt (after repair, when asked).",
    )
    p.add_argument("url", metavar="URL", help=_URL_HELP)
    p.add_argument("--dataset", help="check only this dataset")
    p.add_argument("--quick", action="store_true", help="check presence and size only (do not read chunks)")
    p.add_argument(
        "--repair", action="store_true", help="rewrite missing/corrupt chunks from --source or --from"
    )
    p.add_argument("--source", metavar="DIR", help="repair from the original directory (re-chunked)")
    p.add_argument(
        "--from", dest="from_url", metavar="URL", help="repair from another store holding the snapshot"
    )
    p.add_argument("--workers", type=int, metavar="N", help="parallel reads")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=store_commands.run_verify)


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
    a.set_defaults(handler=dataset_commands.run_add)
    ls = ds.add_parser("list", help="list declared datasets")
    ls.add_argument("--json", action="store_true", help="print one JSON object")
    ls.set_defaults(handler=dataset_commands.run_list)
    rm = ds.add_parser(
        "remove",
        help="undeclare a dataset (refused while a declared job trains on it)",
        description="Remove NAME from spotshift.yaml. Its snapshots in the stores are kept; reclaim their "
        "space with `spotshift sync prune`.",
    )
    rm.add_argument("name", help="declared dataset")
    rm.add_argument("--json", action="store_true", help="print one JSON object")
    rm.set_defaults(handler=dataset_commands.run_remove)
