"""Where each simulated instance's metadata endpoint is: the local compute backend's registry.

``{"gcp/us-central1": "http://127.0.0.1:PORT", ...}`` in ``<run dir>/metadata-endpoints.json``,
written by the preemption injector (:mod:`spotshift.simulate.injector`) and read by
:func:`spotshift.training.preemption.watcher_urls_for`, so that a trainer in one simulated region
sees only that region's notices.
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

from spotshift.atomic import atomic_write_json
from spotshift.errors import ConfigError
from spotshift.home import run_dir


def metadata_endpoints_path() -> Path:
    """Per-location metadata endpoints of the local compute backend's simulated instances.

    ``{"gcp/us-central1": "http://127.0.0.1:PORT", ...}``, written by the preemption injector
    (:mod:`spotshift.simulate.injector`) so that a trainer in one simulated region sees only that
    region's notices.
    """
    return run_dir() / "metadata-endpoints.json"


def registered_endpoints() -> dict[str, str]:
    """The per-location endpoints in :func:`metadata_endpoints_path` (empty when none)."""
    try:
        raw = json.loads(metadata_endpoints_path().read_text())
    except FileNotFoundError:
        return {}
    except ValueError:
        raise ConfigError(f"{metadata_endpoints_path()}: not valid JSON") from None
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise ConfigError(f"{metadata_endpoints_path()}: expected {{location: url}}")
    return raw


def register_endpoints(endpoints: dict[str, str | None]) -> None:
    """Set (url) or remove (None) the metadata endpoint of each location, atomically."""
    path = metadata_endpoints_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = registered_endpoints()
        for location, url in endpoints.items():
            if url is None:
                current.pop(location, None)
            else:
                current[location] = url
        atomic_write_json(path, current)
