"""Hugging Face Transformers: checkpoints, notices and resume for a ``Trainer`` through a Session.

::

    from spotshift.integrations.hf import train

    trainer = Trainer(model=model, args=args, train_dataset=ds)
    train(trainer)            # Session.from_env(); or train(trainer, session=Session(job, location))

:func:`train` adds a :class:`SpotshiftCallback` and, when the session has a checkpoint to resume,
hands it to the Trainer as an ordinary ``resume_from_checkpoint`` directory (weights, optimizer,
scheduler, RNG states, trainer state: the Trainer then fast-forwards its data loader as it does
for its own checkpoints, so the resumed run sees the same batches). The directory is written from
the verified spotshift checkpoint into the run's working directory and removed afterwards.

The callback registers the Trainer's model, optimizer, scheduler and ``TrainerState`` with the
session when training begins; at every optimizer step it calls ``step_done`` (with the last
logged ``loss``/``grad_norm``/``learning_rate`` of that step), so the job's cadence and notices
apply; at the Trainer's own save points it saves through the session instead of writing an
unencrypted ``checkpoint-N`` directory; when a notice's emergency checkpoint has committed it
stops training (``control.should_training_stop``).

Needs the ``hf`` extra (``pip install 'spotshift[hf]'``: transformers and accelerate).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from spotshift.checkpointing import Session
from spotshift.errors import ConfigError

#: the part names a Trainer's state is checkpointed under (keep them: they are the checkpoint's parts)
PARTS = ("model", "optimizer", "scheduler", "trainer_state")


class _TrainerStateDict:
    """``TrainerState`` with the state_dict protocol (JSON-able fields only)."""

    def __init__(self, state: Any):
        self.state = state

    def state_dict(self) -> dict[str, Any]:
        # sorted keys: the same state has the same JSON (and checkpoint hash) before and after a resume
        return json.loads(json.dumps(dataclasses.asdict(self.state), default=str, sort_keys=True))

    def load_state_dict(self, doc: dict[str, Any]) -> None:
        for k, v in doc.items():
            setattr(self.state, k, v)


class SpotshiftCallback(TrainerCallback):
    """Saves through ``session`` at the Trainer's save points, on the job's cadence and on notices.

    A step the Trainer logs reports its logged ``loss``/``grad_norm``/``learning_rate`` (``on_log``
    comes after ``on_step_end`` and before the Trainer's save decision); other steps report no metrics.
    """

    def __init__(self, session: Session):
        self.session = session
        self._pending: int | None = None  # a logged step whose step_done waits for its metrics
        self._max_steps = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._max_steps = int(state.max_steps or 0)
        self.session.register(
            model=kw["model"],
            optimizer=kw["optimizer"],
            scheduler=kw["lr_scheduler"],
            trainer_state=_TrainerStateDict(state),
        )

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self._pending is not None:  # its log never came
            self._step_done(self._pending, control, {})
        if control.should_log:
            self._pending = state.global_step
        else:
            self._step_done(state.global_step, control, {})

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        if self._pending is None or self._pending != state.global_step:
            return
        metrics = {k: v for k, v in (logs or {}).items() if k in ("loss", "grad_norm", "learning_rate")}
        self._step_done(self._pending, control, metrics)

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self._pending is not None:
            self._step_done(self._pending, control, {})

    def _step_done(self, step: int, control: Any, metrics: dict[str, Any]) -> None:
        self._pending = None
        s = self.session
        s.step_done(step, **metrics)
        if s.should_stop:
            control.should_training_stop = True
            control.should_save = False
        elif (
            self._max_steps and step >= self._max_steps
        ):  # the last step: before the Trainer's end-of-run log
            s.save("final", sync=True)
            control.should_save = False
        elif control.should_save:  # the Trainer's save point: through the session, not checkpoint-N/
            if not s.saved_at(step):
                s.save("periodic")
            control.should_save = False


def export_resume_dir(session: Session, directory: str | Path) -> Path | None:
    """Write the session's checkpoint to resume as a Trainer ``resume_from_checkpoint`` directory (None
    for a fresh start). Files: ``model.safetensors``, ``optimizer.pt``, ``scheduler.pt``,
    ``rng_state.pth``, ``trainer_state.json``."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from spotshift.training.trainer import _python_rng_from_json

    found = session.resume_states()
    if found is None:
        return None
    step, states, rng = found
    missing = [p for p in PARTS if p not in states]
    if missing:
        raise ConfigError(f"checkpoint of step {step}: not a Trainer's (no {', '.join(missing)})")
    out = Path(directory) / f"checkpoint-{step}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in states["model"].items()}, str(out / "model.safetensors"))
    torch.save(states["optimizer"], out / "optimizer.pt")
    torch.save(states["scheduler"], out / "scheduler.pt")
    n = rng["numpy"]
    rng_states: dict[str, Any] = {
        "python": _python_rng_from_json(rng["python"]),
        "numpy": (n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]),
        "cpu": torch.frombuffer(bytearray(base64.b64decode(rng["torch"])), dtype=torch.uint8),
    }
    torch.save(rng_states, out / "rng_state.pth")
    (out / "trainer_state.json").write_text(json.dumps(states["trainer_state"], indent=2, sort_keys=True))
    return out


def train(trainer: Any, session: Session | None = None, **train_kwargs: Any) -> Any:
    """``trainer.train()`` under a session (default ``Session.from_env()``, closed at the end):
    resumes from the session's checkpoint, checkpoints on the job's cadence, the Trainer's save
    points and notices; returns the Trainer's ``TrainOutput``."""
    own = session is None
    session = session or Session.from_env()
    try:
        trainer.add_callback(SpotshiftCallback(session))
        resume_dir = export_resume_dir(session, session.workdir / "hf-resume")
        try:
            out = trainer.train(
                resume_from_checkpoint=str(resume_dir) if resume_dir else None, **train_kwargs
            )
        finally:
            if resume_dir is not None:
                shutil.rmtree(resume_dir.parent, ignore_errors=True)
    except BaseException as exc:
        if own:
            session.close(failed=exc)
        raise
    if own:
        session.close()
    return out
