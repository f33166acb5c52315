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
import hashlib
import pickle
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from spotshift.atomic import atomic_write_bytes, atomic_write_text
from spotshift.errors import ConfigError
from spotshift.home import cache_dir, config_path

#: config path -> (content digest, pickled parse): one parse per content, shared by every reader
_PARSED: dict[str, tuple[str, bytes]] = {}
_PARSED_LOCK = threading.Lock()
_PLAIN = (str, int, float, bool, type(None))


def load(path: Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """The whole declarations file as ``{section: [entry, ...]}`` (empty when the file is absent)."""
    return load_keyed(path)[1]


def content_digest(path: Path | None = None) -> str:
    """Digest of the declarations file's bytes (``""`` when absent): equal digests, equal declarations."""
    try:
        return _digest((path or config_path()).read_bytes())
    except FileNotFoundError:
        return ""


def load_keyed(path: Path | None = None) -> tuple[str, dict[str, list[dict[str, Any]]]]:
    """(content digest, :func:`load`'s result) of one read of the file.

    Thousands of declarations are not re-parsed from YAML on every read: the parse of each content
    is kept, pickled, in memory and in ``$SPOTSHIFT_HOME/cache/declarations/`` (written temp +
    rename, keyed by the digest of the file's bytes, so an edit by any process or by hand is seen
    at once). Every call returns fresh objects the caller may mutate.
    """
    p = path or config_path()
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return "", {}
    digest = _digest(raw)
    blob = _cached_parse(p, digest)
    if blob is not None:
        return digest, pickle.loads(blob)
    data = _parse(p, raw)
    _remember(p, digest, data)
    return digest, data


def _digest(raw: bytes) -> str:
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def _cache_file(p: Path) -> Path:
    return cache_dir() / "declarations" / f"{_digest(str(p).encode())}.pickle"


def _cached_parse(p: Path, digest: str) -> bytes | None:
    """The pickled parse of content ``digest`` of ``p`` (memory, then disk), or None."""
    with _PARSED_LOCK:
        hit = _PARSED.get(str(p))
    if hit is not None and hit[0] == digest:
        return hit[1]
    try:
        stored = _cache_file(p).read_bytes()
    except OSError:
        return None
    head, _, blob = stored.partition(b"\n")
    if head.decode("ascii", "replace") != digest:
        return None
    with _PARSED_LOCK:
        _PARSED[str(p)] = (digest, blob)
    return blob


def _remember(p: Path, digest: str, data: dict[str, list[dict[str, Any]]]) -> None:
    """Keep the parse of content ``digest`` (memory and disk; a cache that cannot be written is skipped)."""
    blob = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
    with _PARSED_LOCK:
        _PARSED[str(p)] = (digest, blob)
    with contextlib.suppress(OSError):
        atomic_write_bytes(_cache_file(p), digest.encode("ascii") + b"\n" + blob, fsync=False)


def _plain(value: Any) -> bool:
    """Whether ``value`` is made of YAML-round-trippable plain values (str, numbers, bool, None, lists, dicts)."""
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _parse(p: Path, raw: bytes) -> dict[str, list[dict[str, Any]]]:
    """Parse and check the declarations file's bytes."""
    import yaml

    try:
        # libyaml when available: thousands of declared jobs load in a fraction of the time
        data = yaml.load(raw.decode("utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}{where}: not valid YAML") from None
    _check(p, data)
    return data


def _check(p: Path, data: Any) -> None:
    """:class:`ConfigError` naming ``p`` unless ``data`` maps sections to lists of named entries."""
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ConfigError(f"{p}: expected a mapping of section name to a list of entries")
    for section, entries in data.items():
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or not isinstance(e.get("name"), str) or not e["name"]:
                raise ConfigError(f"{p}: {section}[{i}] has no string 'name'")


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
        text = yaml.dump(data, Dumper=dumper, sort_keys=False, default_flow_style=False)
        if _plain(data):  # what was written parses back to ``data``: the next read needs no parse
            _check(p, data)
            _remember(p, _digest(text.encode("utf-8")), data)
        atomic_write_text(p, text)


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
