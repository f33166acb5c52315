"""Where trainers run: the ``ComputeBackend`` as a Dagster resource."""

from __future__ import annotations

import dagster as dg

from spotshift.serving.launcher import ReplicaLauncher, open_launcher
from spotshift.training.backend import ComputeBackend, open_backend


class ComputeBackendResource(dg.ConfigurableResource):
    """The compute backend trainers are started with (``local``: processes on this machine)."""

    kind: str = "local"

    def backend(self) -> ComputeBackend:
        return open_backend(self.kind)


class ReplicaLauncherResource(dg.ConfigurableResource):
    """Where inference replicas are started and stopped (``local``: ``spotshift serve`` processes here)."""

    kind: str = "local"

    def launcher(self) -> ReplicaLauncher:
        return open_launcher(self.kind)
