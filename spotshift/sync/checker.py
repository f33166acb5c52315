"""``verify``: check every chunk of a store's latest snapshots, and repair from another store or
the original directory (the checker). Missing or corrupt chunks and a missing or tampered
manifest are rewritten from the repair source and re-checked."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spotshift.errors import InputError, IntegrityError, NotFoundError
from spotshift.sync.chunking import ChunkParams, digest_function
from spotshift.sync.delta import LOCK_WAIT_S, as_store, bytes_in_flight, io_workers
from spotshift.sync.fingerprint import fingerprint, local_path
from spotshift.sync.locks import store_lock
from spotshift.sync.manifest import Manifest
from spotshift.sync.packs import Location, chunk_state, read_chunk
from spotshift.sync.refs import Ref, check_dataset_name, list_datasets, load_manifest, manifest_key, read_ref
from spotshift.sync.store import ChunkStore, LocalChunkStore, chunk_key
from spotshift.sync.store_url import open_store
from spotshift.sync.transfer import BoundedPool


@dataclass
class DatasetReport:
    """What verify found for one dataset's latest snapshot in one store."""

    dataset: str
    root: str = ""
    chunks_checked: int = 0
    bytes_checked: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    manifest_error: str | None = None
    manifest_repaired: bool = False

    @property
    def ok(self) -> bool:
        bad = set(self.missing) | set(self.corrupt)
        return (self.manifest_error is None or self.manifest_repaired) and bad <= set(self.repaired)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "root": self.root,
            "ok": self.ok,
            "chunks_checked": self.chunks_checked,
            "bytes_checked": self.bytes_checked,
            "missing": self.missing,
            "corrupt": self.corrupt,
            "repaired": self.repaired,
            "manifest_error": self.manifest_error,
            "manifest_repaired": self.manifest_repaired,
        }


@dataclass
class VerifyReport:
    store: str
    datasets: list[DatasetReport]
    seconds: float = 0.0
    full: bool = True
    #: temp files killed writers left in the store (paths), their bytes, and how many a repair removed
    leftover_temp_files: list[str] = field(default_factory=list)
    leftover_temp_bytes: int = 0
    leftovers_removed: int = 0

    @property
    def ok(self) -> bool:
        """Every snapshot is intact (leftover temp files cost space, not integrity)."""
        return all(d.ok for d in self.datasets)

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "ok": self.ok,
            "full": self.full,
            "seconds": self.seconds,
            "datasets": [d.to_dict() for d in self.datasets],
            "leftover_temp_files": self.leftover_temp_files,
            "leftover_temp_bytes": self.leftover_temp_bytes,
            "leftovers_removed": self.leftovers_removed,
        }


def _hex_fn(params: ChunkParams) -> Any:
    fn = digest_function(params.digest)
    return lambda data: fn(data).hex()


class _RepairSource:
    """Where good copies of chunks come from: another store, or the original directory re-chunked."""

    def __init__(self, spec: ChunkStore | str | os.PathLike[str]):
        self.store: ChunkStore | None = None
        self.dir: Path | None = None
        if isinstance(spec, ChunkStore):
            self.store = spec
        elif isinstance(spec, str) and "://" in spec and not spec.startswith("file://"):
            self.store = open_store(spec)
        else:
            p = Path(local_path(spec)).expanduser()
            if not p.is_dir():
                raise InputError(f"{p}: repair source is not a directory")
            # a directory holding a store (refs/ and chunks/) is a store, anything else is a source tree
            holds = (p / "chunks").is_dir() or (p / "packs").is_dir()
            self.store = LocalChunkStore(p) if holds and (p / "refs").is_dir() else None
            self.dir = None if self.store else p.resolve()
        self._index: dict[str, dict[bytes, tuple[str, int, int]]] = {}
        self._fps: dict[str, Manifest] = {}
        self._locations: dict[str, dict[bytes, Location]] = {}

    def describe(self) -> str:
        return self.store.url if self.store else str(self.dir)

    def _tree(self, params: ChunkParams) -> tuple[Manifest, dict[bytes, tuple[str, int, int]]]:
        assert self.dir is not None
        if params.key not in self._index:
            m = fingerprint(self.dir, params).manifest
            idx: dict[bytes, tuple[str, int, int]] = {}
            for e in m.files():
                for off, length, dig in e.chunks():
                    idx.setdefault(dig, (str(self.dir / e.path), off, length))
            self._index[params.key], self._fps[params.key] = idx, m
        return self._fps[params.key], self._index[params.key]

    def _store_locations(self, root: str) -> dict[bytes, Location]:
        """The pack index of snapshot ``root`` in the source store (empty when it has none)."""
        assert self.store is not None
        if root not in self._locations:
            try:
                self._locations[root] = load_manifest(self.store, root)[0].locations
            except (NotFoundError, IntegrityError):
                self._locations[root] = {}
        return self._locations[root]

    def chunk(self, hex_: str, length: int, params: ChunkParams, root: str) -> bytes | None:
        """A good copy of the chunk (checked against its digest), or None."""
        hexfn = _hex_fn(params)
        if self.store is not None:
            dig = bytes.fromhex(hex_)
            hfn = digest_function(params.digest)
            try:
                return read_chunk(self.store, dig, length, hfn, self._store_locations(root).get(dig))
            except (NotFoundError, IntegrityError):
                return None
        _, idx = self._tree(params)
        hit = idx.get(bytes.fromhex(hex_))
        if hit is None:
            return None
        with open(hit[0], "rb") as f:
            f.seek(hit[1])
            data = f.read(hit[2])
        return data if hexfn(data) == hex_ else None

    def manifest(self, root: str, params: ChunkParams | None) -> bytes | None:
        if self.store is not None:
            try:
                return load_manifest(self.store, root)[1]
            except (NotFoundError, IntegrityError):
                return None
        if params is None:
            return None
        m, _ = self._tree(params)
        return m.to_parquet_bytes() if m.root == root else None


def verify(
    store: ChunkStore | str,
    dataset: str | None = None,
    *,
    repair_from: ChunkStore | str | os.PathLike[str] | None = None,
    full: bool = True,
    workers: int | None = None,
    budget_bytes: int | None = None,
    lock_wait_s: float = LOCK_WAIT_S,
) -> VerifyReport:
    """Check every chunk of each dataset's latest snapshot in ``store`` (or of ``dataset`` only).

    ``full`` reads every chunk and checks its digest; otherwise only presence and size are checked.
    With ``repair_from`` (another store, or the original directory), missing or corrupt chunks and
    a missing or tampered manifest are rewritten from there, and re-checked. Temp files that killed
    writers left in the store are reported (and removed by a repair).
    """
    t0 = time.perf_counter()
    store = as_store(store)
    workers = io_workers(workers, store)
    names = [check_dataset_name(dataset)] if dataset else list_datasets(store)
    if dataset is None and not names:
        raise NotFoundError(f"{store.url} holds no dataset (no refs/<dataset>/latest)")
    source = _RepairSource(repair_from) if repair_from is not None else None
    with contextlib.ExitStack() as stack:
        if source is not None:  # a repair writes chunks: hold the store against a prune, like a push
            stack.enter_context(store_lock(store, "shared", "sync verify --repair", wait_s=lock_wait_s))
        return _verify(store, names, source, full, workers, budget_bytes, t0)


def _verify(
    store: ChunkStore,
    names: list[str],
    source: _RepairSource | None,
    full: bool,
    workers: int | None,
    budget_bytes: int | None,
    t0: float,
) -> VerifyReport:
    report = VerifyReport(store.url, [], full=full)
    leftovers = store.stale_temp_files()
    report.leftover_temp_files = [str(t.path) for t in leftovers]
    report.leftover_temp_bytes = sum(t.bytes for t in leftovers)
    if source is not None and leftovers:
        report.leftovers_removed = store.remove_stale_temp_files()
    checked: dict[str, str] = {}  # chunk hex -> "ok" | "missing" | "corrupt" (shared across datasets)
    for name in names:
        rep = DatasetReport(name)
        report.datasets.append(rep)
        try:
            ref = read_ref(store, name)
        except IntegrityError as exc:
            rep.manifest_error = str(exc)
            continue
        if ref is None:
            rep.manifest_error = f"dataset {name!r} has no snapshot in {store.url}"
            continue
        rep.root = ref.root
        manifest = _verified_manifest(store, ref, rep, source)
        if manifest is None:
            continue
        _check_chunks(store, manifest, rep, checked, full, workers, budget_bytes)
        if source is not None and (rep.missing or rep.corrupt):
            _repair_chunks(store, manifest, rep, source, checked)
    report.seconds = time.perf_counter() - t0
    return report


def _verified_manifest(
    store: ChunkStore, ref: Ref, rep: DatasetReport, source: _RepairSource | None
) -> Manifest | None:
    try:
        return load_manifest(store, ref.root)[0]
    except (NotFoundError, IntegrityError) as exc:
        rep.manifest_error = str(exc)
    if source is None:
        return None
    raw = source.manifest(ref.root, ref.chunk_params)
    if raw is None:
        return None
    store.put_bytes(manifest_key(ref.root), raw)  # replace the bad copy
    rep.manifest_repaired = True
    return load_manifest(store, ref.root)[0]


def _check_chunks(
    store: ChunkStore,
    manifest: Manifest,
    rep: DatasetReport,
    checked: dict[str, str],
    full: bool,
    workers: int | None,
    budget_bytes: int | None,
) -> None:
    hfn = digest_function(manifest.params.digest) if full else None
    pack_sizes: dict[str, int | None] = {}  # presence checks: one size lookup per pack

    def check(hex_: str, length: int) -> None:
        dig = bytes.fromhex(hex_)
        state = chunk_state(store, dig, length, hfn, manifest.locations.get(dig), pack_sizes)  # type: ignore[arg-type]
        with pool.lock:
            checked[hex_] = state

    todo = [(d.hex(), n) for d, n in manifest.unique_chunks().items()]
    with BoundedPool(workers, bytes_in_flight(manifest.params, budget_bytes)) as pool:
        for hex_, length in todo:
            if hex_ not in checked:
                pool.submit(length if full else 1, check, hex_, length)
    for hex_, length in todo:
        rep.chunks_checked += 1
        rep.bytes_checked += length
        state = checked[hex_]
        if state == "missing":
            rep.missing.append(hex_)
        elif state == "corrupt":
            rep.corrupt.append(hex_)


def _repair_chunks(
    store: ChunkStore, manifest: Manifest, rep: DatasetReport, source: _RepairSource, checked: dict[str, str]
) -> None:
    hfn = digest_function(manifest.params.digest)
    lengths = manifest.unique_chunks()
    for hex_ in [*rep.missing, *rep.corrupt]:
        if checked.get(hex_) == "ok":  # repaired for an earlier dataset of this run
            rep.repaired.append(hex_)
            continue
        dig = bytes.fromhex(hex_)
        data = source.chunk(hex_, lengths[dig], manifest.params, manifest.root)
        if data is None:
            continue
        # a good copy as its own object: readers fall back to it when the packed copy is damaged
        # (packs are never rewritten in place)
        store.put_bytes(chunk_key(hex_), data)
        ok = chunk_state(store, dig, len(data), hfn, manifest.locations.get(dig)) == "ok"
        if ok:
            checked[hex_] = "ok"
            rep.repaired.append(hex_)
