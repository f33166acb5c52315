"""One trainer run inside the trainer process (:mod:`spotshift.training.worker`): the built-in
trainer's :class:`TrainerRun`. What it resumes and the facts it records, shared with the wrapper and
:class:`spotshift.checkpointing.Session`: :mod:`spotshift.training.trainer_record`."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from spotshift.atomic import atomic_write_json
from spotshift.checkpoint.format import StoredCheckpoint, write_checkpoint
from spotshift.checkpoint.tiered import TieredCheckpointer
from spotshift.clock import virtual_now
from spotshift.errors import SpotshiftError
from spotshift.facts import FactLog
from spotshift.sync.store import LocalChunkStore
from spotshift.sync.store_url import open_store
from spotshift.training.backend import (
    METRICS_FILE,
    STOP_REQUEST_FILE,
    STOPPING_FILE,
)
from spotshift.training.data import prepare_tokens
from spotshift.training.pacing import ClockPacer
from spotshift.training.preemption import (
    PreemptionNotice,
    StopController,
    WatcherThread,
    build_watchers,
    utc_now,
    watcher_urls_for,
)
from spotshift.training.request import TrainRequest
from spotshift.training.trainer_record import checkpoint_fact, record_preemption, resolve_resume, usage_fact

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
        notice = self.controller.notice
        assert notice is not None
        notice.assign_id(self.req.job, self.req.location)
        virtual_noticed = virtual_now()
        # tell the control plane at once (the notice event in the store comes after the checkpoint)
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
