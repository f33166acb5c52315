"""Minimal JSON-over-HTTPS GET for the GCP and Azure price APIs (standard library only).

Errors are one line and name the feed, what was asked (the URL without user-info or query) and
the HTTP status:
HTTP 401/403 -> :class:`CredentialsError`, unreachable host -> :class:`ConfigError`, other HTTP
errors, malformed HTTP and non-JSON bodies -> :class:`RemoteError` (see
:mod:`spotshift.cloud_errors`). URLs in messages never show user-info or credential-like query
parameters; bodies and headers are never shown. Credentials in a URL's user-info are refused.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from spotshift.cloud_errors import for_status, redact_url
from spotshift.errors import ConfigError, RemoteError
from spotshift.jsondoc import parse_json

USER_AGENT = "spotshift-price-discovery/0.1"


def _where(url: str) -> str:
    """What messages show of a request URL: scheme, host and path (queries carry keys and filters)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<malformed URL>"
    return redact_url(urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")))


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
    who = f"{feed} feed"
    where = _where(full)
    what = f"GET {where}"
    if "@" in urllib.parse.urlsplit(full).netloc:
        raise ConfigError(f"{who}: {where}: credentials in the URL are not supported")
    try:
        request = urllib.request.Request(full, headers={"User-Agent": USER_AGENT, **(headers or {})})
    except ValueError:
        raise ConfigError(f"{who}: {where!r} is not an http(s) URL") from None
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status = response.status
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise for_status(who, what, exc.code) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, str) and "unknown url type" in exc.reason:
            raise ConfigError(f"{who}: {where!r} is not an http(s) URL") from None
        raise ConfigError(f"{who}: cannot reach {where} ({type(exc.reason).__name__})") from None
    except (TimeoutError, OSError) as exc:
        raise ConfigError(f"{who}: cannot reach {where} ({type(exc).__name__})") from None
    except (http.client.HTTPException, ValueError) as exc:
        raise RemoteError(f"{who}: {what}: malformed HTTP response ({type(exc).__name__})") from None
    try:
        return parse_json(body, f"{who}: {what}: HTTP {status} response", error=RemoteError)
    except RemoteError as exc:
        # parse_json names the document only; keep the promise of never quoting the body
        raise RemoteError(f"{exc} (body withheld)") from None
