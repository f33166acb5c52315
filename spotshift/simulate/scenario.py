"""The described job of a simulation (:class:`Scenario`) and what one policy did and paid
(:class:`PolicyResult`): shared by the policy simulator (:mod:`spotshift.simulate.engine`) and the
offline optimum (:mod:`spotshift.simulate.optimum`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from spotshift.errors import ConfigError, check_range


@dataclass(frozen=True)
class Scenario:
    """The described job and the simulation knobs (hours are wall-clock hours)."""

    work_hours: float = 400.0
    deadline_hours: float = 700.0
    data_gb: float = 2000.0
    ckpt_gb: float = 300.0
    checkpoint_interval_hours: float = 0.25
    changeover_hours: float = 0.25
    transfer_gbps: float = 10.0
    checkpoint_delta_fraction: float = 1.0
    data_location: str | None = None

    def __post_init__(self) -> None:
        # a simulation walks the horizon tick by tick: ten years bounds it; a PB bounds the sizes
        years, petabyte_gb = 24 * 365 * 10.0, 1e6
        check_range(self.work_hours, "--work-hours", low=0, high=years)
        check_range(self.deadline_hours, "--deadline-hours", low=0, high=years)
        check_range(self.data_gb, "--data-gb", low=0, high=petabyte_gb, low_inclusive=True)
        check_range(self.ckpt_gb, "--checkpoint-gb", low=0, high=petabyte_gb, low_inclusive=True)
        check_range(self.checkpoint_interval_hours, "--checkpoint-interval-hours", low=0, high=years)
        check_range(self.changeover_hours, "--changeover-hours", low=0, high=years, low_inclusive=True)
        if self.transfer_gbps != float("inf"):  # inf: an ideal network, copies take no time
            check_range(self.transfer_gbps, "--transfer-gbps", low=0, high=1e6)
        check_range(
            self.checkpoint_delta_fraction, "--checkpoint-delta-fraction", low=0, high=1, low_inclusive=True
        )
        if self.deadline_hours < self.work_hours:
            raise ConfigError(
                f"--deadline-hours {self.deadline_hours:g} is shorter than the {self.work_hours:g} hours of work: "
                "no policy can meet it"
            )

    @property
    def data_bytes(self) -> int:
        """Dataset size in bytes (GB = 1e9 bytes, as providers bill)."""
        return int(self.data_gb * 1e9)

    @property
    def ckpt_bytes(self) -> int:
        """Checkpoint size in bytes."""
        return int(self.ckpt_gb * 1e9)

    def transfer_hours(self, nbytes: float) -> float:
        """Hours to copy ``nbytes`` across regions."""
        return nbytes * 8.0 / (self.transfer_gbps * 1e9) / 3600.0


@dataclass
class PolicyResult:
    """What one policy did and paid."""

    name: str
    cost_usd: float = 0.0
    compute_usd: float = 0.0
    egress_usd: float = 0.0
    gb_moved: float = 0.0
    moves: int = 0
    preemptions: int = 0
    spot_hours: float = 0.0
    on_demand_hours: float = 0.0
    finish_hours: float | None = None
    deadline_met: bool = False
    saving_vs_on_demand: float | None = None
    lower_bound: bool = False
    actions: dict[str, int] = field(default_factory=dict)
    #: cost / the offline optimum's cost and / the hindsight bound's (None when not run)
    vs_optimum: float | None = None
    vs_hindsight: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (rounded to cents / 0.001; a figure not tracked, NaN, is null)."""
        d = asdict(self)
        for k in ("cost_usd", "compute_usd", "egress_usd"):
            d[k] = round(d[k], 2) if math.isfinite(d[k]) else None
        for k in ("vs_optimum", "vs_hindsight"):
            if d[k] is not None:
                d[k] = round(d[k], 4)
        for k in ("gb_moved", "spot_hours", "on_demand_hours"):
            d[k] = round(d[k], 3)
        if d["finish_hours"] is not None:
            d["finish_hours"] = round(d["finish_hours"], 3)
        if d["saving_vs_on_demand"] is not None:
            d["saving_vs_on_demand"] = round(d["saving_vs_on_demand"], 4)
        if math.isnan(self.compute_usd):  # only the total is known (the offline optimum)
            for k in ("moves", "gb_moved", "spot_hours", "on_demand_hours", "preemptions"):
                d[k] = None
        return d
