"""Per-job placement state: where a training job runs now, its cooldown, its last move, unfit targets.

One small JSON file per job, ``$SPOTSHIFT_HOME/placement/<job>.json``, written atomically (temp +
rename) under an exclusive lock so the sensor, the cutover and the rollback never lose each
other's updates. When the Dagster instance is on PostgreSQL the same documents live in its
database instead (:mod:`spotshift.statestore`: one transaction per update under a row lock), so
workers on several hosts share them; the functions below are the interface either way. Fields:

``status``          unplaced | starting | running | preempted | migrating | finished | stopped
``location``        ``provider/region`` the job runs in (or last ran in), ``null`` when never placed
``market``          spot | on_demand
``instance_type``, ``zone``, ``price_usd_hour``  what the placement pays
``placed_at``       when the current placement started (ISO-8601 UTC)
``cooldown_until``  no price-driven move before this time
``last_move``       ``{"from", "to", "at", "trigger", "run_key"}`` of the last move
``unfit``           ``{location: until}``: targets a rollback marked unfit, with the reason in ``unfit_reasons``
``version``         incremented by every write (optimistic checks, debugging)
``updated_at``      time of the last write
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from spotshift.atomic import atomic_write_json
from spotshift.clock import parse_utc
from spotshift.errors import ConfigError, IntegrityError, build_record
from spotshift.home import spotshift_home
from spotshift.statestore import shared_store

KIND = "placement"  # documents of this kind in the PostgreSQL state store
STATUSES = ("unplaced", "starting", "running", "preempted", "migrating", "finished", "stopped")
MARKETS = ("spot", "on_demand", "owned")  # owned: a private pool's GPUs (spotshift.pools.site)


def state_dir() -> Path:
    """Directory of the placement state files."""
    return spotshift_home() / "placement"


def state_path(job: str, directory: Path | None = None) -> Path:
    """The state file of one job (in ``directory``, default :func:`state_dir`)."""
    if not job or "/" in job or job.startswith("."):
        raise ConfigError(f"job name {job!r} cannot name a placement state file")
    return (directory or state_dir()) / f"{job}.json"


@dataclass
class PlacementState:
    """The placement of one job (see the module doc for the fields)."""

    job: str
    status: str = "unplaced"
    location: str | None = None
    market: str | None = None
    instance_type: str | None = None
    zone: str = ""
    price_usd_hour: float | None = None
    placed_at: str | None = None
    cooldown_until: str | None = None
    last_move: dict[str, Any] | None = None
    unfit: dict[str, str] = field(default_factory=dict)
    unfit_reasons: dict[str, str] = field(default_factory=dict)
    version: int = 0
    updated_at: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ConfigError(
                f"placement state of {self.job!r}: status {self.status!r} not one of {', '.join(STATUSES)}"
            )
        if self.market is not None and self.market not in MARKETS:
            raise ConfigError(
                f"placement state of {self.job!r}: market {self.market!r} not one of {', '.join(MARKETS)}"
            )
        if self.location is not None and "/" not in self.location:
            raise ConfigError(
                f"placement state of {self.job!r}: location {self.location!r} is not provider/region"
            )

    @property
    def running(self) -> bool:
        """The job occupies its placement (running, starting or being migrated away from)."""
        return self.status in ("running", "starting", "migrating") and self.location is not None

    def cooldown_until_dt(self) -> datetime | None:
        """``cooldown_until`` as an aware datetime."""
        return parse_utc(self.cooldown_until) if self.cooldown_until else None

    def unfit_at(self, now: datetime) -> dict[str, str]:
        """Locations still unfit at ``now`` -> reason (``unfit until ...: <why>``)."""
        out = {}
        for loc, until in self.unfit.items():
            if parse_utc(until) > now:
                why = self.unfit_reasons.get(loc, "marked unfit")
                out[loc] = f"unfit until {until}: {why}"
        return out

    def to_dict(self) -> dict[str, Any]:
        """The JSON document."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str) -> PlacementState:
        """Validate a decoded state document; :class:`IntegrityError` naming ``where`` when malformed."""
        return build_record(cls, raw, where, error=IntegrityError)


def load_state(job: str) -> PlacementState:
    """The job's state (an ``unplaced`` state when none was written yet): from PostgreSQL when the
    instance is on PostgreSQL (:mod:`spotshift.statestore`), else from its file."""
    p = state_path(job)
    store = shared_store()
    if store is not None:
        raw = store.get(KIND, job)
        return PlacementState(job) if raw is None else _from_store(raw, job, store)
    return _from_file(job, p)


def load_states(jobs: Iterable[str]) -> dict[str, PlacementState]:
    """:func:`load_state` of each of ``jobs`` in one pass (thousands of jobs per sensor tick): one
    query in PostgreSQL, else one directory listing and a read of the files that exist."""
    names = list(dict.fromkeys(jobs))
    store = shared_store()
    if store is not None:
        docs = store.get_many(KIND, names)
        return {n: PlacementState(n) if n not in docs else _from_store(docs[n], n, store) for n in names}
    d = state_dir()
    try:
        present = {e.name for e in os.scandir(d)}
    except FileNotFoundError:
        present = set()
    out = {}
    for n in names:
        p = state_path(n, d)
        out[n] = _from_file(n, p) if p.name in present else PlacementState(n)
    return out


def _from_file(job: str, p: Path) -> PlacementState:
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        return PlacementState(job)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IntegrityError(f"placement state {p}: not valid JSON (line {exc.lineno})") from None
    st = PlacementState.from_dict(raw, f"placement state {p}")
    if st.job != job:
        raise IntegrityError(f"placement state {p}: belongs to job {st.job!r}, not {job!r}")
    return st


def list_states() -> list[PlacementState]:
    """Every job's state, sorted by job name."""
    store = shared_store()
    if store is not None:
        return [_from_store(raw, str(raw.get("job")), store) for raw in store.list(KIND)]
    d = state_dir()
    if not d.is_dir():
        return []
    return [load_state(p.stem) for p in sorted(d.glob("*.json")) if not p.name.startswith(".")]


def delete_state(job: str) -> bool:
    """Drop the job's state (file or PostgreSQL row); whether there was one."""
    p = state_path(job)
    store = shared_store()
    if store is not None:
        return bool(store.delete(KIND, job))
    had = p.exists()
    p.unlink(missing_ok=True)
    return had


def _from_store(raw: dict[str, Any], job: str, store: Any) -> PlacementState:
    st = PlacementState.from_dict(raw, f"placement state of {job!r} in {store.describe()}")
    if st.job != job:
        raise IntegrityError(f"placement state of {job!r} in {store.describe()}: belongs to job {st.job!r}")
    return st


@contextlib.contextmanager
def _locked(job: str) -> Iterator[None]:
    p = state_path(job)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p.with_name(f".{p.name}.lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def update_state(job: str, mutate: Callable[[PlacementState], None], *, now: datetime) -> PlacementState:
    """Load, apply ``mutate`` in place, validate and write back atomically under the job's lock
    (in PostgreSQL: one transaction under the document's lock)."""
    store = shared_store()
    if store is not None:
        state_path(job)  # the same name rule

        def change(raw: dict[str, Any] | None) -> dict[str, Any]:
            st = PlacementState(job) if raw is None else _from_store(raw, job, store)
            mutate(st)
            st.version += 1
            st.updated_at = now.isoformat()
            return PlacementState.from_dict(st.to_dict(), f"placement state of {job!r}").to_dict()

        return _from_store(store.update(KIND, job, change), job, store)
    with _locked(job):
        st = load_state(job)
        mutate(st)
        st.version += 1
        st.updated_at = now.isoformat()
        st = PlacementState.from_dict(st.to_dict(), f"placement state of {job!r}")
        atomic_write_json(state_path(job), st.to_dict())
        return st


def record_placement(
    job: str,
    *,
    location: str,
    market: str,
    instance_type: str,
    now: datetime,
    price_usd_hour: float | None = None,
    zone: str = "",
    trigger: str = "place",
    run_key: str | None = None,
    cooldown_hours: float = 0.0,
    status: str = "running",
) -> PlacementState:
    """The job now runs at ``location`` (cutover done, placement made or recovery finished).

    A change of location is recorded as ``last_move`` and starts a cooldown of ``cooldown_hours``.
    """

    def mutate(st: PlacementState) -> None:
        if st.location is not None and st.location != location:
            st.last_move = {
                "from": st.location,
                "to": location,
                "at": now.isoformat(),
                "trigger": trigger,
                "run_key": run_key,
            }
            if cooldown_hours > 0:
                st.cooldown_until = (now + timedelta(hours=cooldown_hours)).isoformat()
        st.status = status
        st.location, st.market, st.instance_type = location, market, instance_type
        st.zone, st.price_usd_hour = zone, price_usd_hour
        st.placed_at = now.isoformat()

    return update_state(job, mutate, now=now)


def set_status(job: str, status: str, *, now: datetime) -> PlacementState:
    """Change only the status (preempted, migrating, finished, stopped, ...)."""

    def mutate(st: PlacementState) -> None:
        st.status = status

    return update_state(job, mutate, now=now)


def mark_unfit(job: str, location: str, *, until: datetime, reason: str, now: datetime) -> PlacementState:
    """Keep the job away from ``location`` until ``until`` (a rolled-back migration target)."""

    def mutate(st: PlacementState) -> None:
        st.unfit[location] = until.isoformat()
        st.unfit_reasons[location] = reason

    return update_state(job, mutate, now=now)
