"""The checkpointing half of :class:`spotshift.checkpointing.Session`: resume, save, upload, shadow.

A mixin: it works on the attributes ``Session.__init__`` sets (``req``, ``region``, ``workdir``,
``ranks``/``rank``, the registered ``_objects``...). Single-process sessions write the checkpoint
format through the :class:`~spotshift.checkpoint.tiered.TieredCheckpointer`; multi-process ones
write one sharded checkpoint with every rank (:mod:`spotshift.training.distributed`).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from spotshift.checkpoint.format import (
    CheckpointPayload,
    StoredCheckpoint,
    runtime_versions,
    tensors_of,
    write_checkpoint,
)
from spotshift.checkpoint.keys import open_key_provider
from spotshift.checkpoint.tiered import TieredCheckpointer
from spotshift.errors import ConfigError, IntegrityError, SpotshiftError
from spotshift.sync.store import LocalChunkStore
from spotshift.sync.store_url import open_store
from spotshift.training.distributed import SHARDED, restore_sharded, save_sharded
from spotshift.training.session_state import SESSION_FORMAT, decode_state, devices_and_dtypes, encode_state
from spotshift.training.trainer import rng_state
from spotshift.training.trainer_record import checkpoint_fact, resolve_resume

log = logging.getLogger("spotshift.session")


class SessionCheckpoints:
    """Resume and save for a Session (see the module doc)."""

    req: Any
    ranks: Any
    rank: int
    tiers: Any
    keys: Any

    def resume_states(self) -> tuple[int, dict[str, Any], dict[str, Any]] | None:
        """``(step, {name: state dict}, RNG states)`` of the checkpoint this run resumes, verified, without
        loading anything (what integrations that load state their own way use); None for a fresh
        start. The session continues from that step either way (a sharded checkpoint loads into the
        registered objects' own state dicts, so register before calling it)."""
        self.keys, found = self._resolve()
        self._restored = True
        if found is None:
            log.info("session %s: no checkpoint, starting from step 0", self.job)
            return None
        if found.skipped:
            self.result["skipped_checkpoints"] = found.skipped
        ck = found.checkpoint
        sess = ck.meta["state"].get("session")
        if not isinstance(sess, dict) or sess.get("format") != SESSION_FORMAT:
            raise ConfigError(f"{ck.label}: not written by a spotshift Session (the built-in trainer's?)")
        tensors = tensors_of(found.parts)
        if sess.get("sharded") == SHARDED:
            self._check_names(ck.ref().url, set(sess.get("objects") or ()))
            group = self.ranks.group if self.ranks is not None else None
            states, rng = restore_sharded(self._objects, tensors, ck.meta["state"], self.rank, group)
            self._sharded_restore = True
        elif self.ranks is not None:
            raise ConfigError(
                f"{ck.label}: written by one process; a multi-process job resumes sharded checkpoints"
            )
        else:
            states = {
                name: decode_state(doc, tensors.get(name, {}), what=f"{ck.label}: {name}")
                for name, doc in sess.get("objects", {}).items()
            }
            rng = ck.meta["state"]["rng"]
        self.step = self.start_step = self._last_saved_step = ck.step
        self.tokens = self.start_tokens = int(ck.meta["tokens"])
        self.result["resumed_from"] = ck.ref().to_dict()
        log.info("session %s: resuming %s at step %d", self.job, ck.checkpoint_id, ck.step)
        return ck.step, states, rng

    def _resolve(self) -> tuple[Any, Any]:
        """:func:`resolve_resume`; in a multi-process job rank 0 first (on a fresh lineage it creates the
        job's key, which the other ranks then read), its failure raised on every rank."""
        if self.ranks is None:
            return resolve_resume(self.req, self.region)
        if self.rank == 0:
            try:
                found = resolve_resume(self.req, self.region)
            except SpotshiftError as exc:
                self.ranks.broadcast(str(exc))
                raise
            self.ranks.broadcast(None)
            return found
        failed = self.ranks.broadcast(None)
        if failed:
            raise IntegrityError(f"rank 0: {failed}")
        return resolve_resume(self.req, self.region)

    def save(
        self, kind: str = "periodic", *, sync: bool = False, timings: dict[str, float] | None = None
    ) -> Any:
        """Checkpoint the registered objects now: committed on the local tier when this returns, in
        the region store at once (``sync``) or in the background. Returns the local ref."""
        if not self._objects:
            raise ConfigError("session: nothing registered to checkpoint (call register(model=..., ...))")
        self._ensure_tiers()
        timings = timings if timings is not None else {}
        timings.setdefault("trigger_perf", time.perf_counter())
        if self.ranks is not None:
            return self._save_sharded(kind, sync, timings)
        payload = self._payload(kind)
        local_ref, event = self.tiers.save(payload, sync=sync, timings=timings)
        self._last_saved_step, self._last_saved_at = self.step, time.monotonic()
        if event is not None and event.error:
            raise SpotshiftError(
                f"checkpoint {local_ref.checkpoint_id}: upload to {self.region.url} failed: {event.error}"
            )
        return local_ref

    # -- internals ------------------------------------------------------------------------------------
    def _ensure_tiers(self) -> None:
        if (
            self.keys is None
        ):  # never restored: a fresh lineage (rank 0 creates its key, then the others read it)
            if self.rank == 0:
                self.keys = open_key_provider(self.req.key_provider, create=True)
            if self.ranks is not None and self.ranks.broadcast(True) and self.rank != 0:
                self.keys = open_key_provider(self.req.key_provider)
        if self.tiers is not None or self.rank != 0:
            return  # rank 0 uploads what the ranks committed on the local tier
        self.tiers = TieredCheckpointer(
            job=self.job,
            local_dir=self.workdir / "local-tier",
            region_store=self.region,
            keys=self.keys,
            replicas=[open_store(u) for u in self.req.replica_urls],
            on_upload=self._on_upload,
        )

    def _save_sharded(self, kind: str, sync: bool, timings: dict[str, float]) -> Any:
        """Every rank's shard committed on the (shared) local tier, then rank 0 uploads it; with ``sync``
        every rank returns only once the region store has it (or raises with the upload's error)."""
        assert self.ranks is not None
        local_ref = save_sharded(
            LocalChunkStore(self.workdir / "local-tier"),
            self.keys,
            self.ranks,
            self._objects,
            job=self.job,
            step=self.step,
            tokens=self.tokens,
            kind=kind,
            location=self.location,
            state={
                "session": {"format": SESSION_FORMAT, "sharded": SHARDED, "objects": sorted(self._objects)}
            },
            timings=timings,
        )
        self._last_saved_step, self._last_saved_at = self.step, time.monotonic()
        error = None
        if self.rank == 0:
            event = self.tiers.upload(local_ref, kind, sync=sync, timings=timings)
            error = event.error if event is not None else None
        if sync:
            error = self.ranks.broadcast(error)
        if error:
            raise SpotshiftError(
                f"checkpoint {local_ref.checkpoint_id}: upload to {self.region.url} failed: {error}"
            )
        return local_ref

    def _on_upload(self, event: Any) -> None:
        row = checkpoint_fact(self.region, self.req, event)
        if row is not None:
            self.checkpoint = event.ref.to_dict()
            self.facts.append("raw.checkpoints", row)

    def _shadow_step(self, rec: dict[str, Any]) -> None:
        self._shadow_steps.append(
            {
                "step": rec["step"],
                "loss": rec.get("loss", math.nan),
                "grad_norm": rec.get("grad_norm", 0.0),
                "lr": rec.get("lr", 0.0),
                "activations": {},
            }
        )
        if self._stopped or self.step - self.start_step < self.req.shadow_steps:
            return
        self._ensure_tiers()
        out = LocalChunkStore(self.workdir / "shadow-out")
        ref = write_checkpoint(out, self._payload("periodic"), self.keys)
        ck = StoredCheckpoint(out, self.job, ref.checkpoint_id)
        self.result["shadow"] = {
            "side": self.req.shadow_side,
            "steps": self._shadow_steps,
            "checkpoint": {**ref.to_dict(), "plain_bytes": ck.plain_bytes, "stored_bytes": ck.stored_bytes},
            "train_config": self.req.config,
        }
        self.result["status"] = "completed"
        self._stopped = True

    def _payload(self, kind: str) -> Any:
        """The checkpoint payload of the registered objects and the RNGs (tensors are live views:
        written before the next step)."""
        parts, objects = {}, {}
        for name, obj in self._objects.items():
            tensors: dict[str, Any] = {}
            objects[name] = encode_state(obj.state_dict(), tensors, what=f"session {name}")
            parts[name] = tensors
        return CheckpointPayload(
            job=self.job,
            step=self.step,
            tokens=self.tokens,
            kind=kind,
            location=self.location,
            state={"session": {"format": SESSION_FORMAT, "objects": objects}, "rng": rng_state()},
            parts=parts,
            versions={**runtime_versions(), **devices_and_dtypes(parts)},
        )
