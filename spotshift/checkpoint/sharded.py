"""One checkpoint written by every rank of a multi-process job (``torchrun``), through
``torch.distributed.checkpoint`` (DCP).

A sharded checkpoint is an ordinary checkpoint of :mod:`spotshift.checkpoint.format` (encrypted
parts, sealed metadata, ``COMMIT``, ``latest``; it verifies, copies, migrates and prunes like any
other) whose parts are:

* ``shard-<rank:05d>``: the tensors and serialized objects DCP's save planner gave that rank (a
  replicated DDP state is split between the ranks, an FSDP state is each rank's own shards), one
  safetensors file per rank, written and encrypted by that rank;
* ``dcp-metadata``: DCP's global ``Metadata`` (which chunk of which tensor lives in which shard),
  pickled, as a uint8 tensor; written by rank 0. It is unpickled only after the checkpoint
  verified (key, seal, commit MAC, content hash, every GCM tag), so only a holder of the KEK can
  put one there.

Order (:func:`write_sharded_checkpoint`): rank 0 makes the checkpoint's data key and sends the
*wrapped* key to the others (each unwraps it with its own key provider: the plaintext key never
crosses the process group); every rank encrypts its shard into staging; the ranks exchange the
part hashes, so all compute the same content hash and id, and rename their shard into place;
after a barrier that every rank passes only with its shard placed and fsynced, rank 0 checks that
every shard is there at its full size, writes the sealed metadata and then ``COMMIT``. A rank
that fails makes every rank fail (errors travel with the collectives), so a checkpoint missing a
shard is never committed, and none of the ranks waits forever for another.

Restoring (:func:`load_sharded_state`) runs DCP's load planner over the verified plaintext parts:
on the same world size each rank takes its own items; on another one (2 -> 1 tested) DCP
reshards, which works for whatever DCP can reshard (a DDP model and its optimizer on any world
size; FSDP2 DTensor shards 2 -> 1 and 2 -> 3 tested). The ranks must share the store they write to (the local
tier of one machine, or a shared filesystem).
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from spotshift.checkpoint import crypto
from spotshift.checkpoint.catalog import sweep_dead_writers
from spotshift.checkpoint.codec import (
    CheckpointPayload,
    CheckpointRef,
    checkpoint_id_for,
    checkpoint_prefix,
    content_hash_of,
)
from spotshift.checkpoint.keys import KeyProvider
from spotshift.checkpoint.writer import Envelope, Staging, build_meta, commit_checkpoint, sealed_meta
from spotshift.errors import IntegrityError, SpotshiftError
from spotshift.sync.store import LocalChunkStore

META_PART = "dcp-metadata"
_META_TENSOR = "metadata"


def shard_part(rank: int) -> str:
    """The part name of ``rank``'s shard."""
    return f"shard-{rank:05d}"


class Ranks(Protocol):
    """The collectives a sharded write needs (:class:`spotshift.training.distributed.RankGroup`)."""

    rank: int
    world_size: int

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, by rank, on every rank."""


class ShardWriterError(SpotshiftError):
    """A rank failed while a sharded checkpoint was written (nothing was committed)."""


# ---- DCP storage: items <-> one safetensors part per rank -------------------------------------------


def _item_name(index: Any) -> str:
    return f"{index.fqn}@{','.join(map(str, index.offset or ()))}"


def _dcp_storage_classes() -> tuple[type, type]:
    from torch.distributed.checkpoint import StorageReader, StorageWriter

    return StorageWriter, StorageReader


def dcp_save(state_dict: dict[str, Any], rank: int, group: Any = None) -> tuple[dict[str, Any], bytes | None]:
    """Run DCP's save planning over ``state_dict``: ``(this rank's items as named tensors, pickled
    global metadata on rank 0 else None)``. Nothing is written: the tensors are live views (write
    them before the next step)."""
    import torch.distributed.checkpoint as dcp

    writer = _make_writer(rank)
    dcp.save(state_dict, storage_writer=writer, process_group=group)
    return writer.tensors, writer.metadata


def _make_writer(rank: int) -> Any:
    import numpy as np
    from torch.distributed.checkpoint.planner import WriteItemType
    from torch.distributed.checkpoint.storage import WriteResult
    from torch.futures import Future

    base, _ = _dcp_storage_classes()

    class _Writer(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            self.tensors: dict[str, Any] = {}
            self.metadata: bytes | None = None

        def reset(self, checkpoint_id: Any = None) -> None:
            self.tensors = {}

        @classmethod
        def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
            return True

        def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
            pass

        def prepare_local_plan(self, plan: Any) -> Any:
            return plan

        def prepare_global_plan(self, plans: list[Any]) -> list[Any]:
            return [dataclasses.replace(p, storage_data=r) for r, p in enumerate(plans)]

        def write_data(self, plan: Any, planner: Any) -> Future[list[Any]]:
            results = []
            for item in plan.items:
                data = planner.resolve_data(item)
                name = _item_name(item.index)
                if item.type == WriteItemType.BYTE_IO:
                    data = np.frombuffer(data.getvalue(), dtype=np.uint8)
                    size = len(data)
                else:
                    data = data.detach()
                    size = data.numel() * data.element_size()
                self.tensors[name] = data
                results.append(WriteResult(index=item.index, size_in_bytes=size, storage_data=(rank, name)))
            fut: Future[list[Any]] = Future()
            fut.set_result(results)
            return fut

        def finish(self, metadata: Any, results: list[list[Any]]) -> None:
            metadata.storage_data = {wr.index: wr.storage_data for per_rank in results for wr in per_rank}
            self.metadata = pickle.dumps(metadata, protocol=4)

        def storage_meta(self) -> Any:
            return None  # DCP's would carry a random save id (the content hash must not)

    return _Writer()


def load_sharded_state(
    state_dict: dict[str, Any], parts: Mapping[str, Mapping[str, Any]], group: Any = None
) -> None:
    """Load a verified sharded checkpoint's tensors (``{part: {name: tensor}}``) into ``state_dict`` in
    place, through DCP's load planner (resharding when this world size is not the writer's)."""
    import torch.distributed.checkpoint as dcp

    if META_PART not in parts:
        raise IntegrityError(f"sharded checkpoint has no {META_PART} part")
    metadata = pickle.loads(parts[META_PART][_META_TENSOR].numpy().tobytes())  # noqa: S301 - verified first
    with (
        warnings.catch_warnings()
    ):  # one process restoring (2 -> 1) is intended: no "no process group" warning
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state_dict, storage_reader=_make_reader(metadata, parts), process_group=group)


def _make_reader(metadata: Any, parts: Mapping[str, Mapping[str, Any]]) -> Any:
    from torch.distributed._shard._utils import narrow_tensor_by_index as narrow
    from torch.distributed.checkpoint.planner import LoadItemType
    from torch.futures import Future

    _, base = _dcp_storage_classes()

    class _Reader(base):  # type: ignore[misc, valid-type]
        def reset(self, checkpoint_id: Any = None) -> None:
            pass

        @classmethod
        def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
            return True

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            return metadata

        def set_up_storage_reader(self, md: Any, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
            pass

        def prepare_local_plan(self, plan: Any) -> Any:
            return plan

        def prepare_global_plan(self, plans: list[Any]) -> list[Any]:
            return plans

        def read_data(self, plan: Any, planner: Any) -> Future[None]:
            for req in plan.items:
                rank, name = metadata.storage_data[req.storage_index]
                shard = parts.get(shard_part(rank))
                if shard is None or name not in shard:
                    raise IntegrityError(f"sharded checkpoint: {name} of rank {rank} is missing")
                stored = shard[name]
                if req.type == LoadItemType.BYTE_IO:
                    planner.load_bytes(req, io.BytesIO(stored.numpy().tobytes()))
                    continue
                src = narrow(stored, req.storage_offsets, req.lengths)
                target = planner.resolve_tensor(req).detach()
                if target.size() != src.size():
                    raise IntegrityError(
                        f"sharded checkpoint: {name} is {tuple(src.size())}, not {tuple(target.size())}"
                    )
                target.copy_(src)
                planner.commit_tensor(req, target)
            fut: Future[None] = Future()
            fut.set_result(None)
            return fut

    return _Reader()


# ---- the sharded write --------------------------------------------------------------------------------


def _attempt(fn: Callable[[], Any]) -> tuple[Any, str | None]:
    """``(result, None)`` or ``(None, one-line error)``: a rank's failure travels with the next collective."""
    try:
        return fn(), None
    except Exception as exc:  # every rank must reach the collective, whatever failed here
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0]


def _raise_first(ranks: Ranks, errors: list[str | None], what: str) -> None:
    for r, err in enumerate(errors):
        if err:
            raise ShardWriterError(f"sharded checkpoint {what}: rank {r} of {ranks.world_size} failed: {err}")


def write_sharded_checkpoint(
    tier: LocalChunkStore,
    payload: CheckpointPayload,
    keys: KeyProvider,
    ranks: Ranks,
    *,
    rank_state: Any = None,
    segment_bytes: int = crypto.DEFAULT_SEGMENT_BYTES,
    timings: dict[str, float] | None = None,
) -> CheckpointRef:
    """Commit one checkpoint of every rank's parts (call on every rank; see the module doc for the order).

    ``payload.parts`` is this rank's: ``{shard_part(rank): tensors}`` (plus ``META_PART`` on rank
    0); ``payload.state`` is the state every rank shares; ``rank_state`` (JSON, e.g. this rank's
    RNG states) lands in ``state["ranks"][rank]``. Returns the same ref on every rank once rank 0
    committed; :class:`ShardWriterError` on every rank when any rank failed (nothing committed).
    """
    timings = timings if timings is not None else {}
    for k in ("serialize_s", "encrypt_s", "write_s"):
        timings.setdefault(k, 0.0)
    t_start = time.perf_counter()
    job, rank = payload.job, ranks.rank

    def envelope() -> Envelope:
        sweep_dead_writers(tier, job)
        return Envelope.new(keys, job, timings)

    made, err = _attempt(envelope) if rank == 0 else (None, None)
    head = ranks.broadcast((made.ctx, made.wrapped, err) if made else (None, None, err))
    _raise_first(ranks, [head[2]], "envelope")
    env, err = (made, None) if rank == 0 else _attempt(lambda: Envelope.unwrap(keys, job, head[0], head[1]))
    staging = Staging([tier], head[0])
    try:
        mine, err = (
            (None, err)
            if err
            else _attempt(lambda: _encrypt_parts(staging, payload, env, segment_bytes, timings))
        )
        gathered = ranks.all_gather((mine, rank_state, err))
        _raise_first(ranks, [g[2] for g in gathered], "write")
        parts_meta = {part: pm for g in gathered for part, pm in g[0].items()}
        state = {**payload.state, "world_size": ranks.world_size, "ranks": [g[1] for g in gathered]}
        plain = {p: m["plain_hash"] for p, m in parts_meta.items()}
        content_hash = content_hash_of(job, payload.step, payload.tokens, state, plain)
        ckpt_id = checkpoint_id_for(payload.step, content_hash)
        _, err = _attempt(lambda: staging.place(job, ckpt_id, [pm["key"] for pm in mine.values()]))
    finally:
        staging.discard()
    # the barrier: past it, every rank's shard is in place and fsynced (or every rank raises)
    _raise_first(ranks, ranks.all_gather(err), "placement")
    done: str | None = None
    if rank == 0:
        full = dataclasses.replace(payload, state=state)

        def commit() -> None:
            _commit(tier, full, ckpt_id, content_hash, parts_meta, keys, env, segment_bytes)

        _, done = _attempt(commit)
    _raise_first(ranks, [ranks.broadcast(done)], "commit")
    timings["total_s"] = time.perf_counter() - t_start
    return CheckpointRef(tier.url, job, ckpt_id, payload.step, content_hash)


def _encrypt_parts(
    staging: Staging, payload: CheckpointPayload, env: Envelope, segment_bytes: int, timings: dict[str, float]
) -> dict[str, dict[str, Any]]:
    """This rank's parts, encrypted into staging (part index: 0 for the metadata, rank + 1 for a shard)."""
    out = {}
    for part in sorted(payload.parts):
        index = 0 if part == META_PART else int(part.removeprefix("shard-")) + 1
        out[part] = staging.encrypt_part(
            part, index, payload.parts[part], env, segment_bytes=segment_bytes, timings=timings
        )
    return out


def _commit(
    tier: LocalChunkStore,
    payload: CheckpointPayload,
    ckpt_id: str,
    content_hash: str,
    parts_meta: dict[str, dict[str, Any]],
    keys: KeyProvider,
    env: Envelope,
    segment_bytes: int,
) -> None:
    """Rank 0, after the barrier: every part present at its full size, then metadata, ``COMMIT``, ``latest``."""
    prefix = checkpoint_prefix(payload.job, ckpt_id)
    for part, pm in sorted(parts_meta.items()):
        found = tier.size(prefix + pm["key"])
        if found != pm["stored_bytes"]:
            raise IntegrityError(
                f"part {part} is {'missing' if found is None else f'{found} bytes'} at commit time"
            )
    meta = build_meta(payload, ckpt_id, content_hash, parts_meta, keys, env.wrapped, env.ctx, segment_bytes)
    meta_bytes = sealed_meta(meta, env.data_key)
    meta_key = f"meta-{env.ctx}.json"
    staging = Staging([tier], env.ctx)
    try:
        staging.put(meta_key, meta_bytes)
        staging.place(payload.job, ckpt_id, [meta_key])
    finally:
        staging.discard()
    commit_checkpoint(
        tier, payload.job, ckpt_id, meta_key, meta_bytes, payload.step, content_hash, env.data_key
    )


def metadata_part(metadata: bytes) -> dict[str, Any]:
    """The ``dcp-metadata`` part's tensors for DCP's pickled ``metadata``."""
    import numpy as np

    return {_META_TENSOR: np.frombuffer(metadata, dtype=np.uint8)}
