"""Where spotshift keeps its state: everything lives under ``SPOTSHIFT_HOME`` (default ``./.spotshift``).

Layout (DESIGN §1, "state lives in three places only"):

``dagster/``            the Dagster instance (``DAGSTER_HOME``; SQLite storage by default)
``warehouse.duckdb``    the DuckDB warehouse (raw facts, gpu_quotes, dbt models)
``warehouse.duckdb.facts/``  the fact lake: immutable Parquet batches every fact writer lands without
                        waiting on the warehouse lock; the warehouse (the analytics copy) ingests them
                        exactly once (:mod:`spotshift.factlake`, :func:`spotshift.warehouse.record_facts`)
``stores/<provider>/<region>/``  the local object stores, one per simulated region
``spotshift.yaml``      declared datasets and training jobs (see :mod:`spotshift.registry`)
``cache/``              rebuildable caches (files cache of the fingerprinter, ...)
``run/``                local process state (trainer pid files, clock)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from spotshift.cloud_errors import redact_url
from spotshift.errors import ConfigError
from spotshift.instance import write_instance_config
from spotshift.locations import split_location


def spotshift_home() -> Path:
    """The absolute state directory, from ``SPOTSHIFT_HOME`` or ``./.spotshift``."""
    return Path(os.environ.get("SPOTSHIFT_HOME") or ".spotshift").expanduser().resolve()


def dagster_home() -> Path:
    """The Dagster instance directory: ``DAGSTER_HOME`` when set, else ``$SPOTSHIFT_HOME/dagster``."""
    env = os.environ.get("DAGSTER_HOME")
    return Path(env).expanduser().resolve() if env else spotshift_home() / "dagster"


def warehouse_path() -> Path:
    """The DuckDB warehouse file: ``SPOTSHIFT_WAREHOUSE`` when set, else ``$SPOTSHIFT_HOME/warehouse.duckdb``."""
    env = os.environ.get("SPOTSHIFT_WAREHOUSE")
    return Path(env).expanduser().resolve() if env else spotshift_home() / "warehouse.duckdb"


def stores_root() -> Path:
    """Root of the local object stores (one sub-directory per provider/region)."""
    return spotshift_home() / "stores"


#: the schemes SPOTSHIFT_STORES_URL may name
STORES_SCHEMES = ("file", "s3", "gs")


@dataclass(frozen=True)
class StoresBase:
    """Where the region stores live, parsed once from ``SPOTSHIFT_STORES_URL``.

    ``scheme`` is ``file``, ``s3`` or ``gs``; ``bucket`` is empty for ``file``; ``prefix`` is the key
    prefix inside the bucket (``""``: the bucket root), or the absolute directory for ``file``.
    """

    scheme: str
    bucket: str
    prefix: str

    @property
    def url(self) -> str:
        """``file:///dir``, ``s3://bucket[/prefix]`` or ``gs://bucket[/prefix]`` (no trailing slash)."""
        if self.scheme == "file":
            return Path(self.prefix).as_uri()
        return f"{self.scheme}://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")

    def region_prefix(self, location: str) -> str:
        """The key prefix (or, for ``file``, the directory) of ``location``'s store."""
        return region_path(location, self.prefix)


def region_path(location: str, base: str = "") -> str:
    """``<base>/<provider>/<region>``: the one layout of region stores under any base (a bucket
    prefix, a directory or a URL); ConfigError when ``location`` is not ``provider/region``."""
    provider, region = split_location(location)
    base = base.rstrip("/")
    return f"{base}/{provider}/{region}" if base else f"{provider}/{region}"


def stores_base() -> StoresBase:
    """The parsed ``SPOTSHIFT_STORES_URL`` (``s3://bucket/prefix``, ``gs://bucket/prefix`` or
    ``file:///dir``); the local ``$SPOTSHIFT_HOME/stores`` when unset. ConfigError naming the
    variable for another scheme, a missing bucket or a relative file URL."""
    url = os.environ.get("SPOTSHIFT_STORES_URL", "").strip()
    if not url:
        return StoresBase("file", "", str(stores_root()))
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    if scheme == "file" and parsed.netloc in ("", "localhost") and parsed.path.startswith("/"):
        return StoresBase("file", "", unquote(parsed.path).rstrip("/") or "/")
    if scheme in ("s3", "gs") and parsed.netloc and "@" not in parsed.netloc:
        return StoresBase(scheme, parsed.netloc, parsed.path.strip("/"))
    raise ConfigError(
        f"SPOTSHIFT_STORES_URL={redact_url(url)!r}: use s3://bucket/prefix, gs://bucket/prefix or file:///dir"
    )


def stores_base_url() -> str:
    """Where the region stores live, as a URL (see :func:`stores_base`)."""
    return stores_base().url


def region_store_url(location: str) -> str:
    """The object store URL of a ``provider/region`` location: ``<stores base>/<provider>/<region>``.

    Every part of spotshift (dataset replicas, checkpoints, trainers, event notices, the Dagster
    stores resources) finds a region's store through this layout (:func:`region_path`).
    """
    return region_path(location, stores_base_url())


def location_of_store(url: str) -> str | None:
    """``provider/region`` of a region store URL (inverse of :func:`region_store_url`), else None."""
    base = stores_base_url()
    if base.startswith("file://") and url.startswith("file://"):
        try:
            rel = (
                Path(unquote(urlparse(url).path))
                .resolve()
                .relative_to(Path(unquote(urlparse(base).path)).resolve())
            )
        except ValueError:
            return None
        parts = rel.parts
    else:
        if not url.startswith(base + "/"):
            return None
        parts = tuple(url[len(base) + 1 :].strip("/").split("/"))
    return "/".join(parts) if len(parts) == 2 and all(parts) else None


def config_path() -> Path:
    """The declarations file (datasets, training jobs): ``SPOTSHIFT_CONFIG`` or ``$SPOTSHIFT_HOME/spotshift.yaml``."""
    env = os.environ.get("SPOTSHIFT_CONFIG")
    return Path(env).expanduser().resolve() if env else spotshift_home() / "spotshift.yaml"


def cache_dir() -> Path:
    """Rebuildable caches; safe to delete."""
    return spotshift_home() / "cache"


def run_dir() -> Path:
    """Local process state: pid files of trainers, the shared virtual clock."""
    return spotshift_home() / "run"


def shared_data_file(name: str) -> Path | None:
    """A file of ``../shared/data`` (the real third-party data that must not be copied into the repo).

    Looked up in ``SPOTSHIFT_SHARED_DATA`` when set (and only there, so pointing it at an empty
    directory simulates a fresh clone elsewhere), else ``<repo>/../shared/data`` and
    ``$PWD/../shared/data``; ``None`` when absent.
    """
    if os.environ.get("SPOTSHIFT_SHARED_DATA"):
        candidates = [Path(os.environ["SPOTSHIFT_SHARED_DATA"])]
    else:
        candidates = [
            Path(__file__).resolve().parents[2] / "shared" / "data",
            Path.cwd().parent / "shared" / "data",
        ]
    for c in candidates:
        p = c / name
        if p.is_file():
            return p
    return None


def init_home(
    *,
    postgres_url: str | None = None,
    force: bool = False,
    max_concurrent_runs: int = 4,
    notes: list[str] | None = None,
) -> Path:
    """Create the ``SPOTSHIFT_HOME`` layout and the Dagster instance config; returns the home path
    (``notes`` receives what the user should know, e.g. which variable must hold the password).

    PostgreSQL storage when ``postgres_url`` or ``SPOTSHIFT_DAGSTER_POSTGRES_URL`` asks for it
    (credentials as ``{env: ...}`` references, never inline), else SQLite; an existing
    ``dagster.yaml`` for another storage is a :class:`~spotshift.errors.ConfigError` unless
    ``force`` (see :mod:`spotshift.instance`).
    """
    home = spotshift_home()
    _, _, said = write_instance_config(
        dagster_home(), postgres_url=postgres_url, force=force, max_concurrent_runs=max_concurrent_runs
    )
    if notes is not None:
        notes.extend(said)
    for d in (stores_root(), cache_dir(), run_dir()):
        d.mkdir(parents=True, exist_ok=True)
    return home
