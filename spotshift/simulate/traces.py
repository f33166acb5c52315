"""Spot availability traces (DESIGN §4): read real ones, generate statistically similar ones.

Format (Can't Be Late, NSDI'24; skypilot-org/spot-traces)::

    {"metadata": {"gap_seconds": 600}, "data": [k0, k1, ...]}

``k`` is the number of spot instances that could be obtained at each tick; ``k == 0`` means the
zone had no spot capacity (a job running there is preempted). The published traces are not
licensed for redistribution, so spotshift generates similar ones: a two-state Markov chain per
zone (available / preempted) whose spell lengths are geometric with per-zone means drawn from the
published ranges:

* mean available spell 0.7-10 h (45 days of AWS V100 in 9 zones) — drawn log-uniformly;
* mean preemption spell 1.4-3.1 h (a 7-day preemption trace) — drawn uniformly;

which yields fractions of time available between 0.18 and 0.88, the published 0.17-0.90.
Generation is deterministic for a (seed, zone name) pair, independent of which other zones
are generated. A trace is indexed by time; shorter traces wrap around (:meth:`available_at`).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from spotshift.atomic import atomic_write_json
from spotshift.clock import parse_utc
from spotshift.errors import ConfigError, InputError, check_range
from spotshift.home import spotshift_home
from spotshift.jsondoc import parse_json

#: published ranges (DESIGN §4) the generator draws per-zone parameters from
MEAN_AVAILABLE_SPELL_HOURS = (0.7, 10.0)
MEAN_PREEMPTED_SPELL_HOURS = (1.4, 3.1)
FRACTION_AVAILABLE = (0.17, 0.90)
DEFAULT_GAP_SECONDS = 600
#: the longest tick a trace may have: availability sampled less than daily describes no spot market
MAX_GAP_SECONDS = 86_400
#: the longest trace: ten years of ticks (generating or resampling more is a typo, not a scenario)
MAX_TRACE_HOURS = 24 * 365 * 10.0


@dataclass(frozen=True)
class AvailabilityTrace:
    """Instances available per tick of ``gap_seconds``; ``name`` says where it came from."""

    gap_seconds: int
    data: tuple[int, ...]
    name: str = ""

    @property
    def hours(self) -> float:
        """Length of the trace in hours."""
        return len(self.data) * self.gap_seconds / 3600.0

    @property
    def available(self) -> tuple[bool, ...]:
        """``k > 0`` per tick."""
        return tuple(k > 0 for k in self.data)

    def available_at(self, hours: float) -> bool:
        """Whether spot capacity exists ``hours`` after the trace start (the trace wraps around)."""
        i = int(math.floor(hours * 3600.0 / self.gap_seconds + 1e-9)) % len(self.data)
        return self.data[i] > 0

    def resampled(self, gap_seconds: int, hours: float) -> list[bool]:
        """Availability on a grid of ``gap_seconds`` covering ``hours`` (wrapping around)."""
        import numpy as np

        n = int(math.ceil(hours * 3600.0 / gap_seconds - 1e-9))
        # available_at for every tick at once: tick i falls in trace slot floor(i x gap / own gap)
        slot = np.floor(np.arange(n) * gap_seconds / 3600.0 * 3600.0 / self.gap_seconds + 1e-9).astype(
            np.int64
        )
        data = np.asarray(self.data, dtype=np.int64)
        return (data[slot % len(data)] > 0).tolist()

    def to_json(self) -> dict[str, object]:
        """The published JSON shape."""
        return {"metadata": {"gap_seconds": self.gap_seconds}, "data": list(self.data)}


@dataclass(frozen=True)
class SpellStats:
    """Summary statistics of a trace, comparable with the published facts."""

    fraction_available: float
    mean_available_spell_hours: float | None
    mean_preempted_spell_hours: float | None
    available_spells: int
    preempted_spells: int
    hours: float

    def to_dict(self) -> dict[str, float | int | None]:
        """Plain dict (JSON-ready)."""
        return dict(self.__dict__)


def read_trace(path: str | Path) -> AvailabilityTrace:
    """Read a trace file; :class:`InputError` naming the file and the problem when it is malformed."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"availability trace {p}: no such file")
    raw = parse_json(p.read_bytes(), f"availability trace {p}")
    return parse_trace(raw, name=p.stem, where=f"availability trace {p}")


def parse_trace(raw: object, *, name: str = "", where: str = "availability trace") -> AvailabilityTrace:
    """Validate a decoded trace object (``{"metadata": {"gap_seconds": N}, "data": [...]}``)."""
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected a JSON object with 'metadata' and 'data'")
    meta = raw.get("metadata")
    if not isinstance(meta, dict) or "gap_seconds" not in meta:
        raise InputError(f"{where}: missing metadata.gap_seconds")
    gap = meta["gap_seconds"]
    check_range(gap, f"{where}: metadata.gap_seconds", low=0, high=MAX_GAP_SECONDS, error=InputError)
    if gap != int(gap):
        raise InputError(f"{where}: metadata.gap_seconds must be a whole number of seconds, got {gap!r}")
    data = raw.get("data")
    if not isinstance(data, list):
        raise InputError(f"{where}: 'data' must be a list of instance counts")
    if not data:
        raise InputError(f"{where}: 'data' is empty")
    out = []
    for i, k in enumerate(data):
        if (
            isinstance(k, bool)
            or not isinstance(k, (int, float))
            or not math.isfinite(k)
            or k < 0
            or k != int(k)
        ):
            raise InputError(f"{where}: data[{i}] = {k!r} is not a non-negative integer count")
        out.append(int(k))
    return AvailabilityTrace(int(gap), tuple(out), name)


def write_trace(path: str | Path, trace: AvailabilityTrace, *, start: datetime | None = None) -> Path:
    """Write ``trace`` in the published JSON shape, atomically; ``start`` (UTC) is recorded as
    ``metadata.start`` when the trace describes known times (readers of the shape ignore it)."""
    doc = trace.to_json()
    if start is not None:
        doc["metadata"] = {**doc["metadata"], "start": start.isoformat()}  # type: ignore[dict-item]
    return atomic_write_json(path, doc)


def available_from(trace: AvailabilityTrace, hours: float) -> AvailabilityTrace:
    """``trace`` with capacity everywhere from ``hours`` on (no wrap-around after it): the
    availability a job met when losses past that time were not enforced (the demo's injector stops
    delivering notices after a set number), so a baseline faces the same world."""
    cut = max(0, int(math.floor(hours * 3600.0 / trace.gap_seconds + 1e-9)))
    if cut >= len(trace.data):
        return trace
    return AvailabilityTrace(trace.gap_seconds, trace.data[:cut] + (1,) * (len(trace.data) - cut), trace.name)


def availability_dir() -> Path:
    """Where the spot availability the pipeline faces is kept: ``$SPOTSHIFT_HOME/traces``.

    One trace per location, ``<provider>_<region>.json`` with ``metadata.start``: the demo's
    preemption injector writes the traces it replays; a user may put real ones there. The cost
    baselines (:mod:`spotshift.costs.baselines`) replay them.
    """
    return spotshift_home() / "traces"


def save_availability(
    traces: Mapping[str, AvailabilityTrace], start: datetime, directory: str | Path | None = None
) -> Path:
    """Write one trace per ``provider/region`` of ``traces``, hour 0 at ``start``, into ``directory``."""
    d = Path(directory) if directory is not None else availability_dir()
    d.mkdir(parents=True, exist_ok=True)
    for location, trace in traces.items():
        write_trace(d / f"{location.replace('/', '_')}.json", trace, start=start)
    return d


def load_availability(
    location: str, directory: str | Path | None = None
) -> tuple[AvailabilityTrace, datetime, Path] | None:
    """The trace of ``location`` in ``directory`` with its start and file; None when there is none.

    :class:`InputError` for a malformed file or one without ``metadata.start``.
    """
    d = Path(directory) if directory is not None else availability_dir()
    path = d / f"{location.replace('/', '_')}.json"
    if not path.is_file():
        return None
    raw = parse_json(path.read_bytes(), f"availability trace {path}")
    trace = parse_trace(raw, name=location, where=f"availability trace {path}")
    start = raw["metadata"].get("start") if isinstance(raw, dict) else None
    if not isinstance(start, str):
        raise InputError(f"availability trace {path}: missing metadata.start (UTC time of its first tick)")
    try:
        return trace, parse_utc(start), path
    except ConfigError:
        raise InputError(
            f"availability trace {path}: metadata.start {start!r} is not an ISO-8601 time"
        ) from None


def spell_stats(trace: AvailabilityTrace | Sequence[bool], gap_seconds: int | None = None) -> SpellStats:
    """Fraction of time available and mean spell lengths (hours) of a trace or a boolean series."""
    if isinstance(trace, AvailabilityTrace):
        avail = list(trace.available)
        gap = trace.gap_seconds
    else:
        avail = list(trace)
        gap = gap_seconds or DEFAULT_GAP_SECONDS
    if not avail:
        raise InputError("availability trace: no ticks")
    runs: dict[bool, list[int]] = {True: [], False: []}
    current, length = avail[0], 0
    for a in avail:
        if a == current:
            length += 1
        else:
            runs[current].append(length)
            current, length = a, 1
    runs[current].append(length)
    h = gap / 3600.0

    def mean(xs: list[int]) -> float | None:
        return sum(xs) * h / len(xs) if xs else None

    return SpellStats(
        fraction_available=sum(avail) / len(avail),
        mean_available_spell_hours=mean(runs[True]),
        mean_preempted_spell_hours=mean(runs[False]),
        available_spells=len(runs[True]),
        preempted_spells=len(runs[False]),
        hours=len(avail) * h,
    )


@dataclass(frozen=True)
class ZoneParams:
    """Markov on/off parameters of one zone: mean spell lengths in hours."""

    mean_available_hours: float
    mean_preempted_hours: float

    @property
    def fraction_available(self) -> float:
        """Stationary probability of the available state."""
        return self.mean_available_hours / (self.mean_available_hours + self.mean_preempted_hours)


def _rng(seed: int, name: str) -> random.Random:
    digest = hashlib.blake2b(f"{seed}\x00{name}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def zone_params(seed: int, name: str) -> ZoneParams:
    """Per-zone rates drawn from the published ranges, deterministic for (seed, name)."""
    rng = _rng(seed, "params:" + name)
    lo, hi = MEAN_AVAILABLE_SPELL_HOURS
    up = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    down = rng.uniform(*MEAN_PREEMPTED_SPELL_HOURS)
    return ZoneParams(up, down)


def generate_trace(
    name: str,
    hours: float,
    *,
    seed: int = 0,
    gap_seconds: int = DEFAULT_GAP_SECONDS,
    params: ZoneParams | None = None,
    max_instances: int = 4,
) -> AvailabilityTrace:
    """A Markov on/off trace for zone ``name`` covering ``hours``; deterministic for (seed, name).

    Each tick the chain leaves the available state with probability ``gap / mean_available`` and the
    preempted state with probability ``gap / mean_preempted`` (geometric spells with those means);
    the first state is drawn from the stationary distribution. Available ticks carry a count of
    1..``max_instances`` instances, preempted ticks 0.
    """
    check_range(hours, "trace length (hours)", low=0, high=MAX_TRACE_HOURS, error=InputError)
    check_range(gap_seconds, "gap_seconds", low=0, high=MAX_GAP_SECONDS, integer=True, error=InputError)
    p = params or zone_params(seed, name)
    h = gap_seconds / 3600.0
    leave_up = min(1.0, h / p.mean_available_hours)
    leave_down = min(1.0, h / p.mean_preempted_hours)
    rng = _rng(seed, "trace:" + name)
    n = int(math.ceil(hours / h - 1e-9))
    up = rng.random() < p.fraction_available
    data = []
    for _ in range(n):
        data.append(rng.randint(1, max_instances) if up else 0)
        if rng.random() < (leave_up if up else leave_down):
            up = not up
    return AvailabilityTrace(gap_seconds, tuple(data), name)


def generate_traces(
    names: Iterable[str], hours: float, *, seed: int = 0, gap_seconds: int = DEFAULT_GAP_SECONDS
) -> dict[str, AvailabilityTrace]:
    """One generated trace per zone/region name (see :func:`generate_trace`)."""
    return {n: generate_trace(n, hours, seed=seed, gap_seconds=gap_seconds) for n in names}


def load_trace_dir(
    directory: str | Path, regions: Sequence[str], trace_map: Mapping[str, str] | None = None
) -> dict[str, AvailabilityTrace]:
    """Assign the traces of ``directory`` (``*.json``) to ``regions``.

    ``trace_map`` (region -> file name or path) wins; then a file whose stem equals the region name
    (``us-central1.json``; a ``provider/region`` also matches ``provider_region.json``); the
    remaining regions take the remaining files in sorted order, cycling when there are fewer files
    than regions. Every file named is read (and validated) once.
    """
    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"traces directory {d}: no such directory")
    files = sorted(p for p in d.glob("*.json") if p.is_file())
    if not files and not trace_map:
        raise InputError(f"traces directory {d}: no *.json trace files")
    cache: dict[Path, AvailabilityTrace] = {}

    def load(p: Path) -> AvailabilityTrace:
        if p not in cache:
            cache[p] = read_trace(p)
        return cache[p]

    out: dict[str, AvailabilityTrace] = {}
    by_stem = {p.stem: p for p in files}
    for region, ref in (trace_map or {}).items():
        if region not in regions:
            raise InputError(f"--trace-map: region {region!r} is not in the simulated market")
        p = Path(ref)
        out[region] = load(p if p.is_absolute() or p.exists() else d / ref)
    for region in regions:
        if region in out:
            continue
        stem = region.split("/")[-1]
        p = by_stem.get(region.replace("/", "_")) or by_stem.get(stem)
        if p is not None:
            out[region] = load(p)
    used = {id(t) for t in out.values()}
    spare = [p for p in files if id(cache.get(p)) not in used] or files
    rest = [r for r in regions if r not in out]
    if rest and not spare:
        raise InputError(f"traces directory {d}: no trace for region(s) {', '.join(rest)}")
    for i, region in enumerate(rest):
        out[region] = load(spare[i % len(spare)])
    return out
