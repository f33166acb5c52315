"""Checkpoints, notices and resume for your own training code: :class:`Session`.

::

    from spotshift.checkpointing import Session

    with Session.from_env() as s:             # or Session(job="...", location="provider/region")
        s.register(model=model, optimizer=opt, scheduler=sched)   # anything with state_dict()
        start = s.restore()                   # step to resume from (0 when there is no checkpoint)
        for step in range(start, total_steps):
            loss = train_step(...)
            s.step_done(step + 1, loss=float(loss))   # periodic checkpoints on the job's cadence
            if s.should_stop:                         # a notice arrived: the emergency checkpoint
                break                                 # has committed before this is True

Checkpoints are spotshift's one format (:mod:`spotshift.checkpoint.format`): encrypted parts, sealed
metadata, a ``COMMIT`` marker, written to the local tier and uploaded to the region's store by the
:class:`~spotshift.checkpoint.tiered.TieredCheckpointer` (so they migrate as tensor deltas like the
built-in trainer's). Each registered object becomes one part holding the tensors of its
``state_dict()``; everything else in the state dict (numbers, strings, lists, optimizer
hyperparameters, integer keys, tuples) goes into the checkpoint's JSON state, as do the Python,
NumPy and torch (CPU and CUDA) RNG states. A run restored from step k of a deterministic script
therefore computes the same bits at step N as one that never stopped: the content hash of its
checkpoint at step N is the same.

Under ``spotshift run`` (:mod:`spotshift.training.wrapper`) ``Session.from_env()`` reads the run's
request (``$SPOTSHIFT_RUN_REQUEST``): job, location, region store, key provider, cadence, what to
resume. The wrapper watches the provider's notice endpoint and writes ``notice.json`` into the
run's working directory (and forwards SIGTERM); the session sees it at the next ``step_done``,
commits the emergency checkpoint in the region store, reports it in ``session.json`` and only then
sets ``should_stop``. Without the wrapper the session watches the notice endpoints and SIGTERM
itself and writes the notice event and facts the wrapper would have written.

``step_done`` metrics (any numbers) go to ``metrics.jsonl`` in the working directory: what
``spotshift trainers list`` shows and what the shadow comparison of a move compares (``loss``,
``grad_norm``). On a step that does not checkpoint it costs one JSON line and one ``stat``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

from spotshift.errors import ConfigError, IntegrityError, SpotshiftError
from spotshift.training.request import REQUEST_ENV as REQUEST_ENV

log = logging.getLogger("spotshift.session")

SESSION_FORMAT = "spotshift-session/1"


# ---- state dicts <-> (JSON, tensors) -----------------------------------------------------------------


def _is_array(obj: Any) -> bool:
    mod = type(obj).__module__
    return (mod.startswith("torch") and type(obj).__name__ in ("Tensor", "Parameter")) or (
        mod == "numpy" and type(obj).__name__ == "ndarray"
    )


def encode_state(obj: Any, tensors: dict[str, Any], *, what: str, path: str = "") -> Any:
    """JSON of a state dict with every tensor (torch or numpy) moved into ``tensors`` under its path.

    Dicts keep their key order and key types (``{"__dict__": [[key, value], ...]}``), tuples stay
    tuples, non-finite floats survive; anything else that is not JSON raises :class:`ConfigError`
    naming ``what`` and the path.
    """
    if _is_array(obj):
        name = path or "."
        if name in tensors:
            raise ConfigError(f"{what}: two tensors at {name!r}")
        tensors[name] = obj
        return {"__tensor__": name, "numpy": type(obj).__module__ == "numpy"}
    if isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            if not isinstance(k, str | int | float | bool) and k is not None:
                raise ConfigError(f"{what}: key {k!r} at {path or '.'} is a {type(k).__name__}")
            items.append([k, encode_state(v, tensors, what=what, path=f"{path}/{k}" if path else str(k))])
        return {"__dict__": items}
    if isinstance(obj, tuple | list):
        out = [encode_state(v, tensors, what=what, path=f"{path}/{i}") for i, v in enumerate(obj)]
        return {"__tuple__": out} if isinstance(obj, tuple) else out
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if type(obj).__module__ == "numpy":  # numpy scalars
        return encode_state(obj.item(), tensors, what=what, path=path)
    if type(obj).__module__.startswith("torch") and type(obj).__name__ in ("dtype", "device"):
        return {"__torch__": type(obj).__name__, "value": str(obj)}
    raise ConfigError(
        f"{what}: value at {path or '.'} is a {type(obj).__name__}, which cannot be checkpointed"
    )


def decode_state(doc: Any, tensors: dict[str, Any], *, what: str) -> Any:
    """The inverse of :func:`encode_state` (tensors from the checkpoint's verified part)."""
    if isinstance(doc, list):
        return [decode_state(v, tensors, what=what) for v in doc]
    if not isinstance(doc, dict):
        return doc
    if "__tensor__" in doc:
        name = doc["__tensor__"]
        if name not in tensors:
            raise IntegrityError(f"{what}: tensor {name!r} is missing")
        t = tensors[name]
        return t.numpy() if doc.get("numpy") and hasattr(t, "numpy") else t
    if "__dict__" in doc:
        return {k: decode_state(v, tensors, what=what) for k, v in doc["__dict__"]}
    if "__tuple__" in doc:
        return tuple(decode_state(v, tensors, what=what) for v in doc["__tuple__"])
    if "__float__" in doc:
        return float(doc["__float__"])
    if "__torch__" in doc:
        import torch

        value = doc["value"]
        return torch.device(value) if doc["__torch__"] == "device" else getattr(torch, value.split(".")[-1])
    raise IntegrityError(f"{what}: unreadable state entry {sorted(doc)}")


# ---- the session --------------------------------------------------------------------------------------


class Session:
    """Checkpoints, notices and resume for one run of a job in one location (see the module doc).

    ``Session(job, location)`` runs on its own (it takes the job's trainer lock, watches the
    location's notice endpoints and SIGTERM); :meth:`from_env` builds the session ``spotshift run``
    prepared. Keyword arguments override the job's declaration (``checkpoint_every_steps``,
    ``checkpoint_every_minutes``) or the defaults (``store_url``: the location's region store;
    ``workdir``: ``$SPOTSHIFT_HOME/run/work/<job>/<provider>/<region>``; ``resume``: ``auto``).
    """

    def __init__(
        self,
        job: str,
        location: str,
        *,
        store_url: str | None = None,
        workdir: str | os.PathLike[str] | None = None,
        key_provider: str | None = None,
        checkpoint_every_steps: int | None = None,
        checkpoint_every_minutes: float | None = None,
        resume: Any = "auto",
        until_step: int | None = None,
        watchers: dict[str, str] | None = None,
        sigterm_grace_s: float = 30.0,
        _request: Any = None,
        _supervised: bool = False,
    ):
        from spotshift.training.request import TrainRequest

        if _request is None:
            from spotshift.training.backend import default_workdir
            from spotshift.training.runs import store_url_for

            every_steps, every_min = 500, 15.0
            with contextlib.suppress(SpotshiftError):
                from spotshift.jobs import get_job

                declared = get_job(job)
                every_steps, every_min = declared.checkpoint_every_steps, declared.checkpoint_every_minutes
            _request = TrainRequest(
                job=job,
                location=location,
                workdir=str(workdir or default_workdir(job, location)),
                store_url=store_url or store_url_for(location),
                dataset_source="",
                config={},
                resume=resume,
                until_step=until_step,
                checkpoint_every_steps=checkpoint_every_steps or every_steps,
                checkpoint_every_minutes=checkpoint_every_minutes or every_min,
                key_provider=key_provider,
                watchers=watchers,
                sigterm_grace_s=sigterm_grace_s,
                run_id="session",
            )
        self.req = _request
        self.job, self.location = self.req.job, self.req.location
        self.supervised = _supervised
        self.workdir = Path(self.req.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._objects: dict[str, Any] = {}
        self.step = 0
        self.tokens = 0
        self.start_step = 0
        self.start_tokens = 0
        self.keys: Any = None
        self.tiers: Any = None
        self.checkpoint: dict[str, Any] | None = None  # the last checkpoint committed in the region store
        self._restored = False
        self._stopped = False
        self._closed = False
        self._last_saved_step: int | None = None
        self._last_saved_at = time.monotonic()
        self._every_s = self.req.checkpoint_every_minutes * 60.0
        self._shadow_steps: list[dict[str, Any]] = []
        self._lock: Any = None  # a runlocks.HeldLock
        self._watcher: Any = None
        self._old_handlers: dict[int, Any] = {}
        from spotshift.clock import virtual_now
        from spotshift.facts import FactLog
        from spotshift.sync.store_url import open_store
        from spotshift.training.backend import METRICS_FILE, NOTICE_FILE
        from spotshift.training.preemption import StopController

        self._notice_path = str(self.workdir / NOTICE_FILE)
        self.controller = StopController()
        self.facts = FactLog(self.workdir)
        self.region = open_store(self.req.store_url)
        self.started_virtual = virtual_now()
        self.result: dict[str, Any] = {"job": self.job, "location": self.location, "status": "running"}
        if not self.supervised:
            from spotshift.training.backend import acquire_trainer_lock

            self._lock = acquire_trainer_lock(self.req.name)
            if self._lock is None:
                raise ConfigError(
                    f"job {self.job}: another trainer of it is running; refusing to start a second one"
                )
        self._metrics = open(self.workdir / METRICS_FILE, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        self._install_signals()
        if not self.supervised:
            self._start_watchers()

    @classmethod
    def from_env(cls) -> Session:
        """The session ``spotshift run`` prepared (``$SPOTSHIFT_RUN_REQUEST``), else one built from
        ``$SPOTSHIFT_JOB`` and ``$SPOTSHIFT_LOCATION``; :class:`ConfigError` when neither is set."""
        path = os.environ.get(REQUEST_ENV)
        if path:
            from spotshift.training.request import TrainRequest

            return cls(job="", location="", _request=TrainRequest.load(path), _supervised=True)
        job, location = os.environ.get("SPOTSHIFT_JOB"), os.environ.get("SPOTSHIFT_LOCATION")
        if not job or not location:
            raise ConfigError(
                f"no spotshift session in the environment: run the script with `spotshift run JOB -- ...` "
                f"(sets ${REQUEST_ENV}) or set SPOTSHIFT_JOB and SPOTSHIFT_LOCATION"
            )
        return cls(job, location)

    # -- registration and restore ---------------------------------------------------------------------
    def register(self, **objects: Any) -> Session:
        """Objects whose ``state_dict()``/``load_state_dict()`` are checkpointed, by name (the name is
        the checkpoint part; keep it stable across runs)."""
        for name, obj in objects.items():
            if not callable(getattr(obj, "state_dict", None)) or not callable(
                getattr(obj, "load_state_dict", None)
            ):
                raise ConfigError(
                    f"session register: {name} ({type(obj).__name__}) has no state_dict/load_state_dict"
                )
            if not name.isidentifier():
                raise ConfigError(f"session register: {name!r} is not a valid name")
        self._objects.update(objects)
        return self

    def restore(self) -> int:
        """Load the newest checkpoint that verifies (or the one the run asked for) into the registered
        objects and the RNGs; returns its step (0 when there is none: a fresh start)."""
        from spotshift.training.trainer import set_rng_state

        found = self.resume_states()
        if found is None:
            return 0
        step, states, rng = found
        label = str(self.result["resumed_from"]["url"])
        if set(states) != set(self._objects):
            raise ConfigError(
                f"checkpoint {label}: holds {', '.join(sorted(states)) or 'nothing'}, but the session registered "
                f"{', '.join(sorted(self._objects)) or 'nothing'}"
            )
        for name, obj in self._objects.items():
            obj.load_state_dict(states[name])
        set_rng_state(rng)
        return step

    def resume_states(self) -> tuple[int, dict[str, Any], dict[str, Any]] | None:
        """``(step, {name: state dict}, RNG states)`` of the checkpoint this run resumes, verified, without
        loading anything (what integrations that load state their own way use); None for a fresh
        start. The session continues from that step either way."""
        from spotshift.checkpoint.format import tensors_of
        from spotshift.training.trainer_run import resolve_resume

        self.keys, found = resolve_resume(self.req, self.region)
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
        states = {
            name: decode_state(doc, tensors.get(name, {}), what=f"{ck.label}: {name}")
            for name, doc in sess.get("objects", {}).items()
        }
        self.step = self.start_step = self._last_saved_step = ck.step
        self.tokens = self.start_tokens = int(ck.meta["tokens"])
        self.result["resumed_from"] = ck.ref().to_dict()
        log.info("session %s: resuming %s at step %d", self.job, ck.checkpoint_id, ck.step)
        return ck.step, states, ck.meta["state"]["rng"]

    # -- the training loop ----------------------------------------------------------------------------
    @property
    def should_stop(self) -> bool:
        """True once the run must end: a notice arrived and its emergency checkpoint committed (or
        ``until_step`` / the shadow run's steps were reached)."""
        return self._stopped

    def step_done(self, step: int, *, tokens: int = 0, **metrics: Any) -> None:
        """Step ``step`` (1-based, absolute) is complete; ``tokens`` it consumed, any numeric metrics.

        Checkpoints on the job's cadence (steps or minutes, whichever first; local tier now, region
        store in the background) and, when a notice has arrived, commits the emergency checkpoint in
        the region store before returning with :attr:`should_stop` set.
        """
        if self._closed:
            raise ConfigError("session: step_done after the session was closed")
        self.step, self.tokens = int(step), self.tokens + int(tokens)
        rec: dict[str, Any] = {"step": self.step}
        for k, v in metrics.items():
            try:
                rec[k] = float(v)
            except (TypeError, ValueError):
                raise ConfigError(f"session step_done: metric {k}={v!r} is not a number") from None
        self._metrics.write(json.dumps(rec) + "\n")
        if self.req.role == "shadow":
            self._shadow_step(rec)
            return
        if self._stopped:
            return
        if self.controller.is_set() or os.path.exists(self._notice_path):
            self._emergency()
            return
        if self.req.until_step is not None and self.step >= self.req.until_step:
            self.save("periodic", sync=True)
            self.result["status"] = "stopped_at_step"
            self._stopped = True
            return
        total = self.req.config.get("total_steps")
        if (total is None or self.step < total) and (
            self.step % self.req.checkpoint_every_steps == 0
            or time.monotonic() - self._last_saved_at >= self._every_s
        ):
            self.save("periodic", sync=False)  # the last step's checkpoint is the final one (close)

    def saved_at(self, step: int) -> bool:
        """Whether the last checkpoint this session wrote (or resumed) is of ``step``."""
        return self._last_saved_step == step

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
        if self.tiers is not None:
            return
        from spotshift.checkpoint.keys import open_key_provider
        from spotshift.checkpoint.tiered import TieredCheckpointer
        from spotshift.sync.store_url import open_store

        if self.keys is None:  # never restored: a fresh lineage
            self.keys = open_key_provider(self.req.key_provider, create=True)
        self.tiers = TieredCheckpointer(
            job=self.job,
            local_dir=self.workdir / "local-tier",
            region_store=self.region,
            keys=self.keys,
            replicas=[open_store(u) for u in self.req.replica_urls],
            on_upload=self._on_upload,
        )

    def _on_upload(self, event: Any) -> None:
        from spotshift.training.trainer_run import checkpoint_fact

        row = checkpoint_fact(self.region, self.req, event)
        if row is not None:
            self.checkpoint = event.ref.to_dict()
            self.facts.append("raw.checkpoints", row)

    def _install_signals(self) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return  # signals are the main thread's; notices still arrive through notice.json
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError, OSError):
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        from datetime import timedelta

        from spotshift.training.preemption import PreemptionNotice, utc_now

        notice = read_notice_file(self._notice_path)
        if notice is None:
            now, name = utc_now(), signal.Signals(signum).name
            notice = PreemptionNotice(
                "sigterm",
                now,
                now + timedelta(seconds=self.req.sigterm_grace_s),
                provider_ref=f"{name}@{now.isoformat()}",
                detail={"signal": name, "reason": "signal"},
                is_preemption=signum == signal.SIGTERM,
            )
        self.controller.request(notice)

    def _start_watchers(self) -> None:
        from spotshift.training.preemption import WatcherThread, build_watchers, watcher_urls_for

        urls = self.req.watchers if self.req.watchers is not None else watcher_urls_for(self.location)
        watchers = build_watchers(urls)
        if watchers:
            self._watcher = WatcherThread(watchers, self.controller, interval_s=self.req.poll_interval_s)
            self._watcher.start()

    def _emergency(self) -> None:
        from spotshift.clock import virtual_now
        from spotshift.training.preemption import utc_now

        if not self.controller.is_set():
            notice = read_notice_file(self._notice_path)
            if notice is not None:
                self.controller.request(notice)
        notice = self.controller.notice
        assert notice is not None
        notice.assign_id(self.job, self.location)
        virtual_noticed = virtual_now()
        timings: dict[str, float] = {"notice_monotonic": notice.monotonic_at}
        log.warning("%s notice %s at step %d: checkpointing", notice.kind, notice.notice_id, self.step)
        if self.step == self.start_step and self._restored:
            pass  # no step since the resumed checkpoint: it is the one to recover from
        elif self.step == self._last_saved_step and self.tiers is not None:
            self.tiers.flush(timeout_s=max(1.0, notice.remaining_s() - 1.0))  # finish its upload
        else:
            try:
                self.save("emergency", sync=True, timings=timings)
            except SpotshiftError as exc:
                log.error("emergency checkpoint failed: %s", exc)
                self.result["error"] = f"emergency checkpoint failed: {exc}"
        emergency_s = time.monotonic() - notice.monotonic_at
        committed_wall = utc_now()
        self.result["notice"] = notice.to_dict()
        self.result["emergency"] = {
            "seconds": round(emergency_s, 4),
            "deadline_margin_s": round((notice.deadline_at - committed_wall).total_seconds(), 3),
            "committed_at": committed_wall.isoformat(),
            "virtual_noticed_at": virtual_noticed.isoformat(),
            "timings": {k: round(v, 6) for k, v in timings.items() if k.endswith("_s")},
        }
        self.result["status"] = "preempted" if notice.is_preemption else "stopped"
        if not self.supervised and notice.is_preemption:
            from spotshift.training.trainer_run import record_preemption

            record_preemption(
                self.region,
                self.facts,
                self.req,
                notice,
                step=self.step,
                checkpoint=self.checkpoint or self.result.get("resumed_from"),
                emergency_s=emergency_s,
                committed_wall=committed_wall,
                virtual_noticed=virtual_noticed,
                watcher=self._watcher,
            )
        self._write_result()
        self._stopped = True

    def _shadow_step(self, rec: dict[str, Any]) -> None:
        from spotshift.checkpoint.format import StoredCheckpoint, write_checkpoint
        from spotshift.sync.store import LocalChunkStore

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
        from spotshift.checkpoint.format import CheckpointPayload, runtime_versions
        from spotshift.training.trainer import rng_state

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
            versions={**runtime_versions(), **_devices_and_dtypes(parts)},
        )

    def _write_result(self) -> None:
        from spotshift.atomic import atomic_write_json
        from spotshift.training.backend import SESSION_FILE

        self.result.update(
            {
                "step": self.step,
                "tokens": self.tokens,
                "start_step": self.start_step,
                "start_tokens": self.start_tokens,
                "steps_run": self.step - self.start_step,
                "checkpoint": self.checkpoint,
                "pid": os.getpid(),
            }
        )
        atomic_write_json(self.workdir / SESSION_FILE, self.result)

    # -- lifecycle ------------------------------------------------------------------------------------
    def close(self, *, failed: BaseException | None = None) -> None:
        """End the session: a final checkpoint of the last step (unless stopping or failed), uploads
        finished, ``session.json`` written, signal handlers, watcher and lock released."""
        if self._closed:
            return
        try:
            if failed is not None:
                self.result.update({"status": "failed", "error": f"{type(failed).__name__}: {failed}"})
                if self.tiers is not None:
                    self.tiers.close(timeout_s=5.0)
            elif self.req.role == "shadow":
                if not self._stopped:
                    self.result.update({"status": "failed", "error": "the shadow run ended early"})
            elif not self._stopped:
                if self._objects and self.step != self._last_saved_step and self.step > 0:
                    self.save("final", sync=True)
                if self.tiers is not None:
                    self.tiers.close()
                self.result["status"] = "completed"
            elif self.tiers is not None:
                self.tiers.close(timeout_s=0.5)
            if not self.supervised and self.req.role == "train":
                from spotshift.training.trainer_run import usage_fact

                self.facts.append(
                    "raw.compute_usage",
                    usage_fact(
                        self.req,
                        started=self.started_virtual,
                        steps=self.step - self.start_step,
                        tokens=self.tokens - self.start_tokens,
                        ended_in_preemption=self.result.get("status") == "preempted",
                    ),
                )
            self._write_result()
            if not self.supervised:  # nobody collects a lone session: move its facts into the warehouse now
                from spotshift.facts import ingest_facts

                try:
                    ingest_facts(self.workdir, timeout_s=5.0)
                except Exception as exc:  # they stay pending in <workdir>/facts for a later collector
                    log.info("facts left pending in %s (%s)", self.workdir, exc)
        finally:
            self._closed = True
            self._metrics.close()
            if self._watcher is not None:
                self._watcher.stop()
            for sig, old in self._old_handlers.items():
                with contextlib.suppress(ValueError, OSError, TypeError):
                    signal.signal(sig, old)
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, _tb: Any) -> None:
        self.close(failed=exc)


def _devices_and_dtypes(parts: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Where the checkpointed tensors lived and their dtypes (``"cpu"``, ``"float32,int64"``): recorded
    in the checkpoint's ``versions`` so a move can tell what the state needs."""
    devices, dtypes = set(), set()
    for tensors in parts.values():
        for t in tensors.values():
            devices.add(str(getattr(t, "device", "cpu")).split(":")[0])
            dtypes.add(str(t.dtype).removeprefix("torch."))
    return {"devices": ",".join(sorted(devices)), "dtypes": ",".join(sorted(dtypes))}


def read_notice_file(path: str | os.PathLike[str]) -> Any:
    """The :class:`~spotshift.training.preemption.PreemptionNotice` the wrapper wrote, or None."""
    from spotshift.clock import parse_utc
    from spotshift.training.preemption import PreemptionNotice

    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return PreemptionNotice(
        str(doc["kind"]),
        parse_utc(doc["noticed_at"]),
        parse_utc(doc["deadline_at"]),
        provider_ref=str(doc.get("provider_ref", "")),
        detail=dict(doc.get("detail") or {}),
        notice_id=str(doc.get("notice_id", "")),
        is_preemption=bool(doc.get("is_preemption", True)),
        monotonic_at=float(doc.get("monotonic_at", time.monotonic())),
    )
