"""Inference endpoints as declared entities, in the declarations file next to datasets and jobs.

An endpoint names the model it serves (a declared training job — its newest verified checkpoint — or
one checkpoint path), the latency SLO its users are promised, where its users are (user regions of
:mod:`spotshift.serving.latency` and their share of requests), where replicas may run, and the
penalty per SLO violation the business agreed (``latency_slo_violation_cost``). Replicas
(``spotshift serve``), the router and the autoscaler read it; ``spotshift endpoints`` edits it.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from spotshift import registry
from spotshift.checkpoint.format import parse_checkpoint_path
from spotshift.cloud_errors import redact_url
from spotshift.errors import ConfigError, SpotshiftError, build_record, check_range
from spotshift.pricing.regions import check_location_pattern
from spotshift.serving.latency import user_regions
from spotshift.serving.replica_api import check_endpoint_name, live_replicas
from spotshift.serving.simulate import DEFAULT_USERS
from spotshift.teams import check_team

SECTION = "endpoints"
MAX_SLO_MS = 600_000.0
#: default penalty per request over the SLO, USD: the figure the cost fixtures use; an endpoint
#: states its own with ``--usd-per-violation`` (it is a business agreement, not a market price)
DEFAULT_USD_PER_VIOLATION = 0.002


def default_users() -> dict[str, float]:
    """The simulator's default user mix (us-east 0.4, us-west 0.2, eu-west 0.25, ap-northeast 0.15)."""
    return dict(DEFAULT_USERS)


@dataclass(frozen=True)
class Endpoint:
    """A declared endpoint. ``model`` is a job name or a checkpoint path (``<store>/checkpoints/<job>[/<id>]``);
    ``users`` maps user region -> share of requests (normalised to sum 1 on declaration)."""

    name: str
    model: str
    slo_ms: float
    users: dict[str, float] = field(default_factory=default_users)
    allowed_locations: list[str] = field(default_factory=lambda: ["*"])
    usd_per_violation: float = DEFAULT_USD_PER_VIOLATION
    team: str | None = None  # team whose budget pays (spotshift budgets); None: no budget applies

    def __post_init__(self) -> None:
        try:
            check_endpoint_name(self.name)
            if not isinstance(self.model, str) or not self.model.strip():
                raise ConfigError("model is empty (a job name or a checkpoint path)")
            if "@" in self.model.partition("://")[2].partition("/")[0]:
                raise ConfigError(
                    f"model {redact_url(self.model)!r} carries credentials in its URL: stores take them from the environment"
                )
            check_range(self.slo_ms, "slo_ms", low=0, high=MAX_SLO_MS)
            check_range(self.usd_per_violation, "usd_per_violation", low=0, high=1e6, low_inclusive=True)
            if not isinstance(self.users, dict) or not self.users:
                raise ConfigError("users must name at least one user region")
            for region, share in self.users.items():
                if region not in user_regions():
                    raise ConfigError(f"user region {region!r} is not one of {', '.join(user_regions())}")
                check_range(share, f"share of {region}", low=0, high=1e9)
            if not isinstance(self.allowed_locations, list) or not self.allowed_locations:
                raise ConfigError("allowed_locations must be a non-empty list of provider/region patterns")
            for pattern in self.allowed_locations:
                check_location_pattern(pattern, "allowed location")
            if self.team is not None:
                check_team(self.team)
        except SpotshiftError as exc:
            raise ConfigError(f"endpoint {self.name!r}: {exc}") from None

    @property
    def model_kind(self) -> str:
        """``checkpoint`` when ``model`` is a checkpoint path, else ``job``."""
        return "checkpoint" if "/checkpoints/" in self.model or "://" in self.model else "job"

    def allows(self, location: str) -> bool:
        """Whether ``provider/region`` matches one of ``allowed_locations`` (shell-style patterns)."""
        return any(fnmatch.fnmatchcase(location, pat) for pat in self.allowed_locations)

    def to_dict(self) -> dict[str, Any]:
        """The declaration as written to the YAML file."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Endpoint:
        """Build from a YAML entry; unknown or mistyped keys raise :class:`ConfigError` naming the endpoint."""
        return build_record(cls, raw, f"endpoint {raw.get('name', '?')!r}")


def normalised_users(users: dict[str, float]) -> dict[str, float]:
    """``users`` with shares scaled to sum 1 (rounded to 6 places); shares must be finite and > 0."""
    total = sum(users.values())
    if not (math.isfinite(total) and total > 0):
        raise ConfigError("user shares must be positive numbers")
    return {u: round(s / total, 6) for u, s in sorted(users.items())}


def check_model_ref(model: str) -> None:
    """A job name must be declared; a checkpoint path must parse (it is opened when a replica starts)."""
    if "/checkpoints/" in model or "://" in model:
        parse_checkpoint_path(model)
        return
    if not any(e.get("name") == model for e in registry.entries("jobs")):
        raise ConfigError(
            f"model {model!r} is neither a declared job (spotshift jobs list) nor a checkpoint path "
            "(<store>/checkpoints/<job>[/<id>])"
        )


def add_endpoint(endpoint: Endpoint, *, replace: bool = False) -> None:
    """Declare ``endpoint`` (atomically; an existing name is an error unless ``replace``)."""
    check_model_ref(endpoint.model)
    registry.upsert(SECTION, endpoint.to_dict(), replace=replace)


def load_endpoints() -> list[Endpoint]:
    """Every declared endpoint, validated, in file order."""
    return [Endpoint.from_dict(e) for e in registry.entries(SECTION)]


def get_endpoint(name: str) -> Endpoint:
    """One declared endpoint; :class:`ConfigError` when it is not declared."""
    return Endpoint.from_dict(registry.get(SECTION, name))


def declared_model(name: str) -> str:
    """The model endpoint ``name`` declares; empty when it is not declared."""
    for e in registry.entries(SECTION):  # one read: get_endpoint would read the file again
        if e.get("name") == name:
            return Endpoint.from_dict(e).model
    return ""


def set_endpoint_model(name: str, model: str, *, only_if: str | None = None) -> bool:
    """Declare ``model`` as what endpoint ``name`` serves, in one atomic write of the declarations
    file (under its lock, temp + rename); with ``only_if``, only while it declares that model.
    False (nothing written) when ``name`` is not declared, ``only_if`` does not match, or it
    already declares ``model``. A cutover's promotion and failback use it (:mod:`spotshift.serving.cutover_state`)."""
    changed = False

    def mutate(data: dict[str, list[dict[str, Any]]]) -> None:
        nonlocal changed
        for e in data.get(SECTION, []):
            if e.get("name") != name or e.get("model") == model:
                continue
            if only_if is None or e.get("model") == only_if:
                Endpoint.from_dict({**e, "model": model})  # still a valid declaration
                e["model"] = model
                changed = True

    if declared_model(name):
        registry.update(mutate)
    return changed


def remove_endpoint(name: str) -> Endpoint:
    """Undeclare endpoint ``name``; refused while a live replica serves it. Returns what was removed."""
    endpoint = get_endpoint(name)
    live = live_replicas(name, include_draining=True)
    if live:
        r = live[0]
        raise ConfigError(
            f"endpoint {name!r} has {len(live)} live replica(s) ({r.replica_id} at {r.url}, pid {r.pid}): stop them first"
        )
    registry.remove(SECTION, name)
    return endpoint
