"""The preemption injector of the local compute backend: spot availability traces -> real notices.

Each simulated region gets its own instance-metadata server (:class:`MetadataServer`, speaking the
AWS IMDS / GCP metadata / Azure Scheduled Events protocols), registered for that location so a
trainer started there polls it (:func:`spotshift.training.preemption_endpoints.register_endpoints`). On every
:meth:`PreemptionInjector.tick` the injector reads each region's availability trace at the shared
virtual clock's time; a spot trainer running in a region whose capacity is gone receives a notice
in its provider's format, exactly as on a real instance. The trainer then checkpoints at the next
step boundary, writes the notice to the region store's ``events/preemption/`` and exits — which is
what ``preemption_sensor`` reacts to. A trainer that ignores the notice past the provider's warning
window gets SIGTERM (the provider shutting the VM down) and, after a grace period, SIGKILL.

On-demand trainers are never preempted. Traces are the DESIGN §4 JSON shape: generated ones by
default (:func:`spotshift.simulate.traces.generate_traces`), a user's real files when given.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from spotshift.pricing.regions import provider_of
from spotshift.simulate.traces import AvailabilityTrace
from spotshift.training.backend import ComputeBackend, TrainerInfo
from spotshift.training.notice_server import MetadataServer
from spotshift.training.preemption import PROVIDER_KIND, WARNING_S
from spotshift.training.preemption_endpoints import register_endpoints


@dataclass
class Injection:
    """One notice the injector delivered."""

    job: str
    location: str
    pid: int
    provider_notice: str
    virtual_at: datetime
    wall_at: float
    escalated: str = ""  # "" | "sigterm" | "sigkill"

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "location": self.location,
            "pid": self.pid,
            "provider_notice": self.provider_notice,
            "virtual_at": self.virtual_at.isoformat(),
            "escalated": self.escalated,
        }


@dataclass
class PreemptionInjector:
    """Deliver provider-format preemption notices to spot trainers from availability traces.

    ``traces`` maps ``provider/region`` to its trace; trace hour 0 is ``origin`` on the virtual
    clock. Use as a context manager (starts one metadata server per region, unregisters on exit).
    """

    traces: Mapping[str, AvailabilityTrace]
    origin: datetime
    backend: ComputeBackend
    kill_grace_s: float = 10.0
    servers: dict[str, MetadataServer] = field(default_factory=dict)
    injections: list[Injection] = field(default_factory=list)
    _pending: dict[int, Injection] = field(default_factory=dict)

    def __enter__(self) -> PreemptionInjector:
        for location in self.traces:
            if provider_of(location) in PROVIDER_KIND:
                self.servers[location] = MetadataServer()
        register_endpoints({loc: srv.url for loc, srv in self.servers.items()})
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the metadata servers and unregister their endpoints."""
        register_endpoints(dict.fromkeys(self.servers))
        for srv in self.servers.values():
            srv.close()
        self.servers.clear()

    def capacity(self, location: str, now: datetime) -> bool:
        """Whether ``location`` has spot capacity at virtual time ``now`` (no trace: always)."""
        trace = self.traces.get(location)
        if trace is None:
            return True
        return trace.available_at(max(0.0, (now - self.origin).total_seconds() / 3600.0))

    def tick(self, now: datetime, *, deliver: bool = True) -> list[Injection]:
        """Deliver notices due at virtual time ``now`` (unless ``deliver`` is False: then capacity
        losses are ignored); escalate notices a trainer ignored. Returns the new notices."""
        delivered: list[Injection] = []
        live_pids = set()
        for info in self.backend.list():
            if not info.alive or info.role != "train":
                continue
            live_pids.add(info.pid)
            if info.pid in self._pending:
                self._escalate(info, self._pending[info.pid])
                continue
            if not deliver or _market_of(info) != "spot" or self.capacity(info.location, now):
                continue
            server = self.servers.get(info.location)
            if server is None:
                continue
            provider = provider_of(info.location)
            notice = server.preempt(provider)
            inj = Injection(info.job, info.location, info.pid, notice, now, time.monotonic())
            self._pending[info.pid] = inj
            self.injections.append(inj)
            delivered.append(inj)
        for pid in [p for p in self._pending if p not in live_pids]:
            # the trainer is gone: the "instance" is reclaimed; the next instance starts without notices
            inj = self._pending.pop(pid)
            srv = self.servers.get(inj.location)
            if srv is not None and not any(i.location == inj.location for i in self._pending.values()):
                srv.clear()
        return delivered

    def _escalate(self, info: TrainerInfo, inj: Injection) -> None:
        warning = WARNING_S.get(PROVIDER_KIND.get(provider_of(info.location), ""), 30.0)
        waited = time.monotonic() - inj.wall_at
        if waited > warning + self.kill_grace_s and inj.escalated != "sigkill":
            with contextlib.suppress(ProcessLookupError):
                os.kill(info.pid, signal.SIGKILL)
            inj.escalated = "sigkill"
        elif waited > warning and not inj.escalated:
            with contextlib.suppress(ProcessLookupError):
                os.kill(info.pid, signal.SIGTERM)
            inj.escalated = "sigterm"


def _market_of(info: TrainerInfo) -> str:
    """The market a trainer pays for (from its request's usage); unknown counts as spot."""
    try:
        raw = json.loads((Path(info.workdir) / "request.json").read_text())
    except (OSError, ValueError):
        return "spot"
    return str((raw.get("usage") or {}).get("market") or "spot")
