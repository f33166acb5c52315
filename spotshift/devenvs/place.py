"""Where a dev environment runs and what it pays there: the cheapest on-demand offer of the latest
prices for its GPUs."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from spotshift import warehouse
from spotshift.devenvs.env import DevEnv
from spotshift.errors import ConfigError
from spotshift.placement.inputs import latest_snapshot, load_quotes
from spotshift.pricing.catalog import gpu_model_matches


@dataclass(frozen=True)
class Place:
    """Where an environment runs and what it pays there."""

    location: str
    instance_type: str
    usd_hour: float


def cheapest_place(env: DevEnv, *, pinned: bool = True) -> Place:
    """The cheapest on-demand offer of the latest quote snapshot with the environment's GPU model and
    count in an allowed location (``pinned``: only its declared location, when it has one). No
    quotes: the declared location at an unknown price (0), else :class:`ConfigError`."""
    quotes: list[Any] = []
    try:
        with warehouse.connect() as con:
            snap = latest_snapshot(con)
            if snap is not None:
                quotes = load_quotes(con, snap[0])
    except Exception:  # noqa: BLE001 - no warehouse yet: no prices
        quotes = []
    ok = [
        q
        for q in quotes
        if q.market == "on_demand"
        and q.gpu_count == env.gpu_count
        and gpu_model_matches(env.gpu_model, q.gpu_model)
        and any(fnmatch.fnmatchcase(q.location, p) for p in env.allowed_locations)
        and (not pinned or not env.location or q.location == env.location)
    ]
    if ok:
        best = min(ok, key=lambda q: (q.price_usd_hour, q.location, q.instance_type))
        return Place(best.location, best.instance_type, best.price_usd_hour)
    if env.location:
        return Place(env.location, "", 0.0)
    raise ConfigError(
        f"devenv {env.name!r}: no on-demand offer of {env.gpu_count}x {env.gpu_model} in the latest prices "
        "and no --location declared"
    )
