"""Where a pool's queued job would burst, and what the trip costs: the cheapest feasible cloud
placement of the latest prices (the placement economics), and the data that leaves the site and the
checkpoint that comes back."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from spotshift import warehouse
from spotshift.errors import ConfigError
from spotshift.jobs import get_job
from spotshift.placement.inputs import decide_for_job
from spotshift.pricing.egress import DEFAULT_EGRESS
from spotshift.sync.datasets import get_dataset


@dataclass(frozen=True)
class CloudOffer:
    """Where a job would burst: the cheapest feasible cloud placement of the latest prices."""

    location: str
    instance_type: str
    market: str
    usd_hour: float
    egress_back_usd_per_gb: float
    """The cloud's internet egress rate: what the checkpoint's trip home costs per GB."""


OfferFn = Callable[[str, datetime], CloudOffer | None]


def burst_data_gb(job_name: str) -> tuple[float, float]:
    """(GB of the job's dataset that leave the site on a burst, GB of its checkpoint that come back).

    The dataset: the bytes of its declared source directory. The checkpoint: the newest committed
    one's bytes in ``raw.checkpoints`` when the warehouse has one, else 0."""
    job = get_job(job_name)
    total = 0
    try:
        src = Path(get_dataset(job.dataset).source)
        for root, _, files in os.walk(src):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    except (ConfigError, OSError):
        total = 0
    return total / 1e9, _checkpoint_bytes(job_name) / 1e9


def _checkpoint_bytes(job_name: str) -> int:
    try:
        with warehouse.connect() as con:
            row = warehouse.first_row(
                con, "SELECT bytes FROM raw.checkpoints WHERE job = ? ORDER BY step DESC LIMIT 1", [job_name]
            )
    except Exception:  # noqa: BLE001 - no warehouse yet, or no such column: nothing to carry back
        return 0
    return int(row[0] or 0) if row else 0


def default_offer(con: Any = None) -> OfferFn:
    """The cheapest feasible cloud placement of the latest prices, from the placement economics."""

    def offer(job_name: str, now: datetime) -> CloudOffer | None:
        return cloud_offer(job_name, now, con=con)

    return offer


def cloud_offer(job_name: str, now: datetime, *, con: Any = None) -> CloudOffer | None:
    """Where ``job_name`` would burst now: the target of the placement decision (eligible offers only:
    allowed locations, GPU model and count, topology, price cap), or None when nothing qualifies."""
    ctx = nullcontext(con) if con is not None else warehouse.connect()
    with ctx as c:
        try:
            decision = decide_for_job(c, job_name, now=now)
        except ConfigError:
            return None
    eligible = sorted((x for x in decision.candidates if x.eligible), key=lambda x: x.score_gpu_hour_usd)
    target = decision.target or (eligible[0] if eligible else None)
    if target is None:
        return None
    q = target.quote
    return CloudOffer(
        q.location, q.instance_type, q.market, q.price_usd_hour, DEFAULT_EGRESS[q.provider].internet
    )
