"""Snapshots inside a store: immutable manifests named by root, and per-dataset pointers written last.

``manifests/<root>.parquet`` is written once (``if_absent``) and only after every chunk it names is
in the store; ``snapshots/<dataset>/<committed>-<root>.json`` records the commit in the dataset's
history (write-once; what ``spotshift sync snapshots`` lists and ``sync prune --keep N`` counts);
``refs/<dataset>/latest`` (a small JSON document) is replaced last. So a reader that follows a
pointer always finds a complete snapshot, whatever moment a writer was killed at.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from spotshift.errors import ConfigError, IntegrityError, NotFoundError
from spotshift.sync.chunking import ChunkParams
from spotshift.sync.manifest import Manifest
from spotshift.sync.store import ChunkStore

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
REFS_PREFIX = "refs/"
MANIFESTS_PREFIX = "manifests/"
SNAPSHOTS_PREFIX = "snapshots/"


def check_dataset_name(name: str) -> str:
    """``name`` if it is usable as a dataset name (letters, digits, '.', '_', '-'); else :class:`ConfigError`."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(
            f"dataset name {name!r} must start with a letter or digit and use only letters, digits, '.', '_', '-'"
        )
    return name


def manifest_key(root: str) -> str:
    return f"{MANIFESTS_PREFIX}{root}.parquet"


def ref_key(dataset: str) -> str:
    return f"{REFS_PREFIX}{check_dataset_name(dataset)}/latest"


@dataclass
class Ref:
    """The ``latest`` pointer of one dataset in one store."""

    dataset: str
    root: str
    files: int
    bytes: int
    chunks: int
    params: dict[str, Any]
    # microseconds: the history orders commits by it (several pushes can land in one second)
    committed_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="microseconds"))

    @classmethod
    def for_manifest(cls, dataset: str, manifest: Manifest) -> Ref:
        return cls(
            dataset,
            manifest.root,
            manifest.file_count,
            manifest.total_bytes,
            manifest.chunk_count,
            manifest.params.to_dict(),
        )

    @property
    def chunk_params(self) -> ChunkParams:
        return ChunkParams(**self.params)

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self), sort_keys=True) + "\n").encode()


def read_ref(store: ChunkStore, dataset: str) -> Ref | None:
    """The dataset's pointer in ``store``, or None when the dataset has none there."""
    key = ref_key(dataset)
    try:
        raw = store.get_bytes(key)
    except NotFoundError:
        return None
    try:
        data = json.loads(raw)
        ref = Ref(**data)
        if not re.fullmatch(r"[0-9a-f]{32}", ref.root):
            raise ValueError("root is not 32 hex digits")
        ChunkParams(**ref.params)
    except Exception as exc:
        raise IntegrityError(f"pointer {key} in {store.url} is corrupt ({exc})") from None
    return ref


def write_ref(store: ChunkStore, ref: Ref) -> int:
    """Replace the dataset's pointer (the last write of a commit); returns bytes written."""
    data = ref.to_bytes()
    store.put_bytes(ref_key(ref.dataset), data)
    return len(data)


def snapshot_key(ref: Ref) -> str:
    """Key of the history record of the commit ``ref`` describes (sorts by commit time per dataset)."""
    stamp = datetime.fromisoformat(ref.committed_at).astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{SNAPSHOTS_PREFIX}{check_dataset_name(ref.dataset)}/{stamp}-{ref.root}.json"


def record_snapshot(store: ChunkStore, ref: Ref) -> int:
    """Write the history record of a commit (once); returns bytes written (0 when it was there)."""
    data = ref.to_bytes()
    return len(data) if store.put_bytes(snapshot_key(ref), data, if_absent=True) else 0


def read_snapshots(store: ChunkStore) -> list[tuple[str, Ref]]:
    """Every snapshot history record of ``store`` as ``(key, Ref)``, oldest first per dataset.

    A record that does not parse is :class:`IntegrityError` naming it: a pruner must not guess.
    """
    out = []
    for key in store.list_keys(SNAPSHOTS_PREFIX):
        try:
            ref = Ref(**json.loads(store.get_bytes(key)))
        except NotFoundError:  # deleted while we listed
            continue
        except Exception as exc:
            raise IntegrityError(f"snapshot record {key} in {store.url} is corrupt ({exc})") from None
        out.append((key, ref))
    return sorted(out, key=lambda kr: (kr[1].dataset, kr[0]))


def list_datasets(store: ChunkStore) -> list[str]:
    """Names of the datasets that have a ``latest`` pointer in ``store``, sorted."""
    names = set()
    for key in store.list_keys(REFS_PREFIX):
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == "latest":
            names.add(parts[1])
    return sorted(names)


def resolve_dataset(store: ChunkStore, dataset: str | None) -> tuple[str, Ref]:
    """The named dataset's pointer, or the only dataset's when ``dataset`` is None."""
    if dataset is None:
        names = list_datasets(store)
        if not names:
            raise NotFoundError(f"{store.url} holds no dataset (no refs/<dataset>/latest)")
        if len(names) > 1:
            raise ConfigError(f"{store.url} holds {len(names)} datasets ({', '.join(names)}); pass --dataset")
        dataset = names[0]
    ref = read_ref(store, dataset)
    if ref is None:
        raise NotFoundError(f"dataset {dataset!r} has no snapshot in {store.url}")
    return dataset, ref


def load_manifest(store: ChunkStore, root: str) -> tuple[Manifest, bytes]:
    """The verified manifest named ``root`` and its raw bytes.

    :class:`NotFoundError` when absent; :class:`IntegrityError` naming it when truncated or tampered.
    """
    key = manifest_key(root)
    try:
        raw = store.get_bytes(key)
    except NotFoundError:
        raise NotFoundError(f"manifest {key} not found in {store.url}") from None
    return Manifest.from_parquet_bytes(raw, name=f"{key} in {store.url}", expected_root=root), raw


def store_manifest(store: ChunkStore, manifest: Manifest, raw: bytes | None = None) -> int:
    """Write the manifest once (no-op when a manifest of that root exists); returns bytes written."""
    key = manifest_key(manifest.root)
    if store.exists(key):
        return 0
    data = raw if raw is not None else manifest.to_parquet_bytes()
    return len(data) if store.put_bytes(key, data, if_absent=True) else 0
