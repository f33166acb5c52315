"""Team names: who pays (:mod:`spotshift.budgets`) for jobs and endpoints that name a team.

A leaf module so that declarations (jobs, endpoints) can check a team name without importing the
budget accounting, which reads those declarations."""

from __future__ import annotations

from spotshift.errors import ConfigError


def check_team(team: str, what: str = "team") -> str:
    """``team`` if it is a DNS-label-like name (``[a-z0-9-_.]``, 1-63 characters); :class:`ConfigError` otherwise."""
    if (
        not isinstance(team, str)
        or not 0 < len(team) <= 63
        or any(c not in "abcdefghijklmnopqrstuvwxyz0123456789-_." for c in team)
    ):
        raise ConfigError(f"{what} {team!r}: use 1-63 characters of a-z, 0-9, '-', '_' and '.'")
    return team
