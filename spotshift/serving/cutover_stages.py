"""Cutover stages and thresholds: what ``--shadow``/``--stages`` parse to, what a window is judged by.

The defaults are the seeds' figures (:mod:`spotshift.serving.cutover` tells the whole story).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from spotshift.errors import ConfigError, check_range

DEFAULT_STAGES = "5:24h,25:48h,50:72h,100:0"  # seed 000 GradualMigrationController
DEFAULT_SHADOW_SHARES = "5,15,25,35,45,50"  # as the command line shows it: holds 48h, then 24h each
DEFAULT_SHADOW = "5:48h,15:24h,25:24h,35:24h,45:24h,50:24h"  # 002: 5 % for 48 h, then +10 % steps to 50 %
FIRST_SHADOW_HOLD_H = 48.0  # a bare shadow share: the first is held 48 h (002), the others 24 h
NEXT_SHADOW_HOLD_H = 24.0
DEFAULT_INTERVAL_S = 60.0
DEFAULT_FAILBACK_DAYS = 7.0  # 002: source on standby 7 days
DEFAULT_SOURCE_FLOOR = 1
MAX_FLEET_RATIO = 1.25
LIVE_MIRROR_SHARE = 0.05  # live phase: share of source-served requests still mirrored (output agreement)
MAX_WINDOWS = 500  # analysis windows kept in the state file (older ones are summarised in stage rows)

CRITERIA = ("p99_latency", "error_rate", "cost_per_million_tokens", "output_agreement")
PHASES = ("shadow", "live", "promoted", "rolled_back", "failed_back", "decommissioned")
ACTIVE_PHASES = ("shadow", "live")
STATE_FILE = "cutover.json"


@dataclass(frozen=True)
class Stage:
    """One step of a cutover: ``percent`` of live traffic (mirrored in shadow, routed live) for
    ``hold_s`` virtual seconds."""

    phase: str
    percent: float
    hold_s: float

    @property
    def share(self) -> float:
        return self.percent / 100.0

    @property
    def label(self) -> str:
        """``shadow-5`` / ``live-25``: the stage's name in run keys and rows."""
        return f"{self.phase}-{self.percent:g}"


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "": 3600.0}


def parse_duration_s(text: str, what: str) -> float:
    """``24h``/``90m``/``30s``/``2d``/``0`` (a bare number is hours) in seconds; ConfigError otherwise."""
    m = _DURATION.match(text.strip().lower())
    if not m:
        raise ConfigError(f"{what}: {text!r} is not a duration (like 24h, 90m, 30s, 2d or 0)")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def parse_stages(text: str, phase: str, what: str) -> tuple[Stage, ...]:
    """``5:24h,25:48h,50:72h,100:0`` as stages (percent in (0, 100], strictly increasing).

    Shadow stages may omit the hold (``5,15,25``): the first is held 48 h, the others 24 h.
    ``none`` (shadow only): no shadow phase. Live stages must end at 100 %.
    """
    text = text.strip()
    if phase == "shadow" and text.lower() in ("", "none", "0"):
        return ()
    out: list[Stage] = []
    for i, part in enumerate(p.strip() for p in text.split(",")):
        pct_text, sep, hold_text = part.partition(":")
        try:
            pct = float(pct_text)
        except ValueError:
            raise ConfigError(f"{what}: {part!r} is not PERCENT[:HOLD] (like 25:48h)") from None
        check_range(pct, f"{what}: percent {pct_text}", low=0, high=100)
        if sep:
            hold = parse_duration_s(hold_text, f"{what} {part}")
        elif phase == "shadow":
            hold = (FIRST_SHADOW_HOLD_H if i == 0 else NEXT_SHADOW_HOLD_H) * 3600.0
        else:
            raise ConfigError(f"{what}: {part!r} has no hold time (like {pct_text}:24h)")
        if out and pct <= out[-1].percent:
            raise ConfigError(f"{what}: percentages must increase ({out[-1].percent:g} then {pct:g})")
        out.append(Stage(phase, pct, hold))
    if phase == "live" and (not out or out[-1].percent != 100):
        raise ConfigError(f"{what}: the last live stage must be 100 (like 100:0)")
    return tuple(out)


@dataclass(frozen=True)
class Thresholds:
    """When the target fails an analysis window (module docstring)."""

    p99_shadow: float = 0.10  # 002: shadow P99 within 10 % of the source
    p99_live: float = 0.15  # seed 000: latency regression > 15 % rolls back
    p99_slack_ms: float = 5.0  # regressions below this many ms are measurement noise
    error_rate_delta: float = 0.001  # seed 000
    cost_tolerance: float = 0.05  # target cost per million tokens at most 5 % above the plan
    min_agreement: float = 1.0  # greedy decoding: every mirrored answer identical
    min_samples: int = 20  # per side and window, for latency and error rate

    def __post_init__(self) -> None:
        for name in ("p99_shadow", "p99_live", "error_rate_delta", "cost_tolerance"):
            check_range(getattr(self, name), name, low=0, high=100, low_inclusive=True)
        check_range(self.p99_slack_ms, "p99_slack_ms", low=0, high=1e6, low_inclusive=True)
        check_range(self.min_agreement, "min_agreement", low=0, high=1, low_inclusive=True)
        check_range(self.min_samples, "min_samples", low=1, high=1e9, low_inclusive=True, integer=True)
