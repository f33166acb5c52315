"""The virtual clock shared by the replay price feed, the preemption injector and the sensors.

``make demo`` speeds it up so weeks of market pass in minutes while the Dagster daemon, the
sensors and the trainers really run. The clock lives in ``$SPOTSHIFT_HOME/run/clock.json`` so every
process (daemon, run workers, trainers, the command line) reads the same time::

    virtual_now = origin_virtual + (wall_now - origin_wall) * speed

With no clock file the clock is the real UTC time. ``speed == 0`` freezes time (tests advance it
with :meth:`VirtualClock.advance`).

A *stepped* clock (:meth:`VirtualClock.stepped_at`, what ``make demo`` uses) never moves by itself:
its owner advances it event by event (:meth:`VirtualClock.advance`), so the same story gives the
same times on any machine and under any load, and the clock is stopped whenever its owner is.
Trainers pace on it (:attr:`VirtualClock.paces_on_clock`: one step per the hours it stands for of
virtual time) instead of sleeping wall seconds. :class:`ClockOwner` saves a clock for the life of a
``with`` block and leaves it stopped at its last reading when the block ends, however it ends.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from spotshift.atomic import atomic_write_json
from spotshift.errors import ConfigError
from spotshift.home import run_dir


def clock_path() -> Path:
    """Where the shared clock is persisted."""
    return run_dir() / "clock.json"


def as_utc(dt: datetime) -> datetime:
    """``dt`` as an aware UTC datetime; a naive one is taken to be UTC already."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def parse_utc(text: str) -> datetime:
    """Parse an ISO-8601 date or timestamp as an aware UTC datetime (naive input is taken as UTC).

    :class:`ConfigError` when ``text`` is not ISO-8601."""
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{text!r} is not an ISO-8601 date or timestamp") from None
    return as_utc(dt)


@dataclass(frozen=True)
class VirtualClock:
    """A linear map from wall-clock seconds to virtual UTC time."""

    origin_virtual: str  # ISO-8601 UTC
    origin_wall: float  # time.time() at origin
    speed: float = 1.0  # virtual seconds per wall second
    pace_trainers: bool = False  # trainers take one step per (hours of work it stands for) of virtual time
    pace_speed: float = 0.0  # the speed pacing follows while the clock is paused (0: ``speed``)
    stepped: bool = False  # moves only when its owner advances it (never with wall time)

    @classmethod
    def real(cls) -> VirtualClock:
        """The identity clock: virtual time is the real UTC time."""
        now = time.time()
        return cls(datetime.fromtimestamp(now, UTC).isoformat(), now, 1.0)

    @classmethod
    def starting(cls, start: datetime, speed: float, *, pace_trainers: bool = False) -> VirtualClock:
        """A clock reading ``start`` now and advancing ``speed`` virtual seconds per wall second."""
        if speed < 0:
            raise ConfigError(f"clock speed must be >= 0, got {speed}")
        return cls(start.astimezone(UTC).isoformat(), time.time(), float(speed), pace_trainers, float(speed))

    @classmethod
    def stepped_at(cls, start: datetime, *, pace_trainers: bool = False) -> VirtualClock:
        """A clock reading ``start`` that moves only by :meth:`advance` (event-driven virtual time)."""
        return cls(start.astimezone(UTC).isoformat(), time.time(), 0.0, pace_trainers, 0.0, True)

    @property
    def paces_on_clock(self) -> bool:
        """Trainers take one step per the virtual time it stands for, waiting on this clock."""
        return self.stepped and self.pace_trainers

    def now(self) -> datetime:
        """Current virtual time (aware, UTC)."""
        base = parse_utc(self.origin_virtual)
        return base + timedelta(seconds=(time.time() - self.origin_wall) * self.speed)

    def advance(self, seconds: float) -> VirtualClock:
        """A clock ``seconds`` of virtual time ahead of this one (same speed and pacing)."""
        return VirtualClock(
            (self.now() + timedelta(seconds=seconds)).isoformat(),
            time.time(),
            self.speed,
            self.pace_trainers,
            self.pace_speed,
            self.stepped,
        )

    def paused(self) -> VirtualClock:
        """This clock stopped at its current reading (pacing keeps following the running speed)."""
        return VirtualClock(
            self.now().isoformat(),
            time.time(),
            0.0,
            self.pace_trainers,
            self.pace_speed or self.speed,
            self.stepped,
        )

    def resumed(self, *, skip_seconds: float = 0.0) -> VirtualClock:
        """A paused clock running again at its pacing speed, ``skip_seconds`` of virtual time later
        (a stepped clock only moves ``skip_seconds`` on)."""
        if self.stepped:
            return self.advance(skip_seconds)
        speed = self.speed or self.pace_speed
        start = self.now() + timedelta(seconds=skip_seconds)
        return VirtualClock(
            start.isoformat(), time.time(), speed, self.pace_trainers, self.pace_speed or speed
        )

    def step_pace_seconds(self, hours_per_step: float) -> float:
        """Wall seconds a paced trainer spends per step (0 when pacing is off or time is frozen).

        A CPU-sized demo trainer takes milliseconds per step; pacing makes each step last the
        virtual time of the GPU work it stands for, so intervals, costs and deadlines line up.
        """
        speed = self.pace_speed or self.speed
        if not self.pace_trainers or self.stepped or speed <= 0 or hours_per_step <= 0:
            return 0.0
        return hours_per_step * 3600.0 / speed

    def virtual_seconds(self, wall_seconds: float) -> float:
        """Virtual seconds that pass in ``wall_seconds`` of wall time."""
        return wall_seconds * self.speed

    def save(self, path: Path | None = None) -> None:
        """Persist as the shared clock."""
        atomic_write_json(path or clock_path(), asdict(self))


def load_clock(path: Path | None = None) -> VirtualClock:
    """The shared clock, or the real-time clock when none was saved."""
    p = path or clock_path()
    try:
        raw = json.loads(p.read_text())
        return VirtualClock(
            str(raw["origin_virtual"]),
            float(raw["origin_wall"]),
            float(raw["speed"]),
            bool(raw.get("pace_trainers", False)),
            float(raw.get("pace_speed", 0.0)),
            bool(raw.get("stepped", False)),
        )
    except FileNotFoundError:
        return VirtualClock.real()
    except (ValueError, KeyError, TypeError):
        raise ConfigError(
            f"clock file {p}: malformed (expected origin_virtual, origin_wall, speed)"
        ) from None


def virtual_now() -> datetime:
    """Shortcut: the shared clock's current time."""
    return load_clock().now()


class ClockOwner:
    """Own the shared clock for the life of a ``with`` block; it is stopped when the owner stops.

    Entering saves ``clock``; leaving — normally, by an exception or by SIGTERM turned into
    ``SystemExit`` — saves it frozen at its last reading with pacing off, so no clock keeps running
    after the process that drove it is gone and no later trainer waits on a clock nobody advances.
    """

    def __init__(self, clock: VirtualClock, path: Path | None = None):
        self.path = path
        clock.save(path)

    def __enter__(self) -> ClockOwner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> VirtualClock:
        """Save the shared clock frozen at its current reading, pacing off; returns it."""
        stopped = VirtualClock(load_clock(self.path).now().isoformat(), time.time(), 0.0)
        stopped.save(self.path)
        return stopped
