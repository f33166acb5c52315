"""Shared control-plane state in PostgreSQL when the Dagster instance is on PostgreSQL (issue 17 item 4).

The embedded default keeps small JSON documents in files under ``SPOTSHIFT_HOME`` (placement state:
:mod:`spotshift.placement.state`), written atomically under an ``flock``: correct on one machine,
invisible to workers on others. When ``$DAGSTER_HOME/dagster.yaml`` is on PostgreSQL
(``spotshift home init --postgres URL``), the same documents live in that database instead, in
one table::

    spotshift_state(kind TEXT, key TEXT, doc JSONB, version BIGINT, updated_at TIMESTAMPTZ,
                    PRIMARY KEY (kind, key))

Reads are plain ``SELECT``s; :meth:`PostgresStateStore.update` is one transaction that takes a
transaction-scoped advisory lock on ``(kind, key)`` (so two writers of a document that does not
exist yet cannot both create it), reads the row, applies the caller's change and writes it back:
concurrent read-modify-writes from any number of processes and hosts never lose each other's
updates. The connection is the instance's (host, port, database, user); the password comes from
``SPOTSHIFT_DAGSTER_POSTGRES_PASSWORD`` like every Dagster process's. Errors are one line naming
the server and the failure class, never the password.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from typing import Any

from spotshift.errors import ConfigError
from spotshift.home import dagster_home
from spotshift.instance import PASSWORD_ENV, read_storage

TABLE = "spotshift_state"
_CACHE: dict[str, Any] = {}
_CACHE_LOCK = threading.Lock()
KEEPALIVE_OPTIONS = "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3"
"""Server-side TCP keepalives of a lock-holding session: a vanished peer is dropped after ~25 s."""


class PostgresStateStore:
    """JSON documents by ``(kind, key)`` in PostgreSQL; one connection per process and thread."""

    def __init__(self, params: dict[str, Any], label: str):
        self.params = params
        self.label = label
        self._local = threading.local()
        self._ready = False

    def describe(self) -> str:
        """``PostgreSQL user@host:port/db`` (no password)."""
        return self.label

    def _con(self) -> Any:
        import psycopg2

        con = getattr(self._local, "con", None)
        if con is None or con.closed or getattr(self._local, "pid", None) != os.getpid():
            try:
                con = psycopg2.connect(connect_timeout=10, **self.params)
            except psycopg2.Error as exc:
                raise ConfigError(
                    f"state store {self.label}: cannot connect ({type(exc).__name__})"
                ) from None
            self._local.con, self._local.pid = con, os.getpid()
        if not self._ready:

            def create(cur: Any) -> None:
                # concurrent CREATE TABLE IF NOT EXISTS can collide in the catalog: one at a time
                cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"spotshift/{TABLE}",))
                cur.execute(
                    f"CREATE TABLE IF NOT EXISTS {TABLE} (kind TEXT NOT NULL, key TEXT NOT NULL, "
                    "doc JSONB NOT NULL, version BIGINT NOT NULL, updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), "
                    "PRIMARY KEY (kind, key))"
                )

            self._run(con, create)
            self._ready = True
        return con

    def _run(self, con: Any, work: Callable[[Any], Any]) -> Any:
        """``work(cursor)`` in one transaction (committed, or rolled back on any error)."""
        import psycopg2

        try:
            with con, con.cursor() as cur:  # psycopg2: commit on success, rollback on error
                return work(cur)
        except psycopg2.Error as exc:
            raise ConfigError(f"state store {self.label}: {type(exc).__name__}") from None

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        """The document, or None."""
        con = self._con()

        def work(cur: Any) -> Any:
            cur.execute(f"SELECT doc FROM {TABLE} WHERE kind = %s AND key = %s", (kind, key))
            row = cur.fetchone()
            return row[0] if row else None

        return self._run(con, work)

    def get_many(self, kind: str, keys: list[str]) -> dict[str, dict[str, Any]]:
        """The documents of ``keys`` that exist, by key, from one query."""
        con = self._con()

        def work(cur: Any) -> Any:
            cur.execute(f"SELECT key, doc FROM {TABLE} WHERE kind = %s AND key = ANY(%s)", (kind, list(keys)))
            return dict(cur.fetchall())

        return self._run(con, work)

    def list(self, kind: str, *, field: str = "", value: str = "") -> list[dict[str, Any]]:
        """Every document of ``kind`` by key; with ``field``, only those whose top-level ``field``
        is the string ``value``."""
        con = self._con()

        def work(cur: Any) -> Any:
            if field:
                cur.execute(
                    f"SELECT doc FROM {TABLE} WHERE kind = %s AND doc->>%s = %s ORDER BY key",
                    (kind, field, value),
                )
            else:
                cur.execute(f"SELECT doc FROM {TABLE} WHERE kind = %s ORDER BY key", (kind,))
            return [r[0] for r in cur.fetchall()]

        return self._run(con, work)

    def insert_once(self, kind: str, key: str, doc: dict[str, Any]) -> bool:
        """Write the document only if ``(kind, key)`` has none (write-once, one transaction):
        whether this call wrote it. A second writer of the key, concurrent or later, changes nothing."""
        con = self._con()

        def work(cur: Any) -> Any:
            cur.execute(
                f"INSERT INTO {TABLE} (kind, key, doc, version, updated_at) VALUES (%s, %s, %s::jsonb, 1, now()) "
                "ON CONFLICT (kind, key) DO NOTHING",
                (kind, key, json.dumps(doc, sort_keys=True)),
            )
            return cur.rowcount == 1

        return self._run(con, work)

    def session(self) -> Any:
        """A new autocommit connection of its own (for session-scoped advisory locks: closing it, or
        the process dying, ends the session and releases them). The server probes an idle peer with
        TCP keepalives (:data:`KEEPALIVE_OPTIONS`), so the session of a holder whose host vanished
        without closing its socket ends within about 25 s."""
        import psycopg2

        try:
            con = psycopg2.connect(connect_timeout=10, options=KEEPALIVE_OPTIONS, **self.params)
        except psycopg2.Error as exc:
            raise ConfigError(f"state store {self.label}: cannot connect ({type(exc).__name__})") from None
        con.autocommit = True
        return con

    def query_one(self, sql: str, args: tuple[Any, ...]) -> Any:
        """The first row of one read-only statement on this thread's connection, or None."""
        con = self._con()

        def work(cur: Any) -> Any:
            cur.execute(sql, args)
            return cur.fetchone()

        return self._run(con, work)

    def execute(self, con: Any, sql: str, args: tuple[Any, ...]) -> Any:
        """One statement on ``con`` (a :meth:`session`); its first row, or None. Errors as one line."""
        import psycopg2

        try:
            with con.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchone() if cur.description else None
        except psycopg2.Error as exc:
            raise ConfigError(f"state store {self.label}: {type(exc).__name__}") from None

    def update(
        self, kind: str, key: str, change: Callable[[dict[str, Any] | None], dict[str, Any]]
    ) -> dict[str, Any]:
        """Read, ``change`` and write the document in one transaction under its advisory lock;
        the new document. An exception from ``change`` rolls back (nothing written)."""
        con = self._con()

        def work(cur: Any) -> Any:
            cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"spotshift/{kind}/{key}",))
            cur.execute(
                f"SELECT doc, version FROM {TABLE} WHERE kind = %s AND key = %s FOR UPDATE", (kind, key)
            )
            row = cur.fetchone()
            doc = change(row[0] if row else None)
            version = (int(row[1]) if row else 0) + 1
            cur.execute(
                f"INSERT INTO {TABLE} (kind, key, doc, version, updated_at) VALUES (%s, %s, %s::jsonb, %s, now()) "
                "ON CONFLICT (kind, key) DO UPDATE SET doc = EXCLUDED.doc, version = EXCLUDED.version, "
                "updated_at = EXCLUDED.updated_at",
                (kind, key, json.dumps(doc, sort_keys=True), version),
            )
            return doc

        return self._run(con, work)

    def delete(self, kind: str, key: str) -> bool:
        """Remove the document; whether it existed."""
        con = self._con()

        def work(cur: Any) -> Any:
            cur.execute(f"DELETE FROM {TABLE} WHERE kind = %s AND key = %s", (kind, key))
            return cur.rowcount > 0

        return self._run(con, work)


def shared_store() -> PostgresStateStore | None:
    """The PostgreSQL store when the Dagster instance of this home is on PostgreSQL, else None
    (the file implementations apply). Cached per ``dagster.yaml`` version."""
    cfg = dagster_home() / "dagster.yaml"
    try:
        st = cfg.stat()
    except FileNotFoundError:
        return None
    stamp = f"{cfg}:{st.st_mtime_ns}:{st.st_size}:{os.environ.get(PASSWORD_ENV, '') != ''}"
    with _CACHE_LOCK:
        if stamp in _CACHE:
            return _CACHE[stamp]
    storage, _ = read_storage(cfg)
    store = None
    if storage.kind == "postgres":
        if any(v.startswith("${") for v in (storage.host, storage.db, storage.user)):
            raise ConfigError(
                f"{cfg}: the PostgreSQL server is given by environment references; the state store "
                "needs it written out (rerun `spotshift home init --postgres URL`)"
            )
        params: dict[str, Any] = {
            "host": storage.host,
            "port": storage.port,
            "dbname": storage.db,
            "user": storage.user,
            **dict(storage.params),
        }
        password = os.environ.get(PASSWORD_ENV)
        if password:
            params["password"] = password
        store = PostgresStateStore(params, storage.describe())
    with _CACHE_LOCK:
        _CACHE.clear()
        _CACHE[stamp] = store
    return store
