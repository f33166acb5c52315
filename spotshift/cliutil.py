"""Helpers every command module shares: the ``--json`` printer, one-line usage errors, renamed options.

Standard library only (command modules import it at module level; ``spotshift ...`` start-up is
timed). :mod:`spotshift.cli` assembles the commands and imports nothing back from them.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NoReturn


def emit_json(obj: Any) -> None:
    """Print one JSON object on one line (the ``--json`` contract of every command)."""
    sys.stdout.write(json.dumps(obj, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


class _DeprecatedOption(argparse.Action):
    """A renamed option's old spelling: stores into the new option's ``dest`` and warns once."""

    def __init__(self, *args: Any, new_name: str = "", **kwargs: Any) -> None:
        self.new_name = new_name
        super().__init__(*args, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        sys.stderr.write(f"spotshift: warning: {option_string} is deprecated; use {self.new_name}\n")
        setattr(namespace, self.dest, values)


def deprecated_alias(parser: argparse.ArgumentParser, old: str, new: str, **kwargs: Any) -> None:
    """Accept ``old`` (hidden from ``--help``) as a deprecated spelling of the already added ``new``.

    One name per concept on the command line; a renamed option keeps working for scripts, with a
    warning on stderr. ``kwargs`` are the conversion options of ``new`` (``type``, ``metavar``...).
    """
    dest = next(a.dest for a in parser._actions if new in a.option_strings)
    parser.add_argument(
        old, dest=dest, action=_DeprecatedOption, new_name=new, help=argparse.SUPPRESS, **kwargs
    )


class OneLineParser(argparse.ArgumentParser):
    """argparse with the house rule for bad input: one line on stderr and exit 2, not a usage block.

    Sub-command parsers inherit the class, so every ``spotshift ...`` usage error is one line that
    names the command and points at its ``--help``.
    """

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")
        sys.exit(2)
