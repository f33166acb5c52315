"""The ``spotshift`` command line: one entry point, one sub-command group per domain.

Each domain module listed in :data:`COMMAND_MODULES` exposes ``register(subparsers)`` and adds its
group (``quotes``, ``sync``, ``datasets``, ...). Handlers receive the parsed ``argparse.Namespace``
and return an exit code. Command modules must import only the standard library at module level:
``spotshift sync fingerprint`` is timed with its start-up, so heavy imports happen inside handlers.

Exit codes: 0 success, 1 a check found a problem (e.g. ``verify`` found corrupt chunks),
2 bad input / configuration / credentials / integrity (one line on stderr, never a traceback),
130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from spotshift.cliutil import OneLineParser, emit_json

#: modules that contribute command groups, in ``--help`` order
COMMAND_MODULES: tuple[str, ...] = (
    "spotshift.pricing.commands",
    "spotshift.sync.commands",
    "spotshift.placement.commands",
    "spotshift.migration.commands",
    "spotshift.simulate.commands",
    "spotshift.serving.simulate_commands",
    "spotshift.serving.commands",
    "spotshift.serving.router_commands",
    "spotshift.serving.cutover_commands",
    "spotshift.training.commands",
    "spotshift.checkpoint.commands",
    "spotshift.costs.commands",
    "spotshift.costs.budget_commands",
    "spotshift.placement.topology_commands",
    "spotshift.pools.commands",
    "spotshift.devenvs.commands",
    "spotshift.workers.commands",
)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser with every registered command group; with ``command``, only the groups up to
    the one that registers it (the rest are not imported: ``sync fingerprint`` is timed)."""
    parser = OneLineParser(
        prog="spotshift",
        description="Move GPU training and inference to where GPUs are cheapest, without losing a step.",
        epilog="State lives under $SPOTSHIFT_HOME (default ./.spotshift). Exit 2 means bad input.",
    )
    from spotshift import __version__

    parser.add_argument("--version", action="version", version=f"spotshift {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _register_home(sub)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
        if command is not None and command in sub.choices:
            break
    return parser


def _register_home(sub: Any) -> None:
    p = sub.add_parser("home", help="show or initialise $SPOTSHIFT_HOME (state directory)")
    p.add_argument(
        "action",
        nargs="?",
        choices=["show", "init"],
        default="show",
        help="show: print the state paths (default); init: create them and the Dagster instance config",
    )
    p.add_argument(
        "--postgres",
        metavar="URL",
        help="init: keep Dagster's runs in PostgreSQL (postgresql://user@host:5432/db; the password is "
        "read from $SPOTSHIFT_DAGSTER_POSTGRES_PASSWORD, never written); default $SPOTSHIFT_DAGSTER_POSTGRES_URL",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="init: rewrite dagster.yaml even if it is set up for another storage",
    )
    p.add_argument(
        "--executor",
        choices=["in_process", "celery"],
        help="init: where the steps of moves run: in_process (default) or celery (workers per region, "
        "spotshift workers start); written to $SPOTSHIFT_HOME/executor.json",
    )
    p.add_argument(
        "--broker",
        metavar="URL",
        help="init --executor celery: the RabbitMQ broker (default amqp://guest@127.0.0.1:5672//; a "
        "password is read from $SPOTSHIFT_CELERY_BROKER_PASSWORD, never written)",
    )
    p.add_argument(
        "--step-store",
        metavar="URL",
        help="init --executor: where the steps of a move hand each other their results, a store every "
        "worker reaches (s3://bucket/prefix, gs://bucket/prefix, file:///shared/path); default the "
        "instance's storage directory, which workers must then share",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_home)


def _home(args: argparse.Namespace) -> int:
    from spotshift import home
    from spotshift.cloud_errors import redact_url
    from spotshift.errors import ConfigError
    from spotshift.factlake_remote import FACTS_URL_ENV
    from spotshift.instance import read_storage
    from spotshift.warehouse import facts_dir
    from spotshift.workers.settings import load_settings, write_settings

    if args.action != "init" and (
        args.postgres or args.force or args.executor or args.broker or args.step_store
    ):
        raise ConfigError(
            "--postgres, --force, --executor, --broker and --step-store apply to `spotshift home init`"
        )
    if args.broker and args.executor != "celery":
        raise ConfigError("--broker needs --executor celery")
    if args.step_store and not args.executor:
        raise ConfigError("--step-store needs --executor")
    if args.action == "init":
        notes: list[str] = []
        home.init_home(postgres_url=args.postgres, force=args.force, notes=notes)
        if args.executor:
            write_settings(args.executor, args.broker, notes, step_store=args.step_store)
        for note in notes:
            sys.stderr.write(f"spotshift: note: {note}\n")
    cfg = home.dagster_home() / "dagster.yaml"
    paths = {
        "spotshift_home": str(home.spotshift_home()),
        "dagster_home": str(home.dagster_home()),
        "warehouse": str(home.warehouse_path()),
        "fact_lake": redact_url(os.environ.get(FACTS_URL_ENV, "").strip()) or str(facts_dir()),
        "stores": str(home.stores_root()),
        "config": str(home.config_path()),
        "instance": read_storage(cfg)[0].describe()
        if cfg.exists()
        else "not initialised (spotshift home init)",
        "executor": load_settings().describe(),
    }
    if args.json:
        emit_json(paths)
    else:
        for k, v in paths.items():
            print(f"{k:15s} {v}")
    return 0


def _fail(message: str, code: int = 2) -> int:
    sys.stderr.write(f"spotshift: error: {' '.join(str(message).split())}\n")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the handler, map errors to exit codes. Returns the exit code."""
    from spotshift.errors import SpotshiftError

    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "true")
    given = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(given[0] if given and not given[0].startswith("-") else None)
    command: list[str] | None = None
    if given and given[0] == "run" and "--" in given:  # spotshift run JOB [options] -- COMMAND ARGS...
        cut = given.index("--")
        given, command = given[:cut], given[cut + 1 :]
    args = parser.parse_args(given)
    if command is not None:
        args.command = command
    try:
        return int(args.handler(args) or 0)
    except SpotshiftError as exc:
        return _fail(str(exc), exc.exit_code)
    except FileNotFoundError as exc:
        return _fail(f"{exc.filename}: no such file or directory")
    except IsADirectoryError as exc:
        return _fail(f"{exc.filename}: is a directory")
    except PermissionError as exc:
        return _fail(f"{exc.filename}: permission denied")
    except OSError as exc:
        if exc.filename is None:  # not about a path the user gave: a bug or the machine, show it
            raise
        return _fail(f"{exc.filename}: {exc.strerror or type(exc).__name__}")
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
