"""What a store holds of a job: committed checkpoints, the ``latest`` pointer, the newest that
verifies, and what killed writers left; and checkpoint paths as users type them.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spotshift.atomic import TempFile, remove_stale_temp_files, stale_temp_files
from spotshift.checkpoint.codec import (
    INCOMING,
    checkpoint_label,
    checkpoint_prefix,
    job_prefix,
    latest_key,
    step_of,
)
from spotshift.checkpoint.keys import KeyProvider
from spotshift.checkpoint.reader import StoredCheckpoint
from spotshift.cloud_errors import redact_url
from spotshift.errors import ConfigError, IntegrityError, NotFoundError
from spotshift.sync.store import ChunkStore, LocalChunkStore

log = logging.getLogger("spotshift.checkpoint")


def read_latest_pointer(store: ChunkStore, job: str) -> dict[str, Any] | None:
    """The ``latest`` pointer document, or None when absent or unreadable."""
    try:
        doc = json.loads(store.get_bytes(latest_key(job)))
    except (NotFoundError, ValueError):
        return None
    return doc if isinstance(doc, dict) and "checkpoint_id" in doc else None


def list_checkpoints(store: ChunkStore, job: str) -> list[str]:
    """Ids of the committed checkpoints of ``job`` in ``store``, oldest step first."""
    ids = []
    for key in store.list_keys(job_prefix(job)):
        rest = key[len(job_prefix(job)) :]
        ckpt, _, name = rest.partition("/")
        if name == "COMMIT":
            with contextlib.suppress(ConfigError):
                step_of(ckpt)
                ids.append(ckpt)
    return sorted(ids)


def latest_checkpoint(store: ChunkStore, job: str) -> str | None:
    """The newest committed checkpoint id: the ``latest`` pointer when it names a committed one, else a scan."""
    pointer = read_latest_pointer(store, job)
    if pointer and store.exists(checkpoint_prefix(job, pointer["checkpoint_id"]) + "COMMIT"):
        committed = list_checkpoints(store, job)
        # the pointer only moves forward, but a scan catches a commit whose pointer write was lost
        if committed and step_of(committed[-1]) > int(pointer.get("step", -1)):
            return committed[-1]
        return str(pointer["checkpoint_id"])
    committed = list_checkpoints(store, job)
    return committed[-1] if committed else None


def open_checkpoint(store: ChunkStore, job: str, checkpoint_id: str | None = None) -> StoredCheckpoint:
    """A committed checkpoint by id, or the latest one when ``checkpoint_id`` is None or ``latest``."""
    if checkpoint_id in (None, "latest"):
        found = latest_checkpoint(store, job)
        if found is None:
            raise NotFoundError(f"no committed checkpoint of job {job!r} in {store.url}")
        checkpoint_id = found
    return StoredCheckpoint(store, job, checkpoint_id)


@dataclass
class VerifiedCheckpoint:
    """A checkpoint that passed every check, its plaintext parts, and the newer ones passed over."""

    checkpoint: StoredCheckpoint
    parts: dict[str, bytes]
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"checkpoint_id", "reason"}, newest first


def open_newest_verified(store: ChunkStore, job: str, keys: KeyProvider) -> VerifiedCheckpoint | None:
    """The newest committed checkpoint of ``job`` in ``store`` that verifies, fully read (a resume).

    Checkpoints that fail verification (tampered, truncated, wrong key...) are passed over, newest
    first, each with a warning naming it and why; they are listed in ``skipped``. None when the store
    holds no committed checkpoint of the job; :class:`IntegrityError` when it holds some and none
    verifies (never silently start over). Problems that are not a checkpoint's (a missing key file,
    refused credentials) propagate at once.
    """
    committed = list_checkpoints(store, job)
    newest = latest_checkpoint(store, job)
    order = ([newest] if newest else []) + [c for c in reversed(committed) if c != newest]
    skipped: list[dict[str, str]] = []
    for ckpt_id in order:
        label = checkpoint_label(store, job, ckpt_id)
        try:
            ck = StoredCheckpoint(store, job, ckpt_id)
            parts = ck.read_parts(keys)
        except (IntegrityError, NotFoundError) as exc:
            reason = str(exc).removeprefix(label + ": ")
            log.warning("skipped checkpoint %s/%s in %s: %s", job, ckpt_id, store.url, reason)
            skipped.append({"checkpoint_id": ckpt_id, "reason": reason})
            continue
        return VerifiedCheckpoint(ck, parts, skipped)
    if skipped:
        first = skipped[0]
        raise IntegrityError(
            f"no checkpoint of job {job!r} in {store.url} verifies ({len(skipped)} committed; newest "
            f"{first['checkpoint_id']}: {first['reason']})"
        )
    return None


def sweep_dead_writers(store: ChunkStore, job: str | None = None) -> int:
    """Remove what killed writers left in ``store``: its temp files and (for ``job``) undelivered deltas.

    Uses the store's one rule for dead writers (pid-named files whose pid has exited,
    :func:`spotshift.atomic.stale_temp_files`), so it applies to local stores, where that pid
    means something; object stores are left alone. Returns how many files were removed.
    """
    if not isinstance(store, LocalChunkStore):
        return 0
    removed = store.remove_stale_temp_files()
    if job is not None:
        removed += remove_stale_temp_files(store.root / job_prefix(job) / INCOMING, owned=True)
    return removed


def leftovers(store: ChunkStore, job: str) -> dict[str, Any]:
    """What killed writers left that :func:`sweep_dead_writers` would remove, and uncommitted checkpoints.

    ``temp_files``/``temp_bytes`` (the store's temp files of dead writers), ``incoming``/
    ``incoming_bytes`` (undelivered deltas of ``job`` from dead writers) and ``uncommitted`` (ids
    with objects but no ``COMMIT``: a copy or write cut short, or one still in progress; the next
    complete write of the same id reuses them).
    """
    temp: list[TempFile] = []
    incoming: list[TempFile] = []
    if isinstance(store, LocalChunkStore):
        temp = store.stale_temp_files()
        incoming = stale_temp_files(store.root / job_prefix(job) / INCOMING, owned=True)
    committed = set(list_checkpoints(store, job))
    dirs = set()
    for key in store.list_keys(job_prefix(job)):
        ckpt, _, name = key[len(job_prefix(job)) :].partition("/")
        if name and ckpt != INCOMING and ckpt not in committed:
            dirs.add(ckpt)
    return {
        "temp_files": len(temp),
        "temp_bytes": sum(t.bytes for t in temp),
        "incoming": len(incoming),
        "incoming_bytes": sum(t.bytes for t in incoming),
        "uncommitted": sorted(dirs),
    }


def parse_checkpoint_path(path: str) -> tuple[str, str, str | None]:
    """``(store url, job, checkpoint id or None for latest)`` of a checkpoint path or URL.

    Accepts ``<store>/checkpoints/<job>/<id>``, ``<store>/checkpoints/<job>[/latest]`` (newest), for
    ``file://``, ``s3://``, ``gs://`` URLs and plain local paths.
    """
    shown = redact_url(path)  # errors name the path without the user-info a URL may carry
    text = path.strip().rstrip("/")
    if "://" not in text:
        text = Path(text).expanduser().resolve().as_uri()
    marker = "/checkpoints/"
    i = text.rfind(marker)
    if i < 0:
        raise ConfigError(f"{shown!r} is not a checkpoint path (expected <store>/checkpoints/<job>[/<id>])")
    store_url, rest = text[:i], text[i + len(marker) :]
    segs = [s for s in rest.split("/") if s]
    if not segs or len(segs) > 2:
        raise ConfigError(f"{shown!r} is not a checkpoint path (expected <store>/checkpoints/<job>[/<id>])")
    if store_url.endswith(":/") or store_url.endswith(":"):
        raise ConfigError(f"{shown!r}: the store part of the path is empty")
    ckpt = segs[1] if len(segs) == 2 and segs[1] != "latest" else None
    if ckpt is not None:
        step_of(ckpt)
    return store_url, segs[0], ckpt
