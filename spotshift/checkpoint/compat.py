"""The checkpoint compatibility matrix: which runtimes have been proven to load each other's checkpoints.

Seed 000: a checkpoint written by one provider's image may not load on another's. A *runtime* is
what decides that: torch, Python (major.minor), CUDA and NCCL (empty when absent). Every checkpoint
records the versions of the process that wrote it (``versions`` in its metadata:
:func:`~spotshift.checkpoint.format.runtime_versions`, plus devices and dtypes for sessions); a
location's runtime is what runs there (:func:`runtime_for`):

* a ``runtimes`` entry in the declarations file (``spotshift.yaml``) named after the location
  (``provider/region``), else one named after its provider, e.g.
  ``{name: gcp, image: us-docker.pkg.dev/.../pytorch:2.13, torch: 2.13.0, python: "3.11", cuda: "12.4"}``;
* else the local runtime (this process's versions): the local compute backend runs every location here.

The matrix is the pairs (source runtime, target runtime) a move has already tried, from the facts
in ``raw.checkpoint_compatibility``: ``proven`` when a probation resumed in the target matched the
shadow comparison, ``known_bad`` when a probe of the pair failed in the target. The newest verdict
of a pair wins. Before a move (:func:`verdict`): the same runtime on both sides goes; a proven pair
goes; a known-bad pair is refused (:class:`IncompatibleCheckpoint`); an unproven pair is probed
(the move's probation is the probe and is marked so in the facts).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from spotshift import registry
from spotshift.checkpoint.format import runtime_versions
from spotshift.errors import ConfigError, SpotshiftError
from spotshift.locations import provider_of, region_of

SECTION = "runtimes"
TABLE = "raw.checkpoint_compatibility"
#: the versions that make a runtime (device and dtypes are the checkpoint's, recorded beside them)
RUNTIME_FIELDS = ("torch", "python", "cuda", "nccl")
#: what a pre-move check concludes
SAME, PROVEN, KNOWN_BAD, UNPROVEN = "same", "proven", "known_bad", "unproven"
#: the fact verdicts: a probe started, and its two outcomes
PROBING = "probing"
PAIR_VERDICTS = (PROVEN, KNOWN_BAD)


class IncompatibleCheckpoint(SpotshiftError):
    """A move to a runtime known not to load the checkpoint's runtime: refused before any byte moves."""


@dataclass(frozen=True)
class Runtime:
    """The versions that decide whether a checkpoint loads: torch, Python (major.minor), CUDA, NCCL."""

    torch: str
    python: str
    cuda: str = ""
    nccl: str = ""
    declared_by: str = (
        "local"  # runtimes entry it came from ("gcp", "gcp/us-central1"), "local", "checkpoint"
    )
    image: str = ""

    @property
    def key(self) -> str:
        """``torch=2.13.0 python=3.11 cuda=none nccl=none``: what the matrix compares."""
        return " ".join(f"{f}={getattr(self, f) or 'none'}" for f in RUNTIME_FIELDS)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_versions(cls, versions: Mapping[str, Any], *, declared_by: str, image: str = "") -> Runtime:
        """The runtime of a ``versions`` mapping (a checkpoint's metadata, a declaration);
        :class:`ConfigError` naming ``declared_by`` when torch or python is missing."""
        missing = [f for f in ("torch", "python") if not str(versions.get(f) or "").strip()]
        if missing:
            raise ConfigError(f"runtime {declared_by}: {' and '.join(missing)} version missing")
        python = str(versions["python"]).strip()
        return cls(
            torch=str(versions["torch"]).strip(),
            python=".".join(python.split(".")[:2]),  # patch releases keep the pickle/ABI: not a new runtime
            cuda=str(versions.get("cuda") or "").strip(),
            nccl=str(versions.get("nccl") or "").strip(),
            declared_by=declared_by,
            image=image,
        )


def local_runtime() -> Runtime:
    """This process's runtime (what the local compute backend runs in every location)."""
    return Runtime.from_versions(runtime_versions(), declared_by="local")


def declared_runtimes() -> dict[str, Runtime]:
    """The ``runtimes`` entries of the declarations file, by name (a provider or ``provider/region``);
    :class:`ConfigError` naming the entry when one is malformed."""
    out: dict[str, Runtime] = {}
    for entry in registry.entries(SECTION):
        name = str(entry["name"])
        if "/" in name:
            region_of(name)  # ConfigError when it is not provider/region
        unknown = set(entry) - {"name", "image", *RUNTIME_FIELDS}
        if unknown:
            raise ConfigError(f"runtime {name}: unknown field(s) {', '.join(sorted(unknown))}")
        out[name] = Runtime.from_versions(entry, declared_by=name, image=str(entry.get("image") or ""))
    return out


def runtime_for(location: str, declared: Mapping[str, Runtime] | None = None) -> Runtime:
    """The runtime that runs in ``location``: its region's declaration, else its provider's, else local."""
    declared = declared_runtimes() if declared is None else declared
    region = region_of(location)
    for name in (region, provider_of(region)):
        if name in declared:
            return declared[name]
    return local_runtime()


def checkpoint_runtime(meta: Mapping[str, Any], fallback: Runtime) -> Runtime:
    """The runtime that wrote a checkpoint (its metadata's ``versions``); ``fallback`` (the source
    location's runtime) for a checkpoint that recorded none."""
    versions = meta.get("versions") or {}
    if not versions.get("torch") or not versions.get("python"):
        return fallback
    return Runtime.from_versions(versions, declared_by="checkpoint")


@dataclass(frozen=True)
class MatrixEntry:
    """One pair of the matrix: its newest verdict and the move that established it."""

    source_runtime: str
    target_runtime: str
    verdict: str  # proven | known_bad
    reason: str
    job: str
    run_id: str
    checkpoint_id: str
    source_location: str
    target_location: str
    recorded_at: datetime
    evidence: int  # facts recorded for the pair (either verdict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["recorded_at"] = self.recorded_at.isoformat()
        return out


def load_matrix(con: Any) -> dict[tuple[str, str], MatrixEntry]:
    """The matrix from ``raw.checkpoint_compatibility``: per (source, target) runtime pair, its newest
    proven/known-bad fact (a known-bad fact wins a tie)."""
    rows = con.execute(
        f"""
        SELECT source_runtime, target_runtime, verdict, coalesce(reason, ''), job, run_id,
               coalesce(checkpoint_id, ''), source_location, target_location, recorded_at,
               count(*) OVER (PARTITION BY source_runtime, target_runtime) AS evidence
        FROM {TABLE}
        WHERE verdict IN ('{PROVEN}', '{KNOWN_BAD}')
        QUALIFY row_number() OVER (
            PARTITION BY source_runtime, target_runtime
            ORDER BY recorded_at DESC, (verdict = '{KNOWN_BAD}') DESC, run_id DESC) = 1
        ORDER BY source_runtime, target_runtime
        """
    ).fetchall()
    return {(r[0], r[1]): MatrixEntry(*r) for r in rows}


@dataclass(frozen=True)
class PairVerdict:
    """What the matrix says about moving a checkpoint of ``source`` into ``target``."""

    verdict: str  # same | proven | known_bad | unproven
    reason: str
    entry: MatrixEntry | None = None

    @property
    def allowed(self) -> bool:
        return self.verdict != KNOWN_BAD


def verdict(matrix: Mapping[tuple[str, str], MatrixEntry], source: Runtime, target: Runtime) -> PairVerdict:
    """The pre-move verdict of a pair (see the module doc)."""
    if source.key == target.key:
        return PairVerdict(SAME, f"same runtime on both sides ({source.key})")
    entry = matrix.get((source.key, target.key))
    if entry is None:
        return PairVerdict(UNPROVEN, f"{source.key} -> {target.key} never tried: the probation probes it")
    if entry.verdict == PROVEN:
        return PairVerdict(PROVEN, f"proven by move {entry.run_id} of {entry.job}", entry)
    return PairVerdict(
        KNOWN_BAD,
        f"checkpoints of {source.key} failed to resume on {target.key} "
        f"(move {entry.run_id} of {entry.job}: {entry.reason})",
        entry,
    )


def compat_fact(
    *,
    run_id: str,
    job: str,
    checkpoint_id: str,
    source_location: str,
    target_location: str,
    source: Runtime,
    target: Runtime,
    verdict: str,
    reason: str,
    recorded_at: datetime,
    devices: str = "",
    dtypes: str = "",
) -> dict[str, Any]:
    """One ``raw.checkpoint_compatibility`` row."""
    if verdict not in (PROBING, *PAIR_VERDICTS):
        raise ConfigError(f"compatibility verdict {verdict!r} is not one of probing, proven, known_bad")
    return {
        "recorded_at": recorded_at,
        "run_id": run_id,
        "job": job,
        "checkpoint_id": checkpoint_id,
        "source_location": source_location,
        "target_location": target_location,
        "source_runtime": source.key,
        "target_runtime": target.key,
        "source_versions": json.dumps(source.to_dict(), sort_keys=True),
        "target_versions": json.dumps(target.to_dict(), sort_keys=True),
        "devices": devices,
        "dtypes": dtypes,
        "verdict": verdict,
        "reason": reason[:500],
    }


def matrix_view(con: Any) -> dict[str, Any]:
    """The matrix with what decides it, JSON-ready: the local runtime, the declared ones, and every
    pair's newest verdict (what ``spotshift ckpt compat`` prints and ``checkpoint_compatibility``
    materializes)."""
    pairs = [e.to_dict() for e in load_matrix(con).values()]
    return {
        "local": local_runtime().to_dict(),
        "declared": {name: rt.to_dict() for name, rt in declared_runtimes().items()},
        "pairs": pairs,
        "proven": sum(p["verdict"] == PROVEN for p in pairs),
        "known_bad": sum(p["verdict"] == KNOWN_BAD for p in pairs),
    }
