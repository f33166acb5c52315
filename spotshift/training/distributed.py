"""Multi-process jobs (``torchrun``, DDP/FSDP): the ranks of a :class:`~spotshift.checkpointing.Session`.

``Session.from_env()`` (or ``Session(...)``) in a process started with ``RANK``/``WORLD_SIZE`` > 1
joins the job's process group (initialising it with gloo when the script has not) and makes a
gloo group of its own for its control messages, so it works whatever backend the model uses.

* Decisions are collective: at every ``step_done`` the ranks all-reduce (max) two flags, "a notice
  or signal reached me" and "a periodic checkpoint is due here", so a notice that reaches any
  rank (the wrapper's ``notice.json``, a provider watcher on rank 0, SIGTERM forwarded to the
  process group) stops every rank at the same step, and all ranks checkpoint at the same steps.
  The cost is one 2-element all-reduce per step.
* State goes through ``torch.distributed.checkpoint``: modules with ``get_model_state_dict``
  (FQNs without DDP's ``module.`` prefix, so a plain model can load it), optimizers with
  ``get_optimizer_state_dict`` (one module must be registered with them), anything else with its
  own ``state_dict()``. :mod:`spotshift.checkpoint.sharded` writes it: every rank's shard
  encrypted and placed before rank 0 writes ``COMMIT``.
* Each rank's RNG states are kept per rank; a resume on the same world size restores each rank's
  own, so a deterministic script resumes bitwise (DDP and FSDP2 ``fully_shard`` tested). On another
  world size DCP reshards the state (FSDP2 2 -> 1 and 2 -> 3 tested); ranks the writer did not have
  keep their seeds (bitwise equality with an uninterrupted run on
  the old world size is then not expected: the arithmetic differs).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spotshift.checkpoint.codec import CheckpointPayload, CheckpointRef, runtime_versions
from spotshift.checkpoint.keys import KeyProvider
from spotshift.checkpoint.sharded import (
    META_PART,
    dcp_save,
    load_sharded_state,
    metadata_part,
    shard_part,
    write_sharded_checkpoint,
)
from spotshift.errors import ConfigError
from spotshift.sync.store import LocalChunkStore
from spotshift.training.session_state import devices_and_dtypes
from spotshift.training.trainer import rng_state

#: the Session format marker of a sharded checkpoint's state
SHARDED = "torch-dcp"


@dataclass
class RankGroup:
    """This process's rank in a multi-process job and a gloo group for control messages."""

    rank: int
    world_size: int
    group: Any
    owns_default_group: bool = False  # the Session initialised the process group (the script had not)

    @classmethod
    def from_env(cls) -> RankGroup | None:
        """The rank group of a process ``torchrun`` started (``WORLD_SIZE`` > 1), else None."""
        if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
            return None
        import torch.distributed as dist

        owns = not dist.is_initialized()
        if owns:
            dist.init_process_group("gloo")  # torchrun's env:// rendezvous
        group = dist.new_group(backend="gloo")  # collective: every rank builds its session here
        return cls(dist.get_rank(), dist.get_world_size(), group, owns)

    def close(self) -> None:
        """Release the control group (and the default group when the Session made it)."""
        import torch.distributed as dist

        if not dist.is_initialized():
            return
        if self.owns_default_group:
            dist.destroy_process_group()
        else:
            dist.destroy_process_group(self.group)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        import torch.distributed as dist

        box = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, by rank."""
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def any(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag OR-ed over the ranks (one all-reduce)."""
        import torch
        import torch.distributed as dist

        t = torch.tensor([int(f) for f in flags], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return tuple(bool(v) for v in t.tolist())


def _single_module(objects: Mapping[str, Any]) -> Any:
    from torch import nn

    modules = [o for o in objects.values() if isinstance(o, nn.Module)]
    if len(modules) != 1:
        raise ConfigError(
            f"session: a multi-process job registers exactly one model with its optimizers ({len(modules)} registered)"
        )
    return modules[0]


def dcp_state(objects: Mapping[str, Any]) -> dict[str, Any]:
    """The state dict DCP saves (and loads into) for the registered objects (see the module doc)."""
    import torch
    from torch import nn
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    out: dict[str, Any] = {}
    for name, obj in objects.items():
        if isinstance(obj, nn.Module):
            out[name] = get_model_state_dict(obj)
        elif isinstance(obj, torch.optim.Optimizer):
            out[name] = get_optimizer_state_dict(_single_module(objects), obj)
        else:
            out[name] = obj.state_dict()
    return out


def load_dcp_state(objects: Mapping[str, Any], state: Mapping[str, Any]) -> None:
    """Put states loaded into :func:`dcp_state`'s dicts back into the registered objects."""
    import torch
    from torch import nn
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    for name, obj in objects.items():
        if isinstance(obj, nn.Module):
            set_model_state_dict(obj, state[name])
        elif isinstance(obj, torch.optim.Optimizer):
            set_optimizer_state_dict(_single_module(objects), obj, state[name])
        else:
            obj.load_state_dict(state[name])


def save_sharded(
    tier: LocalChunkStore,
    keys: KeyProvider,
    ranks: RankGroup,
    objects: Mapping[str, Any],
    *,
    job: str,
    step: int,
    tokens: int,
    kind: str,
    location: str,
    state: dict[str, Any],
    timings: dict[str, float],
) -> CheckpointRef:
    """Checkpoint the registered objects of every rank into ``tier`` (call on every rank at the same
    step); ``state`` is the JSON every rank shares, each rank's RNG states are added per rank."""
    shard, metadata = dcp_save(dcp_state(objects), ranks.rank, ranks.group)
    parts: dict[str, Any] = {shard_part(ranks.rank): shard}
    if metadata is not None:
        parts[META_PART] = metadata_part(metadata)
    payload = CheckpointPayload(
        job=job,
        step=step,
        tokens=tokens,
        kind=kind,
        location=location,
        state=state,
        parts=parts,
        versions={**runtime_versions(), **devices_and_dtypes({"shard": shard})},
    )
    return write_sharded_checkpoint(
        tier, payload, keys, ranks, rank_state={"rng": rng_state()}, timings=timings
    )


def restore_sharded(
    objects: Mapping[str, Any],
    tensors: Mapping[str, Mapping[str, Any]],
    state: Mapping[str, Any],
    rank: int,
    group: Any,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(states loaded through DCP, this rank's RNG states or None)`` of a verified sharded checkpoint."""
    loaded = dcp_state(objects)
    load_sharded_state(loaded, tensors, group)
    ranks = state.get("ranks") or []
    rng = ranks[rank].get("rng") if rank < len(ranks) and isinstance(ranks[rank], dict) else None
    return loaded, rng
