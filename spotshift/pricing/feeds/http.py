"""Minimal JSON-over-HTTPS GET for the GCP and Azure price APIs (standard library only).

Errors are one line and name the feed: HTTP 401/403 -> :class:`CredentialsError`, unreachable
host -> :class:`ConfigError`, other HTTP errors and non-JSON bodies -> :class:`InputError`.
Query strings are never logged with secrets: ``key=`` parameters are masked in messages.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from spotshift.errors import ConfigError, CredentialsError, InputError

USER_AGENT = "spotshift-price-discovery/0.1"


def redact(url: str) -> str:
    """``url`` with the values of credential-like query parameters masked."""
    return re.sub(r"(?i)([?&](?:key|access_token|token)=)[^&]*", r"\1***", url)


def with_params(url: str, params: Mapping[str, Any] | None) -> str:
    """``url`` with ``params`` appended to its query string (``None`` values skipped)."""
    if not params:
        return url
    extra = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    if not extra:
        return url
    return url + ("&" if urllib.parse.urlsplit(url).query else "?") + extra


def get_json(
    url: str,
    *,
    feed: str,
    params: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> Any:
    """GET ``url`` (+ ``params``) and parse the JSON body."""
    full = with_params(url, params)
    request = urllib.request.Request(full, headers={"User-Agent": USER_AGENT, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise CredentialsError(
                f"{feed} feed: credentials rejected by {redact(full)} (HTTP {exc.code})"
            ) from None
        raise InputError(f"{feed} feed: GET {redact(full)} failed with HTTP {exc.code}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(f"{feed} feed: cannot reach {redact(full)} ({reason})") from None
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(f"{feed} feed: {redact(full)} did not return JSON") from None
