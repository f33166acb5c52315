"""Shared by the parsers of native price documents: strict field access with one-line errors.

Every error names the document (file path or URL) and the record (index plus what identifies
it), e.g. ``aws_spot.json record 3 (p4d.24xlarge us-east-1a): SpotPrice 'nine' is not a number``.
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any

from spotshift.clock import as_utc, parse_utc
from spotshift.errors import ConfigError, InputError
from spotshift.jsondoc import parse_json


def load_json_document(path: str | Path, what: str) -> Any:
    """Parse a JSON file; ``what`` names the expected content in errors.

    Raises :class:`InputError` for a missing, unreadable, empty or malformed file.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, expected {what}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{p}: not UTF-8 text, expected {what}") from None
    if not text.strip():
        raise InputError(f"{p}: empty file, expected {what}")
    try:
        return parse_json(text, str(p))
    except InputError as exc:
        raise InputError(f"{exc}; truncated or not {what}") from None


class Record:
    """One record of a native document, with accessors that raise :class:`InputError` naming it."""

    def __init__(self, data: Any, origin: str, index: int, label: str = "") -> None:
        self.origin = origin
        self.index = index
        self.label = label
        if not isinstance(data, dict):
            raise InputError(f"{self.where}: expected a JSON object, got {type(data).__name__}")
        self.data = data

    @property
    def where(self) -> str:
        """``origin record N (label)``."""
        suffix = f" ({self.label})" if self.label else ""
        return f"{self.origin} record {self.index}{suffix}"

    def fail(self, message: str) -> InputError:
        """An :class:`InputError` about this record."""
        return InputError(f"{self.where}: {message}")

    def get(self, key: str, default: Any = None) -> Any:
        """Optional field."""
        return self.data.get(key, default)

    def text(self, key: str) -> str:
        """A required non-empty string field."""
        if key not in self.data or self.data[key] is None:
            raise self.fail(f"missing field {key}")
        value = self.data[key]
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"field {key} is {value!r}, expected a non-empty string")
        return value.strip()

    def number(self, key: str, value: Any = None) -> float:
        """A required number (JSON number or decimal string); NaN stays NaN for normalization to count."""
        if value is None:
            if key not in self.data or self.data[key] is None:
                raise self.fail(f"missing field {key}")
            value = self.data[key]
        return to_number(value, lambda: self.fail(f"{key} {value!r} is not a number"))

    def obj(self, key: str) -> dict[str, Any]:
        """A required JSON object field."""
        value = self.data.get(key)
        if value is None:
            raise self.fail(f"missing field {key}")
        if not isinstance(value, dict):
            raise self.fail(f"field {key} is {type(value).__name__}, expected an object")
        return value

    def time(self, key: str, value: Any = None) -> datetime:
        """A required ISO-8601 timestamp (or a datetime, as boto3 returns them), as aware UTC."""
        if value is None:
            if key not in self.data or self.data[key] is None:
                raise self.fail(f"missing field {key}")
            value = self.data[key]
        return to_utc(value, lambda: self.fail(f"{key} {value!r} is not an ISO-8601 timestamp"))


def to_number(value: Any, error: Any) -> float:
    """``value`` as float (bool is refused); calls ``error()`` to build the exception otherwise."""
    if isinstance(value, bool):
        raise error()
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            x = float(value.strip())
        except ValueError:
            raise error() from None
        if math.isinf(x) and "inf" not in value.lower():
            raise error()
        return x
    raise error()


def to_utc(value: Any, error: Any) -> datetime:
    """``value`` (ISO-8601 string or datetime) as an aware UTC datetime."""
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, str):
        try:
            return parse_utc(value)
        except ConfigError:
            raise error() from None
    raise error()


def list_field(doc: Any, key: str, origin: str, what: str) -> list[Any]:
    """``doc[key]`` as a list; :class:`InputError` when ``doc`` is not an object or lacks the list."""
    if not isinstance(doc, dict):
        raise InputError(f"{origin}: expected a JSON object with {key!r} ({what}), got {type(doc).__name__}")
    if key not in doc:
        raise InputError(f"{origin}: no {key!r} list, not {what}")
    value = doc[key]
    if not isinstance(value, list):
        raise InputError(f"{origin}: {key!r} is {type(value).__name__}, expected a list ({what})")
    return value
