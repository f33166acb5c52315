"""Where trainers run: the ``ComputeBackend`` as a Dagster resource."""

from __future__ import annotations

import dagster as dg

from spotshift.training.backend import ComputeBackend, open_backend


class ComputeBackendResource(dg.ConfigurableResource):
    """The compute backend trainers are started with (``local``: processes on this machine)."""

    kind: str = "local"

    def backend(self) -> ComputeBackend:
        return open_backend(self.kind)
