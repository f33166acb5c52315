"""A dev/test environment as a declared entity (section ``devenvs`` of the declarations file).

Standard library only (the command line validates declarations before heavy imports).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spotshift import registry
from spotshift.errors import ConfigError, SpotshiftError, build_record, check_range
from spotshift.pricing.catalog import canonical_gpu_model
from spotshift.pricing.regions import check_location, check_location_pattern

SECTION = "devenvs"
#: seed 001: "automated downsizing of idle notebooks and training environments after 4 hours"
DEFAULT_IDLE_HOURS = 4.0
POLICIES = ("hibernate", "cpu")
#: what the ``cpu`` policy pays for the environment while it is downsized: AWS m7i.xlarge (4 vCPU,
#: 16 GiB) on demand in us-east-1, https://aws.amazon.com/ec2/pricing/on-demand/ (2025)
DEFAULT_CPU_USD_PER_HOUR = 0.2016
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")


@dataclass(frozen=True)
class DevEnv:
    """A workspace directory and the command that serves it (a notebook, an IDE server, a test loop)."""

    name: str
    workspace: str
    command: str
    gpu_model: str
    gpu_count: int = 1
    idle_hours: float = DEFAULT_IDLE_HOURS
    team: str = "default"
    policy: str = "hibernate"
    location: str = ""
    """provider/region it runs in; empty: the cheapest suitable place when it starts."""
    allowed_locations: list[str] = field(default_factory=lambda: ["*"])
    cpu_usd_per_hour: float = DEFAULT_CPU_USD_PER_HOUR
    min_cpu_fraction: float = 0.05
    """CPU use of the process group, in cores, above which a sample counts as activity."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigError(f"devenv {self.name!r}: name must be 1-41 of a-z, 0-9 and '-'")
        try:
            if not isinstance(self.workspace, str) or not self.workspace:
                raise ConfigError("workspace is empty")
            if not Path(self.workspace).is_absolute():
                raise ConfigError(f"workspace {self.workspace!r} is not an absolute path")
            if not isinstance(self.command, str) or not self.command.strip():
                raise ConfigError("command is empty")
            if not isinstance(self.gpu_model, str) or canonical_gpu_model(self.gpu_model) is None:
                raise ConfigError(f"gpu_model {self.gpu_model!r} is not a known GPU model (e.g. A100, L4)")
            check_range(self.gpu_count, "gpu_count", low=0, high=64, integer=True)
            check_range(self.idle_hours, "idle_hours", low=0, high=24 * 365)
            check_range(self.cpu_usd_per_hour, "cpu_usd_per_hour", low=0, high=1000, low_inclusive=True)
            check_range(self.min_cpu_fraction, "min_cpu_fraction", low=0, high=1024)
            if self.policy not in POLICIES:
                raise ConfigError(f"policy {self.policy!r} is not one of {', '.join(POLICIES)}")
            if not isinstance(self.team, str) or not self.team.strip():
                raise ConfigError("team is empty")
            if self.location:
                check_location(self.location, "location")
            for pattern in self.allowed_locations:
                check_location_pattern(pattern, "allowed location")
        except SpotshiftError as exc:
            raise ConfigError(f"devenv {self.name!r}: {exc}") from None

    @property
    def store_name(self) -> str:
        """The snapshot name of the workspace in the region stores."""
        return f"devenv-{self.name}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DevEnv:
        return build_record(cls, raw, f"devenv {raw.get('name', '?')!r}")


def add_devenv(env: DevEnv, *, replace: bool = False) -> None:
    """Declare ``env`` (atomically; an existing name is an error unless ``replace``). The workspace
    must be an existing directory."""
    if not Path(env.workspace).is_dir():
        raise ConfigError(f"devenv {env.name!r}: workspace {env.workspace} is not a directory")
    registry.upsert(SECTION, env.to_dict(), replace=replace)


def get_devenv(name: str) -> DevEnv:
    """One declared environment; :class:`ConfigError` when it is not declared."""
    return DevEnv.from_dict(registry.get(SECTION, name))


def load_devenvs() -> list[DevEnv]:
    """Every declared environment."""
    return [DevEnv.from_dict(e) for e in registry.entries(SECTION)]
