"""Declared entities (datasets, training jobs) in one YAML file, edited safely by several processes.

The file (:func:`spotshift.home.config_path`) has one list per section::

    datasets:
      - {name: corpus, source: file:///data/corpus, avg_chunk: 8388608}
    jobs:
      - {name: llm-ft, dataset: corpus, ...}

Each domain validates its own entries; this module only loads, locks and writes atomically.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from spotshift.atomic import atomic_write_text
from spotshift.errors import ConfigError
from spotshift.home import config_path


def load(path: Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """The whole declarations file as ``{section: [entry, ...]}`` (empty when the file is absent)."""
    import yaml

    p = path or config_path()
    if not p.exists():
        return {}
    try:
        # libyaml when available: thousands of declared jobs load in a fraction of the time
        data = yaml.load(p.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}{where}: not valid YAML") from None
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ConfigError(f"{p}: expected a mapping of section name to a list of entries")
    for section, entries in data.items():
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or not isinstance(e.get("name"), str) or not e["name"]:
                raise ConfigError(f"{p}: {section}[{i}] has no string 'name'")
    return data


def entries(section: str, path: Path | None = None) -> list[dict[str, Any]]:
    """Entries of one section, in file order."""
    return list(load(path).get(section, []))


def get(section: str, name: str, path: Path | None = None) -> dict[str, Any]:
    """One entry by name; :class:`ConfigError` naming the file when it is not declared."""
    for e in entries(section, path):
        if e["name"] == name:
            return e
    raise ConfigError(
        f"{section[:-1] if section.endswith('s') else section} {name!r} is not declared in {path or config_path()}"
    )


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<path>.lock`` (created with its directory) for a read-modify-write of ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def update(mutate: Callable[[dict[str, list[dict[str, Any]]]], None], path: Path | None = None) -> None:
    """Apply ``mutate`` to the loaded file under an exclusive lock and write it back atomically."""
    import yaml

    p = path or config_path()
    with locked(p):
        data = load(p)
        mutate(data)
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        atomic_write_text(p, yaml.dump(data, Dumper=dumper, sort_keys=False, default_flow_style=False))


def upsert(section: str, entry: dict[str, Any], *, replace: bool = False, path: Path | None = None) -> None:
    """Add ``entry`` to ``section``; an existing name is an error unless ``replace``."""

    def mutate(data: dict[str, list[dict[str, Any]]]) -> None:
        items = data.setdefault(section, [])
        for i, e in enumerate(items):
            if e["name"] == entry["name"]:
                if not replace:
                    raise ConfigError(f"{section}: {entry['name']!r} is already declared (use --replace)")
                items[i] = entry
                return
        items.append(entry)

    update(mutate, path)


def remove(section: str, name: str, *, path: Path | None = None) -> None:
    """Remove the entry ``name`` from ``section`` (atomically); :class:`ConfigError` when not declared."""

    def mutate(data: dict[str, list[dict[str, Any]]]) -> None:
        items = data.get(section, [])
        kept = [e for e in items if e["name"] != name]
        if len(kept) == len(items):
            get(section, name, path)  # raises the "is not declared" error
        data[section] = kept

    update(mutate, path)
