"""Where the steps of a move hand each other their results: the move jobs' IO manager.

Each op of a move returns the typed :class:`~spotshift.migration.state.MoveState` that the next op
reads. In-process, and by default under Celery, Dagster keeps it in the instance's storage
directory (``$DAGSTER_HOME/storage``), which every worker must then share (one machine or a shared
volume). With a step store (``spotshift home init --executor celery --step-store URL`` or
``SPOTSHIFT_STEP_STORE``) the results go to that store instead, any spotshift store URL
(``s3://bucket/prefix``, ``gs://bucket/prefix``, ``file:///shared/path``), so workers in different
regions and clouds need only reach it: ``steps/<run id>/<step>/<output>``, written in one request
(atomic on S3/GCS, temp name + rename on a filesystem), each a header, the SHA-256 of the pickled
value and the value; a result that is missing, truncated or altered is refused in one line before it
is unpickled. Errors of the store are the store's own one-line errors (status, never a body).

Like Dagster's own pickling IO managers, a step unpickles what an earlier step wrote: only
spotshift's processes may write to the step store (the digest catches damage, not an attacker who
can write there).
"""

from __future__ import annotations

import hashlib
import pickle
from typing import Any

import dagster as dg
from dagster._core.storage.fs_io_manager import PickledObjectFilesystemIOManager

from spotshift.errors import IntegrityError
from spotshift.sync.store import ChunkStore
from spotshift.sync.store_url import open_store
from spotshift.workers.settings import load_settings

MAGIC = b"spotshift-step-result-1\n"
_DIGEST = hashlib.sha256().digest_size


def step_key(identifier: list[str]) -> str:
    """The store key of one step output from Dagster's identifier (run id, step key, output name[,
    mapping key]): ``steps/<run id>/<step>/<output>``."""
    return "steps/" + "/".join(identifier)


def pack(value: Any) -> bytes:
    """The stored form of a step result: header, SHA-256 of the pickle, the pickle."""
    payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return MAGIC + hashlib.sha256(payload).digest() + payload


def unpack(blob: bytes, what: str) -> Any:
    """The value of :func:`pack`'s ``blob``; IntegrityError naming ``what`` when it is not one or its
    digest does not match (checked before anything is unpickled)."""
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + _DIGEST:
        raise IntegrityError(f"{what}: not a spotshift step result (truncated or another file)")
    digest, payload = blob[len(MAGIC) : len(MAGIC) + _DIGEST], blob[len(MAGIC) + _DIGEST :]
    if hashlib.sha256(payload).digest() != digest:
        raise IntegrityError(f"{what}: content does not match its digest (truncated or altered)")
    return pickle.loads(payload)  # noqa: S301 - written by spotshift's own steps, digest checked


class StepStoreIOManager(dg.IOManager):
    """Step results in a spotshift store (see the module doc)."""

    def __init__(self, store: ChunkStore) -> None:
        self.store = store

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if context.dagster_type.is_nothing:
            return
        key = step_key(context.get_identifier())
        self.store.put_bytes(key, pack(obj))
        context.log.debug(f"step result {key} written to {self.store.url}")

    def load_input(self, context: dg.InputContext) -> Any:
        if context.dagster_type.is_nothing:
            return None
        key = step_key(context.upstream_output.get_identifier())
        return unpack(self.store.get_bytes(key), f"step result {key} in {self.store.url}")


@dg.io_manager(
    description="The move jobs' step results: the step store when one is configured "
    "(SPOTSHIFT_STEP_STORE / home init --step-store), else the instance's storage directory."
)
def move_io_manager(init_context: dg.InitResourceContext) -> dg.IOManager:
    """:class:`StepStoreIOManager` on the configured step store, else Dagster's filesystem one."""
    url = load_settings().step_store
    if url:
        return StepStoreIOManager(open_store(url))
    return PickledObjectFilesystemIOManager(base_dir=init_context.instance.storage_directory())
