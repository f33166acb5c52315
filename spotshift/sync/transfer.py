"""What a transfer cost (bytes, seconds, egress dollars) and the bounded-memory thread pool that moves bytes.

:class:`TransferStats` is the one record every push, replication and pull produces; its
:meth:`~TransferStats.to_row` is a row of warehouse table ``raw.transfers``.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from spotshift import warehouse as wh
from spotshift.clock import virtual_now
from spotshift.pricing.egress import egress_usd_per_gb
from spotshift.pricing.regions import region_of, zone_of
from spotshift.sync.workers import MAX_WORKERS as MAX_WORKERS
from spotshift.sync.workers import check_workers as check_workers


def _virtual_now() -> datetime:
    """Transfers are facts: stamped on the shared virtual clock like every other fact."""
    return virtual_now()


@dataclass
class TransferStats:
    """One transfer of a dataset snapshot. ``bytes_sent`` counts chunk, manifest and pointer bytes."""

    dataset: str
    src: str = ""
    dst: str = ""
    root: str = ""
    kind: str = "dataset"
    method: str = "cdc_delta"
    src_location: str | None = None
    dst_location: str | None = None
    started_at: datetime = field(default_factory=_virtual_now)
    seconds: float = 0.0
    #: content bytes read (or manifest bytes fetched) to decide what to send
    bytes_scanned: int = 0
    #: bytes of distinct chunks the target did not have
    bytes_changed: int = 0
    #: size of the whole snapshot (what a full copy would send)
    bytes_full: int = 0
    #: distinct chunks in the snapshot
    chunks_total: int = 0
    chunks_sent: int = 0
    bytes_sent: int = 0
    #: manifest + pointer bytes (part of bytes_sent)
    metadata_bytes_sent: int = 0
    files_total: int = 0
    files_changed: int = 0
    dirs_pruned: int = 0
    egress_usd_per_gb: float = 0.0
    transfer_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def egress_usd(self) -> float:
        return self.egress_usd_per_gb * self.bytes_sent / 1e9

    @property
    def transfer_amplification(self) -> float | None:
        """bytes_sent / bytes_changed; None when nothing changed."""
        return self.bytes_sent / self.bytes_changed if self.bytes_changed else None

    def price(self) -> None:
        """Set ``egress_usd_per_gb`` from the egress table when both locations are known.

        Locations are ``provider/region``, or ``provider/region/zone`` when the zone matters
        (cross-AZ transfers inside one region are billed, $0.01/GB).
        """
        if self.src_location and self.dst_location:
            src, dst = self.src_location, self.dst_location
            self.egress_usd_per_gb = egress_usd_per_gb(
                region_of(src), region_of(dst), src_zone=zone_of(src), dst_zone=zone_of(dst)
            )

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready (the ``--json`` output of the command line)."""
        d = asdict(self)
        d["started_at"] = self.started_at.isoformat()
        d["egress_usd"] = self.egress_usd
        d["transfer_amplification"] = self.transfer_amplification
        return d

    def to_row(self, run_id: str | None = None) -> dict[str, Any]:
        """One row of ``raw.transfers``."""
        return {
            "transfer_id": self.transfer_id,
            "kind": self.kind,
            "entity": self.dataset,
            "method": self.method,
            "src_location": self.src_location or "local",
            "dst_location": self.dst_location or "local",
            "started_at": self.started_at,
            "seconds": self.seconds,
            "bytes_scanned": self.bytes_scanned,
            "bytes_changed": self.bytes_changed,
            "bytes_full": self.bytes_full,
            "chunks_total": self.chunks_total,
            "chunks_sent": self.chunks_sent,
            "bytes_sent": self.bytes_sent,
            "egress_usd_per_gb": self.egress_usd_per_gb,
            "egress_usd": self.egress_usd,
            "transfer_amplification": self.transfer_amplification,
            "root": self.root,
            "run_id": run_id,
        }


def record_transfers(
    stats: list[TransferStats], run_id: str | None = None, warehouse: str | None = None
) -> Any:
    """Record transfers in ``raw.transfers`` of the warehouse (default: ``$SPOTSHIFT_HOME``'s) through
    :func:`spotshift.warehouse.record_facts`: landed in its fact lake, never waiting on its lock, never lost."""
    return wh.record_facts({"raw.transfers": [s.to_row(run_id) for s in stats]}, database=warehouse)


class BoundedPool:
    """A thread pool that keeps at most ``budget_bytes`` of payload in flight.

    :meth:`submit` blocks while the budget is used up (one task larger than the budget runs
    alone). The first task error stops further submissions and is re-raised by :meth:`submit`
    or on leaving the ``with`` block, after running tasks finish.
    """

    def __init__(self, workers: int, budget_bytes: int, name: str = "spotshift-io"):
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix=name)
        self._budget = max(1, budget_bytes)
        self._in_flight = 0
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self.lock = threading.Lock()  # for callers' shared counters

    def submit(self, size: int, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        with self._cond:
            while self._error is None and self._in_flight and self._in_flight + size > self._budget:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            self._in_flight += size
        fut = self._pool.submit(fn, *args)
        fut.add_done_callback(lambda f: self._done(f, size))
        return fut

    def _done(self, fut: Future[Any], size: int) -> None:
        with self._cond:
            self._in_flight -= size
            if not fut.cancelled() and fut.exception() is not None and self._error is None:
                self._error = fut.exception()
            self._cond.notify_all()

    def __enter__(self) -> BoundedPool:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=exc is not None)
        if exc is None and self._error is not None:
            raise self._error
