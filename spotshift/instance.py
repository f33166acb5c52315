"""The Dagster instance configuration ``spotshift home init`` writes: ``$DAGSTER_HOME/dagster.yaml``.

Two storages:

* **SQLite** (the embedded default): runs, events and schedules in files under ``DAGSTER_HOME``.
* **PostgreSQL** (production): ``spotshift home init --postgres URL`` or
  ``SPOTSHIFT_DAGSTER_POSTGRES_URL``. The file names the server, database and user; the password
  is never written — it is an ``{env: SPOTSHIFT_DAGSTER_POSTGRES_PASSWORD}`` reference that every
  Dagster process (webserver, daemon, run workers) resolves from its own environment.

Either way: telemetry off, the UI's first-visit dialog (``nux``) off, and the queued run
coordinator allowing one run per training job at a time (tag ``spotshift/job``).

An existing file is kept when it already describes the storage asked for. Asking for another
storage (or another PostgreSQL database) than the one a home was initialised with is a
:class:`~spotshift.errors.ConfigError` saying so, unless ``force`` rewrites the file; runs kept
in the old storage are not moved.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlparse

from spotshift.atomic import atomic_write_text
from spotshift.errors import ConfigError

PASSWORD_ENV = "SPOTSHIFT_DAGSTER_POSTGRES_PASSWORD"
URL_ENV = "SPOTSHIFT_DAGSTER_POSTGRES_URL"
#: dagster-postgres ships psycopg2; SQLAlchemy 2.1 would pick psycopg 3 for a bare postgresql URL
PG_SCHEME = "postgresql+psycopg2"
MARKER = "# Written by `spotshift home init`."


@dataclass(frozen=True)
class Storage:
    """Where an instance keeps its runs: ``sqlite``, or ``postgres`` on ``host:port/db`` as ``user``."""

    kind: str
    host: str = ""
    port: int = 5432
    db: str = ""
    user: str = ""
    params: tuple[tuple[str, str], ...] = ()
    has_password: bool = False

    def describe(self) -> str:
        if self.kind == "sqlite":
            return "SQLite (files under DAGSTER_HOME)"
        return f"PostgreSQL {self.user}@{self.host}:{self.port}/{self.db}"

    @property
    def target(self) -> tuple[str, str, int, str, str]:
        """What makes two storages the same place (not how the password is supplied)."""
        return (self.kind, self.host, self.port, self.db, self.user)


def postgres_storage(url: str) -> Storage:
    """Parse ``postgresql://user[:password]@host[:port]/db[?params]``; :class:`ConfigError` naming
    what is wrong (the password is never echoed)."""
    parsed = urlparse(url.strip())
    scheme = parsed.scheme.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise ConfigError("PostgreSQL URL must start with postgresql:// (postgresql://user@host:5432/db)")
    try:
        port = parsed.port or 5432
    except ValueError:
        raise ConfigError("PostgreSQL URL has a port that is not a number") from None
    db = unquote(parsed.path.lstrip("/"))
    if not parsed.hostname or not db or not parsed.username:
        raise ConfigError(
            "PostgreSQL URL needs a user, a host and a database: postgresql://user@host:5432/db"
        )
    return Storage(
        "postgres",
        parsed.hostname,
        port,
        db,
        unquote(parsed.username),
        tuple(parse_qsl(parsed.query)),
        has_password=parsed.password is not None,
    )


def render(storage: Storage, *, max_concurrent_runs: int = 4) -> str:
    """The dagster.yaml text for ``storage`` (no secret in it)."""
    lines = [
        f"{MARKER} Storage: {storage.describe()}.",
        "# The PostgreSQL password, when there is one, is read from the environment of every Dagster process.",
        "telemetry:",
        "  enabled: false",
        "nux:",
        "  enabled: false  # no first-visit dialog in the UI",
        "run_coordinator:",
        "  module: dagster._core.run_coordinator",
        "  class: QueuedRunCoordinator",
        "  config:",
        f"    max_concurrent_runs: {int(max_concurrent_runs)}",
        "    tag_concurrency_limits:",
        "      # at most one migration/recovery/rollback run per training job at a time",
        "      - key: spotshift/job",
        "        value:",
        "          applyLimitPerUniqueValue: true",
        "        limit: 1",
    ]
    if storage.kind == "postgres":
        q = json.dumps  # JSON strings are YAML strings: any host, database or user name is safe
        lines += [
            "storage:",
            "  postgres:",
            "    postgres_db:",
            f"      hostname: {q(storage.host)}",
            f"      port: {storage.port}",
            f"      db_name: {q(storage.db)}",
            f"      username: {q(storage.user)}",
        ]
        if storage.has_password or os.environ.get(PASSWORD_ENV):
            lines.append(f"      password: {{env: {PASSWORD_ENV}}}")
        lines.append(f"      scheme: {PG_SCHEME}")
        if storage.params:
            lines.append("      params:")
            lines += [f"        {q(k)}: {q(v)}" for k, v in storage.params]
    return "\n".join(lines) + "\n"


def read_storage(path: Path) -> tuple[Storage, list[str]]:
    """The storage an existing dagster.yaml describes, and problems with it (an inline password)."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    pg = ((doc.get("storage") or {}) if isinstance(doc, dict) else {}).get("postgres")
    if not pg:
        return Storage("sqlite"), []
    problems = []
    if "postgres_url" in pg:
        url = pg["postgres_url"]
        if isinstance(url, dict):  # {env: VAR}: the target is whatever VAR says
            return Storage("postgres", host=f"${{{url.get('env', '?')}}}"), []
        storage = postgres_storage(str(url))
        if storage.has_password:
            problems.append("it holds the PostgreSQL password inline")
        return storage, problems
    db: dict[str, Any] = pg.get("postgres_db") or {}
    password = db.get("password")
    if isinstance(password, str) and password:
        problems.append("it holds the PostgreSQL password inline")

    def text(v: Any) -> str:
        return f"${{{v.get('env', '?')}}}" if isinstance(v, dict) else str(v)

    return (
        Storage(
            "postgres",
            text(db.get("hostname", "")),
            int(db.get("port", 5432)) if not isinstance(db.get("port"), dict) else 5432,
            text(db.get("db_name", "")),
            text(db.get("username", "")),
            has_password=password is not None,
        ),
        problems,
    )


def wanted_storage(postgres_url: str | None = None) -> Storage | None:
    """The storage asked for: ``postgres_url``, else ``SPOTSHIFT_DAGSTER_POSTGRES_URL``; None when
    neither is given (keep what a home has, SQLite for a new one)."""
    url = postgres_url or os.environ.get(URL_ENV, "").strip()
    return postgres_storage(url) if url else None


def write_instance_config(
    dagster_home: Path,
    *,
    postgres_url: str | None = None,
    force: bool = False,
    max_concurrent_runs: int = 4,
) -> tuple[Storage, bool, list[str]]:
    """Write (or keep) ``dagster_home/dagster.yaml``; returns ``(storage, written, notes)``.

    :class:`ConfigError` (nothing written) when the file describes another storage than the one
    asked for, unless ``force``.
    """
    cfg = dagster_home / "dagster.yaml"
    wanted = wanted_storage(postgres_url)
    notes: list[str] = []
    if cfg.exists() and not force:
        current, problems = read_storage(cfg)
        source = "--postgres" if postgres_url else URL_ENV
        if wanted is not None and wanted.target != current.target:
            raise ConfigError(
                f"{cfg} is initialised for {current.describe()}, but {source} asks for {wanted.describe()}: "
                "rerun `spotshift home init --force` to rewrite it (runs stored in the old storage are not moved)"
            )
        notes += [
            f"{cfg}: {p}; rerun `spotshift home init --force` to replace it with {{env: {PASSWORD_ENV}}}"
            for p in problems
        ]
        return current, False, notes
    storage = wanted or Storage("sqlite")
    dagster_home.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cfg, render(storage, max_concurrent_runs=max_concurrent_runs))
    if storage.kind == "postgres" and storage.has_password and not os.environ.get(PASSWORD_ENV):
        notes.append(
            f"the PostgreSQL password is not written to {cfg}: export {PASSWORD_ENV} in the environment "
            "of every Dagster process (webserver, daemon, runs)"
        )
    return storage, True, notes
