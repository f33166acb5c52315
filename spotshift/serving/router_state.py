"""What one ``spotshift router`` is configured with and counts, and the signal file it leaves for
the autoscaler (:mod:`spotshift.serving.router` routes; these are its plain values)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spotshift.errors import ConfigError
from spotshift.serving import replica_api as api
from spotshift.serving.latency import user_regions
from spotshift.serving.policy import CHEAP_SHARE, DEFAULT_SEED, ReplicaView

SIGNAL_FILE = "router_signal.json"


def signal_path(endpoint: str) -> Path:
    """The router's SLO signal for the autoscaler: ``$SPOTSHIFT_HOME/serving/<endpoint>/router_signal.json``."""
    return api.registry_path(endpoint).with_name(SIGNAL_FILE)


def read_router_signal(endpoint: str) -> dict[str, Any] | None:
    """The router's counters for ``endpoint`` (``requests``, ``slo_violations``,
    ``violations_by_user_region``, ``failed``, ``retries``, ``updated_at``); None when no router ran."""
    try:
        return json.loads(signal_path(endpoint).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        raise ConfigError(f"{signal_path(endpoint)}: not a router signal file") from None


def estimate_tokens(body: dict[str, Any]) -> float:
    """Tokens a completion will cost, known before it runs: ``ceil(len(prompt) / 4) + max_tokens``."""
    prompt = body.get("prompt", "")
    max_tokens = body.get("max_tokens", 16)
    n = len(prompt) if isinstance(prompt, str) else 0
    return math.ceil(n / 4) + (max_tokens if isinstance(max_tokens, int) else 16)


@dataclass
class RouterConfig:
    """How one router runs. ``replicas``: a fixed list (tests, benchmarks) instead of the registry."""

    endpoint: str
    slo_ms: float
    user_region: str = "us-east"
    users: dict[str, float] | None = None
    seed: int = DEFAULT_SEED
    cheap_share: float = CHEAP_SHARE
    capacity_tokens_s: float = 2400.0
    slots: int = 1
    timeout_s: float = 30.0
    max_connections: int = 64  # keep-alive connections per replica
    tls_dir: Path | None = None
    replicas: Sequence[ReplicaView] | None = None
    clock: Callable[[], Any] | None = None

    def __post_init__(self) -> None:
        api.check_endpoint_name(self.endpoint)
        if not (math.isfinite(self.slo_ms) and self.slo_ms > 0):
            raise ConfigError(f"router {self.endpoint}: --slo-ms must be a positive number")
        if self.user_region not in user_regions():
            raise ConfigError(f"router {self.endpoint}: user region {self.user_region!r} is unknown")
        if not 0 <= self.cheap_share <= 1:
            raise ConfigError(f"router {self.endpoint}: cheap_share must be within [0, 1]")


@dataclass
class Counters:
    """What the router counts (exposed on /metrics and written to the signal file)."""

    requests: int = 0
    ok: int = 0
    failed: int = 0
    retries: int = 0
    slo_violations: int = 0
    by_route: dict[str, int] = field(default_factory=lambda: {"cheapest": 0, "fastest": 0, "fallback": 0})
    violations_by_user_region: dict[str, int] = field(default_factory=dict)
    last_violation_at: str | None = None
