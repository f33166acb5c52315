"""Handlers of ``spotshift datasets add | list | remove``. Standard library only at module level
(see :mod:`spotshift.sync.commands`)."""

from __future__ import annotations

import argparse
import sys

from spotshift.cliutil import emit_json
from spotshift.sync.transfer_commands import chunk_params_from


def run_add(args: argparse.Namespace) -> int:
    from spotshift.sync.datasets import DEFAULT_LOCATION, Dataset, add_dataset

    ds = Dataset.declare(
        args.name,
        args.source,
        location=args.location or DEFAULT_LOCATION,
        params=chunk_params_from(args),
        description=args.description,
    )
    if not ds.source_path.is_dir():
        sys.stderr.write(f"spotshift: warning: {ds.source_path} is not a directory (yet)\n")
    add_dataset(ds, replace=args.replace)
    if args.json:
        emit_json(ds.to_dict())
    else:
        print(f"declared dataset {ds.name}: {ds.source} at {ds.location} ({ds.params.describe()})")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from spotshift.sync.datasets import load_datasets

    items = load_datasets()
    if args.json:
        emit_json({"datasets": [d.to_dict() for d in items]})
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


def run_remove(args: argparse.Namespace) -> int:
    from spotshift.sync.datasets import remove_dataset

    remove_dataset(args.name)
    if args.json:
        emit_json({"removed": args.name})
    else:
        print(f"removed dataset {args.name} (its snapshots in the stores are kept)")
    return 0
