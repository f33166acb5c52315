"""Where a job's bytes are: the dataset and latest-checkpoint bytes each location holds
(:class:`~spotshift.placement.scoring.DataFootprint`), read from the warehouse.

* the dataset: destinations (and sources) of ``raw.transfers`` of kind ``dataset`` for the latest
  manifest root, plus the dataset's declared ``location`` in the registry when it has one; older
  roots count as stale replicas holding all but the bytes the last sync found changed;
* the checkpoint: where ``raw.checkpoints`` wrote the latest one and where ``raw.transfers`` of
  kind ``checkpoint`` delivered it; places holding older checkpoints keep the share tensor deltas
  of this job did not resend (median ``bytes_sent / bytes_full``, 1.0 unknown).

The ``*_from`` functions take the rows already read, so the batched tick
(:mod:`spotshift.placement.batch`) reads them once for every job.
"""

from __future__ import annotations

import statistics
from typing import Any

from spotshift import registry
from spotshift.jobs import TrainingJob
from spotshift.placement.scoring import DataFootprint
from spotshift.warehouse import first_row as _first


def load_footprint(con: Any, job: TrainingJob) -> DataFootprint:
    """Dataset and latest-checkpoint bytes of ``job`` and what of them each location holds."""
    dataset_bytes, dataset_present = _dataset_presence(con, job.dataset)
    ckpt_bytes, ckpt_present = _checkpoint_presence(con, job.name)
    return DataFootprint(dataset_bytes, ckpt_bytes, dataset_present, ckpt_present)


def _dataset_presence(con: Any, dataset: str) -> tuple[int, dict[str, int]]:
    rows = con.execute(
        "SELECT src_location, dst_location, root, bytes_full, bytes_changed FROM raw.transfers "
        "WHERE kind = 'dataset' AND entity = ? ORDER BY started_at, transfer_id",
        [dataset],
    ).fetchall()
    return dataset_presence_from(rows, _declared_dataset_location(dataset))


def dataset_presence_from(rows: list[tuple[Any, ...]], declared: str | None) -> tuple[int, dict[str, int]]:
    """(dataset bytes, bytes present per location) from the dataset's ``raw.transfers`` rows
    ``(src_location, dst_location, root, bytes_full, bytes_changed)`` in time order."""
    if not rows:
        return 0, {}
    latest_root, full, changed = rows[-1][2], int(rows[-1][3] or 0), int(rows[-1][4] or 0)
    present: dict[str, int] = {}
    stale_keep = max(0, full - changed)
    for src, dst, root, _, _ in rows:
        if root == latest_root:
            for loc in (src, dst):
                if loc:
                    present[loc] = full
        elif dst and present.get(dst, 0) < full:
            present[dst] = stale_keep
    if declared:
        present.setdefault(declared, stale_keep)
    return full, present


def _declared_dataset_location(dataset: str) -> str | None:
    return declared_dataset_locations().get(dataset)


def declared_dataset_locations() -> dict[str, str]:
    """The declared ``provider/region`` of every declared dataset that has one, by name (the
    location is optional)."""
    return {
        str(e["name"]): e["location"]
        for e in registry.entries("datasets")
        if isinstance(e.get("location"), str) and "/" in e["location"]
    }


def _checkpoint_presence(con: Any, job: str) -> tuple[int, dict[str, int]]:
    latest = _first(
        con,
        "SELECT checkpoint_id, location, bytes FROM raw.checkpoints WHERE job = ? "
        "ORDER BY step DESC, created_at DESC LIMIT 1",
        [job],
    )
    if latest is None:
        return 0, {}
    ckpt_id = latest[0]
    ratios = [
        r[0] / r[1]
        for r in con.execute(
            "SELECT bytes_sent, bytes_full FROM raw.transfers WHERE kind = 'checkpoint' AND entity = ? "
            "AND method = 'tensor_delta' AND bytes_full > 0 AND bytes_sent IS NOT NULL",
            [job],
        ).fetchall()
    ]
    older = con.execute(
        "SELECT DISTINCT location FROM raw.checkpoints WHERE job = ? AND checkpoint_id <> ? "
        "UNION SELECT DISTINCT dst_location FROM raw.transfers WHERE kind = 'checkpoint' AND entity = ? "
        "AND root <> ?",
        [job, ckpt_id, job, ckpt_id],
    ).fetchall()
    delivered = con.execute(
        "SELECT DISTINCT dst_location FROM raw.transfers WHERE kind = 'checkpoint' AND entity = ? AND root = ?",
        [job, ckpt_id],
    ).fetchall()
    return checkpoint_presence_from(latest, ratios, [r[0] for r in older], [r[0] for r in delivered])


def checkpoint_presence_from(
    latest: tuple[Any, ...] | None, ratios: list[float], older: list[str | None], delivered: list[str | None]
) -> tuple[int, dict[str, int]]:
    """(checkpoint bytes, bytes present per location) of a job's latest checkpoint ``(id, location,
    bytes)``: ``older`` places hold older checkpoints (they keep the share tensor deltas did not resend,
    median of ``ratios`` = bytes_sent / bytes_full), ``delivered`` ones received the latest."""
    if latest is None:
        return 0, {}
    loc, nbytes = latest[1], int(latest[2] or 0)
    keep = int(nbytes * (1.0 - min(1.0, statistics.median(ratios)))) if ratios else 0
    present: dict[str, int] = {}
    for where in older:
        if where:
            present[where] = keep
    for where in delivered:
        if where:
            present[where] = nbytes
    if loc:
        present[loc] = nbytes
    return nbytes, present


__all__ = [
    "checkpoint_presence_from",
    "dataset_presence_from",
    "declared_dataset_locations",
    "load_footprint",
]
