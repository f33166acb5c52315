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

In a process ``torchrun`` started (``WORLD_SIZE`` > 1) the same API runs on every rank: one sharded
checkpoint through ``torch.distributed.checkpoint`` with every rank's shard in place before rank 0
writes ``COMMIT``, notices and the checkpoint cadence agreed at each ``step_done``, each rank's
RNGs restored (:mod:`spotshift.training.distributed`, :mod:`spotshift.checkpoint.sharded`).

``step_done`` metrics (any numbers) go to ``metrics.jsonl`` in the working directory: what
``spotshift trainers list`` shows and what the shadow comparison of a move compares (``loss``,
``grad_norm``). On a step that does not checkpoint it costs one JSON line and one ``stat`` (and one
all-reduce of two flags in a multi-process job: :mod:`spotshift.training.distributed`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from spotshift.atomic import atomic_write_json
from spotshift.clock import virtual_now
from spotshift.errors import ConfigError, SpotshiftError
from spotshift.facts import FactLog, ingest_facts
from spotshift.jobs import get_job
from spotshift.sync.store_url import open_store
from spotshift.training.backend import (
    METRICS_FILE,
    NOTICE_FILE,
    SESSION_FILE,
    acquire_trainer_lock,
    default_workdir,
    fence_trainer_lock,
    unfence,
)
from spotshift.training.distributed import RankGroup, load_dcp_state
from spotshift.training.preemption import StopController
from spotshift.training.request import REQUEST_ENV as REQUEST_ENV
from spotshift.training.request import TrainRequest
from spotshift.training.runs import store_url_for
from spotshift.training.session_notices import SessionNotices
from spotshift.training.session_saves import SessionCheckpoints
from spotshift.training.session_state import SESSION_FORMAT as SESSION_FORMAT
from spotshift.training.session_state import decode_state as decode_state
from spotshift.training.session_state import encode_state as encode_state
from spotshift.training.session_state import read_notice_file as read_notice_file
from spotshift.training.trainer import set_rng_state
from spotshift.training.trainer_record import usage_fact

log = logging.getLogger("spotshift.session")


# ---- the session --------------------------------------------------------------------------------------


class Session(SessionCheckpoints, SessionNotices):
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
        if _request is None:
            _request = _standalone_request(
                job,
                location,
                workdir=str(workdir or default_workdir(job, location)),
                store_url=store_url or store_url_for(location),
                resume=resume,
                until_step=until_step,
                checkpoint_every_steps=checkpoint_every_steps,
                checkpoint_every_minutes=checkpoint_every_minutes,
                key_provider=key_provider,
                watchers=watchers,
                sigterm_grace_s=sigterm_grace_s,
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
        self._sharded_restore = False
        self.ranks = RankGroup.from_env()  # None unless torchrun started this process (WORLD_SIZE > 1)
        self.rank = self.ranks.rank if self.ranks is not None else 0
        if self.ranks is not None and self.req.role == "shadow":
            raise ConfigError(f"job {self.job}: a shadow run of a multi-process job is not supported")
        self._notice_path = str(self.workdir / NOTICE_FILE)
        self.controller = StopController()
        self.facts = FactLog(self.workdir)
        self.region = open_store(self.req.store_url)
        self.started_virtual = virtual_now()
        self.result: dict[str, Any] = {"job": self.job, "location": self.location, "status": "running"}
        if not self.supervised and self.rank == 0:
            self._lock = acquire_trainer_lock(self.req.name)
            if self._lock is None:
                raise ConfigError(
                    f"job {self.job}: another trainer of it is running; refusing to start a second one"
                )
            fence_trainer_lock(self._lock, self.job, self.workdir / SESSION_FILE, self.result)
        metrics = self.workdir / METRICS_FILE if self.rank == 0 else Path(os.devnull)  # rank 0 reports
        self._metrics = open(metrics, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        self._install_signals()
        if not self.supervised and self.rank == 0:
            self._start_watchers()
        if self.ranks is not None:
            self._write_result()  # "running": the wrapper holds SIGTERM back from torchrun (wrapper._may_signal)

    @classmethod
    def from_env(cls) -> Session:
        """The session ``spotshift run`` prepared (``$SPOTSHIFT_RUN_REQUEST``), else one built from
        ``$SPOTSHIFT_JOB`` and ``$SPOTSHIFT_LOCATION``; :class:`ConfigError` when neither is set."""
        path = os.environ.get(REQUEST_ENV)
        if path:
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
        objects and the RNGs; returns its step (0 when there is none: a fresh start).

        In a multi-process job every rank calls it: a sharded checkpoint loads through DCP (each
        rank its RNG states, on the same world size; see :mod:`spotshift.training.distributed`).
        """
        found = self.resume_states()
        if found is None:
            return 0
        step, states, rng = found
        self._check_names(str(self.result["resumed_from"]["url"]), set(states))
        if self._sharded_restore:
            load_dcp_state(self._objects, states)
        else:
            for name, obj in self._objects.items():
                obj.load_state_dict(states[name])
        if rng is not None:
            set_rng_state(rng)
        return step

    def _check_names(self, label: str, held: set[str]) -> None:
        if held != set(self._objects):
            raise ConfigError(
                f"checkpoint {label}: holds {', '.join(sorted(held)) or 'nothing'}, but the session registered "
                f"{', '.join(sorted(self._objects)) or 'nothing'}"
            )

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
        stop = self.controller.is_set() or os.path.exists(self._notice_path)
        total = self.req.config.get("total_steps")
        due = (total is None or self.step < total) and (
            self.step % self.req.checkpoint_every_steps == 0
            or time.monotonic() - self._last_saved_at >= self._every_s
        )
        if self.ranks is not None:  # every rank stops and checkpoints at the same step
            stop, due = self.ranks.any(stop, due)
        if stop:
            self._emergency()
            return
        if self.req.until_step is not None and self.step >= self.req.until_step:
            self.save("periodic", sync=True)
            self.result["status"] = "stopped_at_step"
            self._stopped = True
            return
        if due:
            self.save("periodic", sync=False)  # the last step's checkpoint is the final one (close)

    def saved_at(self, step: int) -> bool:
        """Whether the last checkpoint this session wrote (or resumed) is of ``step``."""
        return self._last_saved_step == step

    def _write_result(self) -> None:
        if self.rank != 0:
            return  # session.json is the job's: rank 0 reports for every rank
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
            if not self.supervised and self.req.role == "train" and self.rank == 0:
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
            if (
                not self.supervised and self.rank == 0
            ):  # nobody collects a lone session: move its facts into the warehouse now
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
                unfence(self.job)
            if self.ranks is not None:
                self.ranks.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, _tb: Any) -> None:
        self.close(failed=exc)


def _standalone_request(
    job: str,
    location: str,
    *,
    checkpoint_every_steps: int | None,
    checkpoint_every_minutes: float | None,
    **fields: Any,
) -> TrainRequest:
    """The request of a Session without ``spotshift run``: the job's declared cadence unless overridden."""
    every_steps, every_min = 500, 15.0
    with contextlib.suppress(SpotshiftError):
        declared = get_job(job)
        every_steps, every_min = declared.checkpoint_every_steps, declared.checkpoint_every_minutes
    return TrainRequest(
        job=job,
        location=location,
        dataset_source="",
        config={},
        checkpoint_every_steps=checkpoint_every_steps or every_steps,
        checkpoint_every_minutes=checkpoint_every_minutes or every_min,
        run_id="session",
        **fields,
    )
