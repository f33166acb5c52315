"""``TrainRequest``: what a :class:`~spotshift.training.backend.ComputeBackend` hands a trainer process.

Standard library only (the command line imports it). Written as ``request.json`` into the
trainer's working directory; the worker (``python -m spotshift.training.worker --request PATH``)
reads it back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spotshift.atomic import atomic_write_json
from spotshift.errors import ConfigError, build_record

#: environment variable naming the request file ``spotshift run`` writes for its command
REQUEST_ENV = "SPOTSHIFT_RUN_REQUEST"

ROLES = ("train", "shadow")


def job_train_config(job: Any) -> dict[str, Any]:
    """The trainer config fields a declared :class:`spotshift.jobs.TrainingJob` sets (``TrainConfig`` keys)."""
    return {
        "job": job.name,
        "dataset": job.dataset,
        "model": dict(job.model),
        "total_steps": job.total_steps,
        "batch_size": job.batch_size,
        "learning_rate": job.learning_rate,
        "seed": job.seed,
    }


@dataclass
class TrainRequest:
    """One trainer process: which job, where, from which checkpoint, until which step."""

    job: str
    location: str  # provider/region label of the compute
    workdir: str
    store_url: str  # the region's object store (checkpoints are committed there)
    dataset_source: str  # file:// URL or local path of the dataset files
    config: dict[str, Any]  # TrainConfig fields, used when starting from scratch
    resume: Any = "auto"  # "auto" (latest in store_url, if any) | "none" | {"store_url", "checkpoint_id"}
    until_step: int | None = None  # stop (with a checkpoint) after this step; default total_steps
    checkpoint_every_steps: int = 500
    checkpoint_every_minutes: float = 15.0
    replica_urls: list[str] = field(default_factory=list)  # cross-region copies of periodic checkpoints
    key_provider: str | None = None  # KeyProvider spec; None: $SPOTSHIFT_KEY_PROVIDER or local
    watchers: dict[str, str] | None = None  # notice kind -> base URL; None: from the environment
    poll_interval_s: float = 1.0
    sigterm_grace_s: float = 30.0
    role: str = "train"  # "shadow": K steps from a checkpoint, statistics, no upload
    shadow_steps: int = 0
    shadow_side: str = ""  # "source" | "target" for shadow runs
    overrides: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides (perturbations)
    min_step_seconds: float = 0.0  # pace steps (demo: stand-in for a GPU step time)
    hours_per_step: float = 0.0  # instance-hours one step stands for (jobs.TrainingJob.hours_per_step)
    pace_on_clock: bool = False  # one step per hours_per_step of a stepped virtual clock (training.pacing)
    usage: dict[str, Any] = field(default_factory=dict)  # market, instance_type, gpu_model, gpu_count, prices
    run_id: str | None = None
    command: list[str] | None = (
        None  # your own training command (``spotshift run``); None: the built-in trainer
    )
    command_cwd: str | None = None  # where the command runs (default: the trainer's working directory)

    def __post_init__(self) -> None:
        if self.command is not None and (
            not isinstance(self.command, list)
            or not self.command
            or not all(isinstance(a, str) for a in self.command)
        ):
            raise ConfigError(
                f"train request command must be a non-empty list of strings, got {self.command!r}"
            )
        if self.role not in ROLES:
            raise ConfigError(f"trainer role {self.role!r} is not one of {', '.join(ROLES)}")
        if "/" not in self.location:
            raise ConfigError(f"trainer location {self.location!r} is not provider/region")
        if self.role == "shadow" and (self.shadow_steps <= 0 or not isinstance(self.resume, dict)):
            raise ConfigError("a shadow run needs shadow_steps > 0 and an explicit checkpoint to resume")
        if self.checkpoint_every_steps <= 0 or self.checkpoint_every_minutes <= 0:
            raise ConfigError("checkpoint cadence must be > 0 steps and > 0 minutes")
        if self.pace_on_clock and self.hours_per_step <= 0:
            raise ConfigError("a trainer paced on the clock needs hours_per_step > 0")
        if not (isinstance(self.resume, dict) or self.resume in ("auto", "none")):
            raise ConfigError(f"resume must be 'auto', 'none' or a checkpoint reference, got {self.resume!r}")

    @property
    def name(self) -> str:
        """Lock/pid-file name: the job for training; ``<job>.shadow-<side>`` for shadow runs."""
        return self.job if self.role == "train" else f"{self.job}.shadow-{self.shadow_side or 'x'}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainRequest:
        return build_record(cls, raw, "train request")

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> TrainRequest:
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"train request {path}: {exc}") from None
        return cls.from_dict(raw)
