"""Decoding JSON that comes from outside: files a user points at, HTTP bodies, objects in a store.

:func:`parse_json` turns every way such a document can be wrong — not UTF-8, malformed, nested so
deep that the decoder would exhaust the stack — into one :class:`~spotshift.errors.SpotshiftError`
line naming the document, never a traceback and never the document's content.
"""

from __future__ import annotations

import json
from typing import Any

from spotshift.errors import InputError, SpotshiftError


def parse_json(data: str | bytes, what: str, *, error: type[SpotshiftError] = InputError) -> Any:
    """Decode ``data``; ``what`` names the document in errors (raised as ``error``, default InputError)."""
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    except UnicodeDecodeError:
        raise error(f"{what}: not UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what}: malformed JSON at line {exc.lineno} column {exc.colno} ({exc.msg})") from None
    except RecursionError:
        raise error(f"{what}: JSON nested too deeply to be a valid document") from None
