"""Typed errors. Every error a user can cause carries one line that names the thing and what is wrong.

The command line prints ``str(error)`` on one line and exits 2 for any :class:`SpotshiftError`;
Dagster assets let them propagate so the run fails with the same message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class SpotshiftError(Exception):
    """Base class: a problem with input, configuration, credentials or stored data (exit code 2)."""

    exit_code = 2

    def __str__(self) -> str:  # keep it to one line whatever the caller passed
        return " ".join(super().__str__().split())


class InputError(SpotshiftError):
    """Malformed input: a feed, a CSV, a trace, a manifest the user pointed us at."""


class ConfigError(SpotshiftError):
    """A wrong or missing configuration value (datasets, jobs, URLs, flags)."""


class CredentialsError(SpotshiftError):
    """Missing or rejected provider credentials; the message names the feed or store."""


class IntegrityError(SpotshiftError):
    """Stored data that fails verification: a tampered, truncated or corrupt object."""


class NotFoundError(SpotshiftError):
    """A named object (dataset, manifest, checkpoint, pointer) does not exist."""


class RemoteError(InputError):
    """A cloud provider or object store answered with an error status or a malformed response.

    The message names the feed or store, what it was asked and the HTTP status; never the body
    (see :mod:`spotshift.cloud_errors`).
    """


def build_record(
    cls: Any, raw: Mapping[str, Any], what: str, *, error: type[SpotshiftError] | None = None
) -> Any:
    """Construct dataclass ``cls`` from a decoded document; unknown keys, missing or mistyped
    arguments (and the validation errors of ``cls`` itself) raise ``error`` (default
    :class:`ConfigError`) as one line naming ``what``."""
    from dataclasses import fields

    err = error or ConfigError
    if not isinstance(raw, Mapping):
        raise err(f"{what}: expected a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - {f.name for f in fields(cls)})
    if unknown:
        raise err(f"{what}: unknown field(s) {', '.join(unknown)}")
    try:
        return cls(**raw)
    except TypeError as exc:
        raise err(f"{what}: {exc}") from None
    except SpotshiftError as exc:
        if isinstance(exc, err):
            raise
        raise err(f"{what}: {exc}") from None


def check_range(
    value: Any,
    what: str,
    *,
    low: float,
    high: float,
    low_inclusive: bool = False,
    integer: bool = False,
    error: type[SpotshiftError] = ConfigError,
) -> Any:
    """``value`` if it is a finite number within ``(low, high]`` (``[low, high]`` with ``low_inclusive``).

    NaN, infinities, booleans, non-numbers and (with ``integer``) fractions raise ``error`` as one
    line naming ``what`` and the allowed range. Returns the value unchanged.
    """
    import math

    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        kind = "an integer" if integer else "a number"
        raise error(f"{what} must be {kind}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise error(f"{what} must be a finite number, got {value!r}")
    above = value >= low if low_inclusive else value > low
    if not above or value > high:
        if integer:
            first = int(low) if low_inclusive else int(math.floor(low)) + 1
            raise error(f"{what} must be a whole number from {first} to {int(high)}, got {value}")
        floor = f"at least {low:g}" if low_inclusive else f"more than {low:g}"
        raise error(f"{what} must be {floor} and at most {high:g}, got {value:g}")
    return value
