"""What a trainer run resumes and the facts it records, shared by the built-in trainer
(:class:`~spotshift.training.trainer_run.TrainerRun`), the wrapper and
:class:`spotshift.checkpointing.Session`: resume resolution, and the checkpoint, preemption and usage
facts."""

from __future__ import annotations

import logging
import os
import time
import uuid
from datetime import timedelta
from typing import Any

from spotshift.checkpoint.format import (
    StoredCheckpoint,
    VerifiedCheckpoint,
    list_checkpoints,
    open_newest_verified,
)
from spotshift.checkpoint.keys import open_key_provider
from spotshift.clock import virtual_now
from spotshift.pricing.regions import split_location
from spotshift.sync.store_url import open_store
from spotshift.training.notice_events import record_notice
from spotshift.training.request import TrainRequest

log = logging.getLogger("spotshift.trainer")


def resolve_resume(req: TrainRequest, region: Any) -> tuple[Any, Any]:
    """``(key provider, VerifiedCheckpoint or None)``: what a run of ``req`` resumes from.

    Opens the key provider as a side effect: a run with nothing to resume starts the job's
    lineage and may create its local key; any run that resumes only reads the key. ``auto``
    (or a store without an id) takes the newest checkpoint there that verifies (the newer ones it
    passed over are in its ``skipped``); an explicit id must verify. ``region`` is the open
    region store of ``req``.
    """

    if req.resume == "none":
        return open_key_provider(req.key_provider, create=req.role == "train"), None
    store = open_store(req.resume["store_url"]) if isinstance(req.resume, dict) else region
    wanted = req.resume.get("checkpoint_id") if isinstance(req.resume, dict) else None
    if wanted not in (None, "latest"):
        keys = open_key_provider(req.key_provider)
        ck = StoredCheckpoint(store, req.job, wanted)
        return keys, VerifiedCheckpoint(ck, ck.read_parts(keys))
    fresh = not list_checkpoints(store, req.job)
    keys = open_key_provider(req.key_provider, create=fresh and req.role == "train")
    return keys, (None if fresh else open_newest_verified(store, req.job, keys))


def checkpoint_fact(region: Any, req: TrainRequest, event: Any) -> dict[str, Any] | None:
    """The ``raw.checkpoints`` row of a finished region upload (None for failures and replicas)."""
    if event.error or event.tier != "region":
        return None

    t = event.timings
    total = time.perf_counter() - t["trigger_perf"] if "trigger_perf" in t else None
    if "notice_monotonic" in t:
        total = time.monotonic() - t["notice_monotonic"]
    ck = StoredCheckpoint(region, req.job, event.ref.checkpoint_id)
    return {
        "checkpoint_id": ck.content_hash,
        "job": req.job,
        "step": ck.step,
        "tokens": ck.meta["tokens"],
        "kind": event.kind,
        "location": req.location,
        "url": event.ref.url,
        "bytes": ck.stored_bytes,
        "created_at": virtual_now().isoformat(),
        "serialize_s": t.get("serialize_s"),
        "encrypt_s": t.get("encrypt_s"),
        "upload_s": t.get("upload_s"),
        "total_s": total,
    }


def record_preemption(
    region: Any,
    facts: Any,
    req: TrainRequest,
    notice: Any,
    *,
    step: int,
    checkpoint: dict[str, Any] | None,
    emergency_s: float,
    committed_wall: Any,
    virtual_noticed: Any,
    watcher: Any = None,
) -> None:
    """After an emergency checkpoint: the notice event (:func:`~spotshift.training.notice_events.record_notice`:
    the region store, or PostgreSQL; what the preemption sensor reads), the ``raw.preemptions`` fact, and the provider's
    acknowledgement (Azure) through ``watcher`` (a :class:`WatcherThread`) when given."""
    record = {
        "notice_id": notice.notice_id,
        "job": req.job,
        "location": req.location,
        "kind": notice.kind,
        "noticed_at": notice.noticed_at.isoformat(),
        "deadline_at": notice.deadline_at.isoformat(),
        "virtual_noticed_at": virtual_noticed.isoformat(),
        "step": step,
        "checkpoint": checkpoint,
        "checkpoint_committed_at": committed_wall.isoformat(),
        "emergency_s": round(emergency_s, 4),
        "deadline_margin_s": round((notice.deadline_at - committed_wall).total_seconds(), 3),
        "detail": notice.detail,
    }
    record_notice(record, store=region)
    facts.append(
        "raw.preemptions",
        {
            "notice_id": notice.notice_id,
            "job": req.job,
            "location": req.location,
            "notice_kind": notice.kind,
            "noticed_at": virtual_noticed.isoformat(),
            "deadline_at": (virtual_noticed + timedelta(seconds=notice.warning_s)).isoformat(),
            "checkpoint_committed_at": (virtual_noticed + timedelta(seconds=emergency_s)).isoformat(),
            "step": step,
        },
    )
    if watcher is not None and (w := watcher.watcher(notice.kind)) is not None:
        try:
            w.acknowledge(notice)
        except OSError as exc:
            log.warning("could not acknowledge %s: %s", notice.notice_id, exc)


def usage_fact(
    req: TrainRequest, *, started: Any, steps: int, tokens: int, ended_in_preemption: bool
) -> dict[str, Any]:
    """The ``raw.compute_usage`` row of one run of ``req`` that ran ``steps`` steps since ``started``."""

    provider, region = split_location(req.location, zone=True)
    price = req.usage.get("price_usd_hour")
    return {
        "usage_id": str(uuid.uuid4()),
        "job": req.job,
        "provider": provider,
        "region": region,
        "instance_type": req.usage.get("instance_type"),
        "gpu_model": req.usage.get("gpu_model"),
        "market": req.usage.get("market"),
        "started_at": started.isoformat(),
        "ended_at": virtual_now().isoformat(),
        "gpu_count": req.usage.get("gpu_count"),
        "price_usd_hour": price,
        "list_price_usd_hour": req.usage.get("list_price_usd_hour"),
        # cost of the work the steps stand for (jobs.TrainingJob: work_hours / total_steps each)
        "usd": price * steps * req.hours_per_step if price is not None and req.hours_per_step else None,
        "ended_in_preemption": ended_in_preemption,
        "steps": steps,
        "tokens": tokens,
        "run_id": req.run_id or f"trainer-{os.getpid()}",
    }
