"""Datasets as declared entities (section ``datasets`` of the declarations file).

A declaration names the original data and how to chunk it::

    datasets:
      - name: corpus
        source: file:///data/corpus       # local directory (path or file:// URL) holding the files
        location: gcp/us-central1         # provider/region where the source lives (its home store)
        min_chunk: 1048576
        avg_chunk: 4194304
        max_chunk: 16777216
        engine: pyfastcdc-2020
        digest: blake3-128

Other parts of spotshift read ``registry.get("datasets", name)["source"]`` (e.g. the trainer
tokenizes the files there). The dataset's snapshots live in its home region's store
(``spotshift.home.region_store_url(location)``) and are replicated to other regions from there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from spotshift import registry
from spotshift.errors import ConfigError, SpotshiftError, build_record
from spotshift.jobs import load_jobs
from spotshift.pricing.regions import check_location
from spotshift.sync.archiver import push
from spotshift.sync.checker import verify
from spotshift.sync.chunking import ChunkParams
from spotshift.sync.fingerprint import fingerprint, local_path
from spotshift.sync.refs import check_dataset_name, read_ref
from spotshift.sync.replicator import replicate

SECTION = "datasets"
DEFAULT_LOCATION = "gcp/us-central1"
_DEFAULT_PARAMS = ChunkParams()


@dataclass(frozen=True)
class Dataset:
    """A declared dataset. Names are partition keys: letters, digits, '.', '_', '-'."""

    name: str
    source: str
    location: str = DEFAULT_LOCATION
    min_chunk: int = _DEFAULT_PARAMS.min_size
    avg_chunk: int = _DEFAULT_PARAMS.avg_size
    max_chunk: int = _DEFAULT_PARAMS.max_size
    engine: str = _DEFAULT_PARAMS.engine
    digest: str = _DEFAULT_PARAMS.digest
    description: str = ""

    def __post_init__(self) -> None:
        check_dataset_name(self.name)
        if not self.source:
            raise ConfigError(f"dataset {self.name!r}: source is empty")
        try:
            local_path(self.source)
        except Exception:
            raise ConfigError(
                f"dataset {self.name!r}: source {self.source!r} must be a local directory or file:/// URL"
            ) from None

        try:
            check_location(self.location)
        except ConfigError as exc:
            raise ConfigError(f"dataset {self.name!r}: {exc}") from None
        try:
            _ = self.params
        except ConfigError as exc:
            raise ConfigError(f"dataset {self.name!r}: {exc}") from None

    @property
    def params(self) -> ChunkParams:
        """Chunking parameters of this dataset's snapshots."""
        return ChunkParams(self.min_chunk, self.avg_chunk, self.max_chunk, self.engine, self.digest)

    @property
    def source_path(self) -> Path:
        """The local directory holding the original files."""
        return Path(local_path(self.source)).expanduser()

    def to_dict(self) -> dict[str, Any]:
        """The declaration as written to the YAML file."""
        d = asdict(self)
        if not d["description"]:
            d.pop("description")
        return d

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Dataset:
        """Build from a YAML entry; unknown or mistyped keys raise :class:`ConfigError` naming the dataset."""
        name = raw.get("name", "?")
        for key in ("min_chunk", "avg_chunk", "max_chunk"):
            if key in raw and (not isinstance(raw[key], int) or isinstance(raw[key], bool)):
                raise ConfigError(f"dataset {name!r}: {key} must be an integer number of bytes")
        return build_record(cls, raw, f"dataset {name!r}")

    @classmethod
    def declare(
        cls,
        name: str,
        source: str,
        *,
        location: str = DEFAULT_LOCATION,
        params: ChunkParams | None = None,
        description: str = "",
    ) -> Dataset:
        """A dataset from a source and chunking parameters (a relative source path is made absolute)."""
        p = params or ChunkParams()
        if "://" not in source:
            source = str(Path(source).expanduser().resolve())
        return cls(
            name, source, location, p.min_size, p.avg_size, p.max_size, p.engine, p.digest, description
        )


def load_datasets() -> list[Dataset]:
    """Every declared dataset, validated."""
    return [Dataset.from_dict(e) for e in registry.entries(SECTION)]


def get_dataset(name: str) -> Dataset:
    """One declared dataset; :class:`ConfigError` when it is not declared."""
    return Dataset.from_dict(registry.get(SECTION, name))


def add_dataset(dataset: Dataset, *, replace: bool = False) -> None:
    """Declare ``dataset`` (atomically; an existing name is an error unless ``replace``)."""
    registry.upsert(SECTION, dataset.to_dict(), replace=replace)


def remove_dataset(name: str) -> None:
    """Undeclare dataset ``name``. Refused (:class:`ConfigError`) while a declared job trains on it;
    its snapshots in the stores are kept (``spotshift sync prune`` reclaims them)."""
    get_dataset(name)  # not declared: the registry's one-line error
    users = sorted(j.name for j in load_jobs() if j.dataset == name)
    if users:
        raise ConfigError(
            f"dataset {name!r} is used by job(s) {', '.join(users)}: remove them first "
            f"(`spotshift jobs remove {users[0]}`)"
        )
    registry.remove(SECTION, name)


# ---- operations the Dagster assets (and the migration flow) call -------------------------------------
class ReplicaCheck:
    """Whether a region's replica of a dataset is the expected snapshot, complete."""

    def __init__(self, dataset: str, store: str, expected_root: str):
        self.dataset = dataset
        self.store = store
        self.expected_root = expected_root
        self.replica_root: str | None = None
        self.chunks_checked = 0
        self.missing: list[str] = []
        self.problem: str | None = None

    @property
    def passed(self) -> bool:
        return self.problem is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "store": self.store,
            "passed": self.passed,
            "expected_root": self.expected_root,
            "replica_root": self.replica_root,
            "chunks_checked": self.chunks_checked,
            "missing_or_wrong_size": self.missing[:20],
            "problem": self.problem,
        }


def snapshot_dataset(dataset: Dataset, home_store: Any, *, workers: int | None = None) -> tuple[Any, Any]:
    """Fingerprint the dataset's source and commit that snapshot to its home region's store.

    Returns ``(Fingerprint, TransferStats)``; the snapshot's root is ``stats.root``.
    """
    fp = fingerprint(dataset.source_path, dataset.params, prefetch_parquet=True)
    stats = push(
        fp,
        home_store,
        dataset.name,
        source_dir=dataset.source_path,
        workers=workers,
        src_location=dataset.location,
        dst_location=dataset.location,
    )
    return fp, stats


def replicate_dataset(
    dataset: Dataset,
    root: str,
    home_store: Any,
    target_store: Any,
    target_location: str,
    *,
    workers: int | None = None,
    check_existing: bool = False,
) -> Any:
    """Copy snapshot ``root`` of the dataset from its home store to ``target_location``'s store (delta only).

    ``check_existing`` re-checks every chunk of an already-current replica (see :func:`spotshift.sync.replicator.replicate`).
    """
    return replicate(
        home_store,
        target_store,
        dataset.name,
        root=root,
        workers=workers,
        src_location=dataset.location,
        dst_location=target_location,
        check_existing=check_existing,
    )


def check_replica(store: Any, dataset: str, expected_root: str, *, full: bool = False) -> ReplicaCheck:
    """Does ``store`` hold snapshot ``expected_root`` of ``dataset`` as its latest, with every chunk present?

    ``full`` also reads every chunk and checks its digest (otherwise presence and size).
    """
    result = ReplicaCheck(dataset, store.url, expected_root)
    try:
        ref = read_ref(store, dataset)
    except SpotshiftError as exc:
        result.problem = str(exc)
        return result
    if ref is None:
        result.problem = f"{store.url} has no snapshot of {dataset!r}"
        return result
    result.replica_root = ref.root
    if ref.root != expected_root:
        result.problem = f"replica root {ref.root} differs from the fingerprint root {expected_root}"
        return result
    report = verify(store, dataset, full=full).datasets[0]
    result.chunks_checked = report.chunks_checked
    result.missing = [*report.missing, *report.corrupt]
    if report.manifest_error:
        result.problem = report.manifest_error
    elif result.missing:
        result.problem = (
            f"{len(result.missing)} of {report.chunks_checked} chunks missing or damaged in {store.url}"
        )
    return result
