"""One trainer run inside the trainer process (:mod:`spotshift.training.worker`): the built-in
trainer's :class:`TrainerRun` and the helpers the wrapper and :class:`spotshift.checkpointing.Session`
share with it (resume resolution, checkpoint, preemption and usage facts)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from spotshift.atomic import atomic_write_json
from spotshift.errors import SpotshiftError
from spotshift.pricing.regions import split_location
from spotshift.training.backend import (
    METRICS_FILE,
    STOP_REQUEST_FILE,
)
from spotshift.training.notice_events import record_notice
from spotshift.training.pacing import ClockPacer
from spotshift.training.request import TrainRequest

log = logging.getLogger("spotshift.trainer")

EXIT_LOCKED = 3


def setup_logging(workdir: Path) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger("spotshift")
    root.setLevel(logging.INFO)
    for h in (logging.FileHandler(workdir / "trainer.log"), logging.StreamHandler(sys.stderr)):
        h.setFormatter(fmt)
        root.addHandler(h)


class TrainerRun:
    """State of one trainer process (kept together so the emergency path can reach everything)."""

    def __init__(self, req: TrainRequest):
        from spotshift.clock import virtual_now
        from spotshift.facts import FactLog
        from spotshift.training.preemption import StopController

        self.req = req
        self.workdir = Path(req.workdir)
        self.controller = StopController()
        self.facts = FactLog(self.workdir)
        self.started_virtual = virtual_now()
        self.result: dict[str, Any] = {
            "job": req.job,
            "location": req.location,
            "role": req.role,
            "pid": os.getpid(),
            "status": "starting",
            "started_at": self.started_virtual.isoformat(),
        }
        self.watcher_thread = None

    # -- signals -----------------------------------------------------------------------------------------
    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        from datetime import timedelta

        from spotshift.training.preemption import PreemptionNotice, utc_now

        reason = None
        with contextlib.suppress(OSError, ValueError):
            reason = json.loads((self.workdir / STOP_REQUEST_FILE).read_text())
        now = utc_now()
        name = signal.Signals(signum).name
        preemption = bool(reason.get("preemption")) if reason else signum == signal.SIGTERM
        notice = PreemptionNotice(
            "sigterm",
            now,
            now + timedelta(seconds=self.req.sigterm_grace_s),
            provider_ref=f"{name}@{now.isoformat()}",
            detail={"signal": name, "reason": (reason or {}).get("reason", "signal")},
            is_preemption=preemption,
        )
        self.controller.request(notice)

    def start_watchers(self) -> None:
        from spotshift.training.preemption import WatcherThread, build_watchers, watcher_urls_for

        urls = self.req.watchers if self.req.watchers is not None else watcher_urls_for(self.req.location)
        watchers = build_watchers(urls)
        if watchers:
            self.watcher_thread = WatcherThread(
                watchers, self.controller, interval_s=self.req.poll_interval_s
            )
            self.watcher_thread.start()
            log.info("watching for preemption notices: %s", ", ".join(map(repr, watchers)))

    # -- the run -------------------------------------------------------------------------------------------
    def run(self) -> None:
        from spotshift.sync.store_url import open_store
        from spotshift.training.data import prepare_tokens
        from spotshift.training.trainer import TrainConfig, Trainer, config_for_resume

        req = self.req
        self.region = open_store(req.store_url)
        resumed = self._resume()
        ckpt = resumed.checkpoint if resumed else None
        cfg = config_for_resume(ckpt, req.overrides) if ckpt else TrainConfig.from_dict(req.config)
        if not ckpt and req.overrides:
            cfg = cfg.with_overrides(req.overrides)
        shards = prepare_tokens(cfg.dataset, req.dataset_source)
        self.trainer = Trainer(cfg, shards, collect_activations=req.role == "shadow")
        if resumed is not None:
            t0 = time.perf_counter()
            self.trainer.load(resumed.checkpoint, parts=resumed.parts)
            log.info(
                "resumed %s at step %d (%.3fs)",
                resumed.checkpoint.label,
                resumed.checkpoint.step,
                time.perf_counter() - t0,
            )
            self.result["resumed_from"] = resumed.checkpoint.ref().to_dict()
        else:
            log.info("starting job %s from scratch (seed %d)", req.job, cfg.seed)
        self.start_step, self.start_tokens = self.trainer.step, self.trainer.tokens
        self.result["start_step"] = self.start_step
        self.result["status"] = "running"
        if req.role == "shadow":
            self._run_shadow()
        else:
            self._run_training()

    def _resume(self) -> Any:
        """The verified checkpoint to resume (see :func:`resolve_resume`); sets ``self.keys``."""
        self.keys, found = resolve_resume(self.req, self.region)
        if found is not None and found.skipped:
            self.result["skipped_checkpoints"] = found.skipped
        return found

    def _metrics(self):  # noqa: ANN202
        return open(self.workdir / METRICS_FILE, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def _run_training(self) -> None:
        from spotshift.checkpoint.tiered import TieredCheckpointer
        from spotshift.sync.store_url import open_store

        req, tr = self.req, self.trainer
        until = min(req.until_step or tr.cfg.total_steps, tr.cfg.total_steps)
        self.tiers = TieredCheckpointer(
            job=req.job,
            local_dir=self.workdir / "local-tier",
            region_store=self.region,
            keys=self.keys,
            replicas=[open_store(u) for u in req.replica_urls],
            on_upload=self._on_upload,
        )
        last_saved_step = tr.step
        last_saved_at = time.monotonic()
        # a trainer paced on a stepped clock checkpoints on its step cadence only, synchronously:
        # wall minutes and background uploads would make its story depend on the machine
        pacer = ClockPacer(self.workdir, req.hours_per_step) if req.pace_on_clock else None
        every_s = float("inf") if pacer else req.checkpoint_every_minutes * 60.0
        with self._metrics() as metrics:
            while tr.step < until and not self.controller.is_set():
                if pacer is not None and not pacer.wait_turn(tr.step, self.controller):
                    break
                t_step = time.monotonic()
                stats = tr.train_step()
                metrics.write(
                    json.dumps(
                        {"step": stats.step, "loss": stats.loss, "grad_norm": stats.grad_norm, "lr": stats.lr}
                    )
                    + "\n"
                )
                if req.min_step_seconds > 0:
                    self.controller.wait(max(0.0, req.min_step_seconds - (time.monotonic() - t_step)))
                due = (
                    stats.step % req.checkpoint_every_steps == 0
                    or time.monotonic() - last_saved_at >= every_s
                )
                if due and stats.step < until and not self.controller.is_set():
                    self._save("periodic", sync=pacer is not None)
                    last_saved_step, last_saved_at = stats.step, time.monotonic()
        if self.controller.is_set():
            self._emergency(last_saved_step)
            return
        if tr.step not in (self.start_step, last_saved_step):
            self._save("final" if tr.step >= tr.cfg.total_steps else "periodic", sync=True)
        self.tiers.close()
        self.result["status"] = "completed" if tr.step >= tr.cfg.total_steps else "stopped_at_step"
        self._finish(ended_in_preemption=False)

    def _save(self, kind: str, *, sync: bool, timings: dict[str, float] | None = None) -> Any:
        t0 = time.perf_counter()
        timings = timings if timings is not None else {}
        timings["trigger_perf"] = t0
        local_ref, event = self.tiers.save(
            self.trainer.payload(kind=kind, location=self.req.location), sync=sync, timings=timings
        )
        if not sync:
            log.info(
                "checkpoint %s (%s) committed locally in %.3fs",
                local_ref.checkpoint_id,
                kind,
                time.perf_counter() - t0,
            )
        if event is not None and event.error:
            raise SpotshiftError(
                f"checkpoint {local_ref.checkpoint_id}: upload to {self.region.url} failed: {event.error}"
            )
        return local_ref, event

    def _on_upload(self, event: Any) -> None:
        row = checkpoint_fact(self.region, self.req, event)
        if row is not None:
            self.result["checkpoint"] = event.ref.to_dict()
            self.facts.append("raw.checkpoints", row)

    def _emergency(self, last_saved_step: int) -> None:

        from spotshift.clock import virtual_now
        from spotshift.training.preemption import utc_now

        notice = self.controller.notice
        assert notice is not None
        notice.assign_id(self.req.job, self.req.location)
        virtual_noticed = virtual_now()
        # tell the control plane at once (the notice event in the store comes after the checkpoint)
        from spotshift.training.backend import STOPPING_FILE

        atomic_write_json(
            self.workdir / STOPPING_FILE,
            {"notice_id": notice.notice_id, "kind": notice.kind, "preemption": notice.is_preemption},
            fsync=False,
        )
        log.warning(
            "%s notice %s at step %d: deadline in %.1fs, checkpointing at the step boundary",
            notice.kind,
            notice.notice_id,
            self.trainer.step,
            notice.remaining_s(),
        )
        timings: dict[str, float] = {"notice_monotonic": notice.monotonic_at}
        if self.trainer.step == self.start_step:
            pass  # no step since the resumed checkpoint: it is the one to recover from
        elif self.trainer.step == last_saved_step:
            # this step's checkpoint is on local disk already: finish its upload
            self.tiers.flush(timeout_s=max(1.0, notice.remaining_s() - 1.0))
        else:
            try:
                self._save("emergency", sync=True, timings=timings)  # supersedes queued periodic uploads
            except (
                SpotshiftError
            ) as exc:  # still tell the control plane, pointing at the last good checkpoint
                log.error("emergency checkpoint failed: %s", exc)
                self.result["error"] = f"emergency checkpoint failed: {exc}"
        emergency_s = time.monotonic() - notice.monotonic_at
        committed_wall = utc_now()
        margin = (notice.deadline_at - committed_wall).total_seconds()
        ckpt = self.result.get("checkpoint") or self.result.get("resumed_from")
        log.warning(
            "emergency checkpoint of step %d committed in %.3fs after the notice, %.1fs before the deadline%s",
            self.trainer.step,
            emergency_s,
            margin,
            "" if margin > 0 else " (DEADLINE MISSED)",
        )
        self.result["notice"] = notice.to_dict()
        self.result["emergency"] = {
            "seconds": round(emergency_s, 4),
            "deadline_margin_s": round(margin, 3),
            "committed_at": committed_wall.isoformat(),
            "timings": {k: round(v, 6) for k, v in timings.items() if k.endswith("_s")},
        }
        if notice.is_preemption:
            record_preemption(
                self.region,
                self.facts,
                self.req,
                notice,
                step=self.trainer.step,
                checkpoint=ckpt,
                emergency_s=emergency_s,
                committed_wall=committed_wall,
                virtual_noticed=virtual_noticed,
                watcher=self.watcher_thread,
            )
        self.result["status"] = "preempted" if notice.is_preemption else "stopped"
        if "error" in self.result:
            self.result["exit_code_hint"] = 1
        self.tiers.close(timeout_s=0.5)
        self._finish(ended_in_preemption=notice.is_preemption)

    def _run_shadow(self) -> None:
        from spotshift.checkpoint.format import write_checkpoint
        from spotshift.sync.store import LocalChunkStore

        tr, steps = self.trainer, []
        with self._metrics() as metrics:
            for _ in range(self.req.shadow_steps):
                if self.controller.is_set():
                    raise SpotshiftError(f"shadow run of {self.req.job} interrupted at step {tr.step}")
                s = tr.train_step()
                rec = {
                    "step": s.step,
                    "loss": s.loss,
                    "grad_norm": s.grad_norm,
                    "lr": s.lr,
                    "activations": s.activations,
                }
                metrics.write(json.dumps(rec) + "\n")
                steps.append(rec)
        out = LocalChunkStore(self.workdir / "shadow-out")
        ref = write_checkpoint(out, tr.payload(kind="periodic", location=self.req.location), self.keys)
        from spotshift.checkpoint.format import StoredCheckpoint

        ck = StoredCheckpoint(out, self.req.job, ref.checkpoint_id)
        self.result["shadow"] = {
            "side": self.req.shadow_side,
            "steps": steps,
            "checkpoint": {**ref.to_dict(), "plain_bytes": ck.plain_bytes, "stored_bytes": ck.stored_bytes},
            "train_config": tr.cfg.to_dict(),
        }
        self.result["status"] = "completed"
        self._finish(ended_in_preemption=False)

    def _finish(self, *, ended_in_preemption: bool) -> None:
        from spotshift.clock import virtual_now

        req, tr = self.req, self.trainer
        steps = tr.step - self.start_step
        self.facts.append(
            "raw.compute_usage",
            usage_fact(
                req,
                started=self.started_virtual,
                steps=steps,
                tokens=tr.tokens - self.start_tokens,
                ended_in_preemption=ended_in_preemption,
            ),
        )
        self.result.update({"step": tr.step, "tokens": tr.tokens, "steps_run": steps})
        self.result["ended_at"] = virtual_now().isoformat()


def resolve_resume(req: TrainRequest, region: Any) -> tuple[Any, Any]:
    """``(key provider, VerifiedCheckpoint or None)``: what a run of ``req`` resumes from.

    Opens the key provider as a side effect: a run with nothing to resume starts the job's
    lineage and may create its local key; any run that resumes only reads the key. ``auto``
    (or a store without an id) takes the newest checkpoint there that verifies (the newer ones it
    passed over are in its ``skipped``); an explicit id must verify. ``region`` is the open
    region store of ``req``.
    """
    from spotshift.checkpoint.format import (
        StoredCheckpoint,
        VerifiedCheckpoint,
        list_checkpoints,
        open_newest_verified,
    )
    from spotshift.checkpoint.keys import open_key_provider
    from spotshift.sync.store_url import open_store

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
    from spotshift.checkpoint.format import StoredCheckpoint
    from spotshift.clock import virtual_now

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
    from datetime import timedelta

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
    from spotshift.clock import virtual_now

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
