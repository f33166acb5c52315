"""The fact lake in an object store: facts from processes on other machines, regions and clouds.

The local lake (:mod:`spotshift.factlake`) lives beside the warehouse file, so only processes of
that machine can write to it. With ``SPOTSHIFT_FACTS_URL`` set to a store URL (``s3://bucket/facts``,
``gs://bucket/facts``, ``file:///shared/facts``), every fact writer lands its batch there instead,
and whichever process next opens the warehouse for writing pulls the committed batches into the
local lake and ingests them exactly once (by batch id, as for local batches).

Layout in the store::

    pending/<batch>/<schema.table>.parquet   the batch's files, written first
    pending/<batch>/COMMIT                    written last: {"files": {name: [size, sha256]}, "rows": n}

Object stores have no rename, so a batch exists for readers only once its ``COMMIT`` is there: a
writer killed mid-write leaves files without a ``COMMIT``, which no reader lists (they are removed
once older than :data:`STALE_AFTER_S`). A pull downloads a committed batch, checks every file's size
and SHA-256 against ``COMMIT`` before trusting it, writes it into the local lake's ``pending/`` as a
whole (temp directory + fsync + rename, the batch's own name), and only then deletes the remote
objects, ``COMMIT`` first. A pull that dies in between leaves a batch the next pull finds already in
the local lake (or already ingested) and just deletes. A batch whose files do not match is moved to
``rejected/<batch>/`` in the store with one warning line and never blocks the others.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from spotshift.atomic import fsync_dir, temp_path
from spotshift.errors import IntegrityError, NotFoundError
from spotshift.factlake import new_batch_name
from spotshift.sync.store import ChunkStore
from spotshift.sync.store_url import open_store

FACTS_URL_ENV = "SPOTSHIFT_FACTS_URL"
COMMIT = "COMMIT"
#: files of a batch without a COMMIT this old belong to a writer that died
STALE_AFTER_S = 24 * 3600.0


def facts_store() -> ChunkStore | None:
    """The store of ``SPOTSHIFT_FACTS_URL``, or None when facts stay beside the warehouse."""
    url = os.environ.get(FACTS_URL_ENV, "").strip()
    return open_store(url) if url else None


def write_batch(store: ChunkStore, tables: Mapping[str, Any]) -> str:
    """Write ``tables`` (``{"raw.transfers": arrow_table, ...}``) as one batch in ``store``; its name.

    The Parquet files first, then ``COMMIT`` with their sizes and digests: the batch is visible
    whole or not at all. Every write is durable when it returns (object stores) or flushed before
    ``COMMIT`` (a filesystem store)."""
    import pyarrow.parquet as pq

    name = new_batch_name()
    files: dict[str, list[Any]] = {}
    rows = 0
    for table, batch in tables.items():
        buf = io.BytesIO()
        pq.write_table(batch, buf, compression="zstd")
        data = buf.getvalue()
        store.put_bytes(f"pending/{name}/{table}.parquet", data)
        files[f"{table}.parquet"] = [len(data), hashlib.sha256(data).hexdigest()]
        rows += batch.num_rows
    store.flush()
    store.put_bytes(f"pending/{name}/{COMMIT}", json.dumps({"files": files, "rows": rows}).encode())
    store.flush()
    return name


def committed_batches(store: ChunkStore) -> list[str]:
    """Names of the committed batches waiting in ``store``, oldest first."""
    names = {
        key.split("/")[1]
        for key in store.list_keys("pending/")
        if key.count("/") == 2 and key.endswith(f"/{COMMIT}")
    }
    return sorted(names)


def pull(
    store: ChunkStore, lake: Path, known: Callable[[list[str]], set[str]], say: Callable[[str], None]
) -> int:
    """Move the committed batches of ``store`` into the local ``lake``'s ``pending/``; how many.

    ``known`` returns which batch names the warehouse has already ingested (they are only deleted
    remotely). Damaged batches are moved to ``rejected/`` in the store with a warning via ``say``.
    """
    names = committed_batches(store)
    if not names:
        _remove_stale(store)
        return 0
    done = known(names)
    pending = lake / "pending"
    pending.mkdir(parents=True, exist_ok=True)
    pulled = 0
    for name in names:
        here = (pending / name).exists() or (lake / "ingested" / name).exists()
        if name not in done and not here:
            try:
                _download(store, name, pending)
            except IntegrityError as exc:
                _reject(store, name, exc, say)
                continue
            pulled += 1
        _delete(store, name)
    _remove_stale(store)
    return pulled


def _download(store: ChunkStore, name: str, pending: Path) -> None:
    """The batch ``name`` as a local pending batch (checked against its COMMIT, then renamed in)."""
    what = f"fact batch {name} in {store.url}"
    try:
        commit = json.loads(store.get_bytes(f"pending/{name}/{COMMIT}"))
        files = {str(k): (int(v[0]), str(v[1])) for k, v in commit["files"].items()}
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        raise IntegrityError(f"{what}: COMMIT is not a batch record") from None
    tmp = temp_path(pending)
    tmp.mkdir()
    try:
        for file, (size, digest) in sorted(files.items()):
            if "/" in file or not file.endswith(".parquet"):
                raise IntegrityError(f"{what}: COMMIT names {file!r}, not a table file")
            try:
                data = store.get_bytes(f"pending/{name}/{file}")
            except NotFoundError:
                raise IntegrityError(f"{what}: {file} is missing") from None
            if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
                raise IntegrityError(f"{what}: {file} does not match its COMMIT (truncated or altered)")
            with open(tmp / file, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        fsync_dir(tmp)
        os.rename(tmp, pending / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(pending)


def _delete(store: ChunkStore, name: str) -> None:
    """Remove a pulled batch from the store, COMMIT first (then no reader sees a partial batch)."""
    store.delete(f"pending/{name}/{COMMIT}")
    for key in list(store.list_keys(f"pending/{name}/")):
        store.delete(key)


def _reject(store: ChunkStore, name: str, exc: BaseException, say: Callable[[str], None]) -> None:
    for key in sorted(store.list_keys(f"pending/{name}/"), key=lambda k: k.endswith(COMMIT)):
        with contextlib.suppress(NotFoundError):
            store.put_bytes("rejected/" + key[len("pending/") :], store.get_bytes(key))
    _delete(store, name)
    say(f"warning: {exc}; moved to {store.url}/rejected/{name} (not ingested)")


def _remove_stale(store: ChunkStore) -> None:
    """Delete the files of batches without a COMMIT whose newest file is older than STALE_AFTER_S."""
    newest: dict[str, float] = {}
    committed: set[str] = set()
    for info in store.list_objects("pending/"):
        parts = info.key.split("/")
        if len(parts) != 3:
            continue
        if parts[2] == COMMIT:
            committed.add(parts[1])
        newest[parts[1]] = max(newest.get(parts[1], 0.0), info.modified.timestamp())
    cutoff = time.time() - STALE_AFTER_S
    for name, mtime in newest.items():
        if name not in committed and mtime < cutoff:
            for key in list(store.list_keys(f"pending/{name}/")):
                store.delete(key)
