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

import contextlib
import fnmatch
import hashlib
import os
import pickle
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from spotshift import registry
from spotshift.atomic import atomic_write_bytes
from spotshift.clock import parse_utc
from spotshift.errors import ConfigError, NotFoundError, SpotshiftError, build_record, check_range
from spotshift.home import cache_dir
from spotshift.placement.state import delete_state, load_state
from spotshift.pricing.regions import check_location, check_location_pattern
from spotshift.teams import check_team
from spotshift.training.backend import LocalProcessBackend

SECTION = "jobs"

DEFAULT_MODEL: dict[str, int] = {"vocab_size": 256, "d_model": 64, "n_layer": 2, "n_head": 4, "seq_len": 64}
MODEL_KEYS = ("vocab_size", "d_model", "n_layer", "n_head", "seq_len")
OPTIONAL_KEYS = ("d_ff", "lora_rank")
#: upper bounds of the model config: far above what the trainer is for, below what would exhaust memory
MODEL_LIMITS: dict[str, int] = {
    "vocab_size": 1 << 20,
    "d_model": 1 << 16,
    "n_layer": 1 << 10,
    "n_head": 1 << 10,
    "seq_len": 1 << 20,
    "d_ff": 1 << 18,
    "lora_rank": 1 << 12,
}
INT64_MAX = 2**63 - 1  # BIGINT columns of the warehouse (steps, tokens)
#: bounds of hour figures: a million hours is 114 years
MAX_HOURS = 1e6


def check_model_config(cfg: Mapping[str, Any]) -> dict[str, int]:
    """Validated model config (``vocab_size``, ``d_model``, ``n_layer``, ``n_head``, ``seq_len``; optional
    ``d_ff`` (default 4 x d_model) and ``lora_rank`` (default 0: no adapters)).

    The one check of a model config: ``jobs add`` and the trainer call it, so a config the
    trainer would refuse is refused when the job is declared. :class:`ConfigError` names the key.
    """
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"model config must be a mapping of KEY: INT, got {type(cfg).__name__}")
    missing = [k for k in MODEL_KEYS if k not in cfg]
    if missing:
        raise ConfigError(f"model config is missing {', '.join(missing)}")
    unknown = sorted(set(cfg) - {*MODEL_KEYS, *OPTIONAL_KEYS})
    if unknown:
        raise ConfigError(f"model config has unknown key(s) {', '.join(map(str, unknown))}")
    out: dict[str, int] = {}
    for k, v in cfg.items():
        low = -1 if k == "lora_rank" else 0  # lora_rank 0 means no adapters
        out[k] = check_range(v, f"model {k}", low=low, high=MODEL_LIMITS[k], integer=True)
    if out["d_model"] % out["n_head"]:
        raise ConfigError(f"model d_model {out['d_model']} is not divisible by n_head {out['n_head']}")
    out.setdefault("d_ff", 4 * out["d_model"])
    if not out.get("lora_rank"):
        out.pop("lora_rank", None)  # absent and 0 are the same model (and the same checkpoint identity)
    return out


def command_argv(command: str) -> list[str]:
    """A declared ``--command`` split like a POSIX shell would (no shell runs it); :class:`ConfigError`
    when it is empty or its quotes do not close."""
    import shlex

    try:
        argv = shlex.split(command) if isinstance(command, str) else None
    except ValueError as exc:
        raise ConfigError(f"command {command!r}: {exc}") from None
    if not argv:
        raise ConfigError("command is empty")
    return argv


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
    command: str | None = (
        None  # your own training command (run under `spotshift run`); None: built-in trainer
    )
    command_cwd: str | None = None  # directory the command runs in (jobs add: the current directory)
    team: str | None = None  # team whose budget pays (spotshift budgets); None: no budget applies

    def __post_init__(self) -> None:
        n = self.name
        if (
            not isinstance(n, str)
            or not n
            or any(c not in "abcdefghijklmnopqrstuvwxyz0123456789-_." for c in n)
        ):
            raise ConfigError(f"job {n!r}: name must use only a-z, 0-9, '-', '_' and '.'")
        try:
            if not isinstance(self.dataset, str) or not self.dataset:
                raise ConfigError("dataset is empty")
            check_range(self.total_steps, "total_steps", low=0, high=INT64_MAX, integer=True)
            check_range(self.work_hours, "work_hours", low=0, high=MAX_HOURS)
            check_range(self.batch_size, "batch_size", low=0, high=1 << 20, integer=True)
            check_range(self.learning_rate, "learning_rate", low=0, high=1e3)
            check_range(self.seed, "seed", low=-1, high=INT64_MAX, integer=True)
            check_range(
                self.checkpoint_every_steps, "checkpoint_every_steps", low=0, high=INT64_MAX, integer=True
            )
            check_range(self.checkpoint_every_minutes, "checkpoint_every_minutes", low=0, high=MAX_HOURS * 60)
            check_range(self.gpu_count, "gpu_count", low=0, high=1024, integer=True)
            check_range(self.min_topology_score, "min_topology_score", low=0, high=10, low_inclusive=True)
            if self.max_usd_per_hour is not None:
                check_range(self.max_usd_per_hour, "max_usd_per_hour", low=0, high=1e6)
            if self.deadline_hours is not None:
                check_range(self.deadline_hours, "deadline_hours", low=0, high=MAX_HOURS)
                if self.deadline_hours < self.work_hours:
                    raise ConfigError(
                        f"deadline_hours {self.deadline_hours:g} is shorter than work_hours {self.work_hours:g}: "
                        "no placement can finish in time"
                    )
            check_model_config(self.model)
            if self.submitted_at is not None:
                parse_utc(self.submitted_at)
            if not self.allowed_locations or not isinstance(self.allowed_locations, list):
                raise ConfigError("allowed_locations must be a non-empty list of provider/region patterns")
            for pattern in self.allowed_locations:
                check_location_pattern(pattern, "allowed location")
            if self.command is not None:
                command_argv(self.command)
            if self.team is not None:
                check_team(self.team)
            if self.start_location is not None:
                check_location(self.start_location, "start_location")
                if not self.allows(self.start_location):
                    raise ConfigError(f"start_location {self.start_location} is not an allowed location")
        except SpotshiftError as exc:
            raise ConfigError(f"job {n!r}: {exc}") from None

    @property
    def argv(self) -> list[str] | None:
        """The declared command split into arguments (None for the built-in trainer)."""
        return command_argv(self.command) if self.command is not None else None

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


_LOADED: dict[str, tuple[TrainingJob, ...]] = {}  # declarations digest -> its validated jobs


def load_jobs() -> list[TrainingJob]:
    """Every declared job, validated.

    Each content of the declarations file is validated once: the jobs are kept (they are frozen)
    in memory and, pickled, in ``$SPOTSHIFT_HOME/cache/jobs.pickle`` keyed by the content digest
    (:func:`spotshift.registry.load_keyed`) and the fields of :class:`TrainingJob`, so a sensor
    tick or a fresh ``spotshift`` process does not rebuild thousands of jobs.
    """
    cached = _LOADED.get(registry.content_digest())
    if cached is not None:
        return list(cached)
    digest, data = registry.load_keyed()
    key = f"{digest}:{_schema()}".encode("ascii")
    path = cache_dir() / "jobs.pickle"
    jobs: tuple[TrainingJob, ...] | None = None
    with contextlib.suppress(OSError, pickle.UnpicklingError, EOFError, AttributeError):
        head, _, blob = path.read_bytes().partition(b"\n")
        jobs = pickle.loads(blob) if head == key else None
    if jobs is None:
        jobs = tuple(TrainingJob.from_dict(e) for e in data.get(SECTION, []))
        with contextlib.suppress(OSError):
            atomic_write_bytes(
                path, key + b"\n" + pickle.dumps(jobs, protocol=pickle.HIGHEST_PROTOCOL), fsync=False
            )
    _LOADED.clear()  # one content at a time
    _LOADED[digest] = jobs
    return list(jobs)


def _schema() -> str:
    """Digest of :class:`TrainingJob`'s fields: a cached job of another version is not reused."""
    names = ",".join(f"{f.name}:{f.type}" for f in fields(TrainingJob))
    return hashlib.blake2b(names.encode(), digest_size=8).hexdigest()


def get_job(name: str) -> TrainingJob:
    """One declared job; :class:`ConfigError` when it is not declared."""
    return TrainingJob.from_dict(registry.get(SECTION, name))


def add_job(job: TrainingJob, *, replace: bool = False) -> None:
    """Declare ``job`` (atomically; an existing name is an error unless ``replace``).

    Its dataset must be declared first (``spotshift datasets add``): a job training on nothing is
    refused here, not when its trainer starts.
    """
    _check_datasets([job], registry.entries("datasets"))
    registry.upsert(SECTION, job.to_dict(), replace=replace)


def _check_datasets(jobs: list[TrainingJob], datasets: list[dict[str, Any]]) -> None:
    """:class:`ConfigError` for the first job whose dataset is not among the ``datasets`` entries."""
    declared = {e.get("name") for e in datasets}
    for job in jobs:
        if job.dataset not in declared:
            raise ConfigError(
                f"job {job.name!r}: dataset {job.dataset!r} is not declared "
                f"(declare it with `spotshift datasets add {job.dataset} DIR`)"
            )


def remove_job(name: str, *, force: bool = False) -> dict[str, Any]:
    """Undeclare job ``name`` and drop its placement state; returns what was removed.

    Refused (:class:`ConfigError` saying what to do) while a trainer of the job is alive, and while
    its placement state says it is starting, running or migrating — ``force`` overrides only the
    latter (a state left behind by a crashed run), never a live trainer. Checkpoints and dataset
    replicas in the stores are data, not declarations: they are kept.
    """
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
    had_state = delete_state(name)
    return {"job": name, "placement_state_removed": had_state, "status_was": state.status}


def read_job_file(path: str | os.PathLike[str]) -> list[TrainingJob]:
    """The jobs of a YAML or JSON list (one declaration per item), every one validated.

    :class:`ConfigError` naming the file and the item when it is not a list of job declarations,
    and :class:`NotFoundError` when it does not exist.
    """
    import json

    import yaml

    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"job file {p} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".json":
            raw = json.loads(text)
        else:
            raw = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (ValueError, yaml.YAMLError):
        raise ConfigError(
            f"job file {p}: not valid {'JSON' if p.suffix.lower() == '.json' else 'YAML'}"
        ) from None
    if isinstance(raw, dict) and isinstance(raw.get(SECTION), list):
        raw = raw[SECTION]  # a spotshift.yaml-shaped file: its jobs section
    if not isinstance(raw, list):
        raise ConfigError(f"job file {p}: expected a list of job declarations")
    jobs, seen = [], set()
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ConfigError(f"job file {p}: item {i} is not a mapping")
        try:
            job = TrainingJob.from_dict(item)
        except ConfigError as exc:
            raise ConfigError(f"job file {p}: item {i}: {exc}") from None
        if job.name in seen:
            raise ConfigError(f"job file {p}: item {i}: job {job.name!r} appears twice")
        seen.add(job.name)
        jobs.append(job)
    return jobs


def import_jobs(jobs: list[TrainingJob], *, replace: bool = False) -> None:
    """Declare ``jobs`` in one atomic write of the declarations file (all or none).

    Every job's dataset must be declared; a name already declared is refused unless ``replace``.
    """
    wanted = {j.name: j.to_dict() for j in jobs}

    def mutate(data: dict[str, list[dict[str, Any]]]) -> None:
        _check_datasets(jobs, data.get("datasets", []))
        items = data.setdefault(SECTION, [])
        new = dict(wanted)
        for i, e in enumerate(items):
            if e["name"] in new:
                if not replace:
                    raise ConfigError(f"jobs: {e['name']!r} is already declared (use --replace)")
                items[i] = new.pop(e["name"])  # replaced in place
        items.extend(new.values())

    registry.update(mutate)
