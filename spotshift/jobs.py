"""Training jobs as declared entities (section ``jobs`` of the declarations file).

One declaration carries what every part of spotshift needs to know about a job: the trainer
(model config, dataset, steps, checkpoint cadence), placement (GPU requirements, allowed
locations, spot or not, max price) and economics (work hours, deadline).

``work_hours`` is the instance-hours the whole job needs on its GPU requirement; each training
step stands for ``work_hours / total_steps`` of that work. This is how a CPU-sized trainer in the
demo carries the cost of a real GPU run, and how the simulator and the migration economics share
units with the trainer.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from spotshift import registry
from spotshift.clock import parse_utc
from spotshift.errors import ConfigError, build_record

SECTION = "jobs"

DEFAULT_MODEL: dict[str, int] = {"vocab_size": 256, "d_model": 64, "n_layer": 2, "n_head": 4, "seq_len": 64}


@dataclass(frozen=True)
class TrainingJob:
    """A declared training job. Names are DNS-label-like (``[a-z0-9-]``) so they work as partition keys."""

    name: str
    dataset: str
    total_steps: int
    work_hours: float
    model: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MODEL))
    batch_size: int = 8
    learning_rate: float = 3e-4
    seed: int = 0
    checkpoint_every_steps: int = 500
    checkpoint_every_minutes: float = 15.0
    gpu_model: str | None = None
    gpu_count: int = 1
    min_topology_score: float = 0.0
    spot_allowed: bool = True
    max_usd_per_hour: float | None = None
    allowed_locations: list[str] = field(default_factory=lambda: ["*"])
    submitted_at: str | None = None  # ISO-8601 UTC (virtual clock)
    deadline_hours: float | None = None  # from submitted_at
    start_location: str | None = None  # provider/region to start in (None: let placement choose)

    def __post_init__(self) -> None:
        n = self.name
        if not n or any(c not in "abcdefghijklmnopqrstuvwxyz0123456789-_." for c in n):
            raise ConfigError(f"job {n!r}: name must use only a-z, 0-9, '-', '_' and '.'")
        checks: list[tuple[bool, str]] = [
            (bool(self.dataset), "dataset is empty"),
            (self.total_steps > 0, f"total_steps must be > 0, got {self.total_steps}"),
            (self.work_hours > 0, f"work_hours must be > 0, got {self.work_hours}"),
            (self.batch_size > 0, f"batch_size must be > 0, got {self.batch_size}"),
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
            (self.checkpoint_every_steps > 0, "checkpoint_every_steps must be > 0"),
            (self.checkpoint_every_minutes > 0, "checkpoint_every_minutes must be > 0"),
            (self.gpu_count > 0, f"gpu_count must be > 0, got {self.gpu_count}"),
            (0 <= self.min_topology_score <= 10, "min_topology_score must be within 0-10"),
            (self.max_usd_per_hour is None or self.max_usd_per_hour > 0, "max_usd_per_hour must be > 0"),
            (self.deadline_hours is None or self.deadline_hours > 0, "deadline_hours must be > 0"),
            (bool(self.allowed_locations), "allowed_locations is empty"),
        ]
        for ok, what in checks:
            if not ok:
                raise ConfigError(f"job {n!r}: {what}")
        if self.submitted_at is not None:
            parse_utc(self.submitted_at)
        for loc in [*self.allowed_locations, *([self.start_location] if self.start_location else [])]:
            if loc != "*" and "/" not in loc:
                raise ConfigError(
                    f"job {n!r}: location {loc!r} is not provider/region (or a pattern like aws/*)"
                )

    @property
    def hours_per_step(self) -> float:
        """Instance-hours of work one training step stands for."""
        return self.work_hours / self.total_steps

    @property
    def deadline_at(self) -> datetime | None:
        """Absolute deadline (UTC), when both ``submitted_at`` and ``deadline_hours`` are set."""
        if self.submitted_at is None or self.deadline_hours is None:
            return None
        return parse_utc(self.submitted_at) + timedelta(hours=self.deadline_hours)

    def allows(self, location: str) -> bool:
        """Whether ``provider/region`` matches one of ``allowed_locations`` (shell-style patterns)."""
        return any(fnmatch.fnmatchcase(location, pat) for pat in self.allowed_locations)

    def to_dict(self) -> dict[str, Any]:
        """The declaration as written to the YAML file."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainingJob:
        """Build from a YAML entry; unknown or mistyped keys raise :class:`ConfigError` naming the job."""
        return build_record(cls, raw, f"job {raw.get('name', '?')!r}")


def load_jobs() -> list[TrainingJob]:
    """Every declared job, validated."""
    return [TrainingJob.from_dict(e) for e in registry.entries(SECTION)]


def get_job(name: str) -> TrainingJob:
    """One declared job; :class:`ConfigError` when it is not declared."""
    return TrainingJob.from_dict(registry.get(SECTION, name))


def add_job(job: TrainingJob, *, replace: bool = False) -> None:
    """Declare ``job`` (atomically; an existing name is an error unless ``replace``)."""
    registry.upsert(SECTION, job.to_dict(), replace=replace)


def remove_job(name: str, *, force: bool = False) -> dict[str, Any]:
    """Undeclare job ``name`` and drop its placement state; returns what was removed.

    Refused (:class:`ConfigError` saying what to do) while a trainer of the job is alive, and while
    its placement state says it is starting, running or migrating — ``force`` overrides only the
    latter (a state left behind by a crashed run), never a live trainer. Checkpoints and dataset
    replicas in the stores are data, not declarations: they are kept.
    """
    from spotshift.placement.state import load_state, state_path
    from spotshift.training.backend import LocalProcessBackend

    get_job(name)  # not declared: the registry's one-line error
    live = [t for t in LocalProcessBackend().list() if t.job == name]
    if live:
        t = live[0]
        raise ConfigError(
            f"job {name!r} has a live trainer in {t.location} (pid {t.pid}): "
            f"stop it first with `spotshift trainers stop {name}`"
        )
    state = load_state(name)
    if state.status in ("starting", "running", "migrating") and not force:
        raise ConfigError(
            f"job {name!r} is {state.status} in {state.location or '?'} (placement state): wait for the move "
            "to finish, or pass --force if no run of it is in progress (no trainer process is alive)"
        )
    registry.remove(SECTION, name)
    path = state_path(name)
    had_state = path.exists()
    path.unlink(missing_ok=True)
    return {"job": name, "placement_state_removed": had_state, "status_was": state.status}
