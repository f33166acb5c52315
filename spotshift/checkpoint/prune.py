"""``spotshift ckpt prune``: keep the newest N committed checkpoints of a job in a store.

Never deleted: the checkpoint ``latest`` names (even when it is not among the N newest), a
checkpoint an undelivered delta in ``checkpoints/<job>/incoming/`` names as its base (applying
the delta needs it), and anything not committed (a writer may be writing it; writers sweep their
own leftovers). A delta whose envelope cannot be read could need any checkpoint, so then nothing
is deleted.

A checkpoint is deleted ``COMMIT`` first — from that moment no reader counts it — then its parts
and metadata: a prune killed half-way leaves an uncommitted directory, never a committed
checkpoint with missing parts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from spotshift.checkpoint.format import (
    checkpoint_prefix,
    job_prefix,
    latest_checkpoint,
    list_checkpoints,
    read_latest_pointer,
)
from spotshift.checkpoint.migrate import delta_envelope
from spotshift.errors import ConfigError, IntegrityError, NotFoundError
from spotshift.sync.store import ChunkStore


@dataclass
class CheckpointPruneReport:
    """What ``ckpt prune`` kept and deleted (or, with ``dry_run``, would delete)."""

    store: str
    job: str
    keep: int
    dry_run: bool
    kept: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    latest: str | None = None
    delta_bases: dict[str, str] = field(default_factory=dict)  # delta key -> base checkpoint it needs
    blocked_by: str | None = None  # an unreadable delta: nothing was deleted

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def incoming_delta_bases(store: ChunkStore, job: str) -> dict[str, str]:
    """Undelivered deltas of ``job`` in ``store`` and the base checkpoint each one needs.

    :class:`IntegrityError` naming the first delta whose envelope cannot be read."""
    out = {}
    for key in sorted(store.list_keys(f"{job_prefix(job)}incoming/")):
        try:
            obj = store.get_bytes(key)
        except NotFoundError:  # applied and deleted while we listed
            continue
        envelope, _ = delta_envelope(obj, what=f"delta {key} in {store.url}")
        out[key] = str(envelope["base_id"])
    return out


def prune_checkpoints(
    store: ChunkStore, job: str, *, keep: int, dry_run: bool = False
) -> CheckpointPruneReport:
    """Delete all but the ``keep`` newest committed checkpoints of ``job`` (see the module docstring)."""
    if keep < 1:
        raise ConfigError(f"--keep must be >= 1 (the latest checkpoint is always kept), got {keep}")
    report = CheckpointPruneReport(store.url, job, keep, dry_run)
    committed = list_checkpoints(store, job)  # oldest step first
    report.latest = latest_checkpoint(store, job)
    try:
        report.delta_bases = incoming_delta_bases(store, job)
    except IntegrityError as exc:
        report.blocked_by = str(exc)
        report.kept = committed
        return report
    keep_ids = set(committed[-keep:]) | set(report.delta_bases.values())
    pointer = read_latest_pointer(store, job)  # what `latest` names, even if a newer one exists
    for named in (report.latest, pointer and str(pointer["checkpoint_id"])):
        if named:
            keep_ids.add(named)
    report.kept = [c for c in committed if c in keep_ids]
    for ckpt in committed:
        if ckpt in keep_ids:
            continue
        prefix = checkpoint_prefix(job, ckpt)
        objects = list(store.list_objects(prefix))
        report.deleted.append(ckpt)
        report.bytes_freed += sum(o.size for o in objects)
        if dry_run:
            continue
        store.delete(prefix + "COMMIT")  # from here on no reader counts it
        for o in objects:
            if o.key != prefix + "COMMIT":
                store.delete(o.key)
    return report
