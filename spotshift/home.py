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
from pathlib import Path


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


def stores_base_url() -> str:
    """Where the region stores live: ``SPOTSHIFT_STORES_URL`` (``s3://bucket/prefix``,
    ``gs://bucket/prefix`` or ``file:///dir``), else the local ``$SPOTSHIFT_HOME/stores``."""
    env = os.environ.get("SPOTSHIFT_STORES_URL", "").strip()
    return env.rstrip("/") if env else stores_root().as_uri()


def region_store_url(location: str) -> str:
    """The object store URL of a ``provider/region`` location: ``<stores base>/<provider>/<region>``.

    Every part of spotshift (dataset replicas, checkpoints, trainers, event notices) finds a
    region's store through this one function.
    """
    provider, _, region = location.partition("/")
    if not provider or not region or "/" in region:
        raise ValueError(f"location {location!r} is not of the form provider/region")
    return f"{stores_base_url()}/{provider}/{region}"


def location_of_store(url: str) -> str | None:
    """``provider/region`` of a region store URL (inverse of :func:`region_store_url`), else None."""
    base = stores_base_url()
    if base.startswith("file://") and url.startswith("file://"):
        from urllib.parse import unquote, urlparse

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
    from spotshift.instance import write_instance_config

    home = spotshift_home()
    _, _, said = write_instance_config(
        dagster_home(), postgres_url=postgres_url, force=force, max_concurrent_runs=max_concurrent_runs
    )
    if notes is not None:
        notes.extend(said)
    for d in (stores_root(), cache_dir(), run_dir()):
        d.mkdir(parents=True, exist_ok=True)
    return home
