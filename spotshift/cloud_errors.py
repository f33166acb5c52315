"""Errors from clouds and stores, translated in one place per client library into one line.

Every provider feed and object store turns what its client library raises into a
:class:`~spotshift.errors.SpotshiftError` naming the feed or store, what it was doing and the HTTP
status (when there was one). A response body, a response header or the user-info of a URL never
reaches a message: providers echo request details (access key ids, session tokens, signed URLs)
in their error bodies, and a garbage-answering endpoint can say anything.

* :func:`from_botocore` — boto3/botocore (the ``aws`` feed, ``s3://`` stores). botocore's
  ``ResponseParserError`` quotes the body verbatim and carries no status, so clients made through
  :func:`track_status` remember the status of the response they were parsing.
* :func:`from_google` — google-cloud-storage / google-api-core / google-auth (``gs://`` stores).
* :func:`for_status` — plain HTTP (the ``gcp`` and ``azure`` feeds, see
  :mod:`spotshift.pricing.feeds.http`).

:func:`redact_url` is what every message shows of a URL.
"""

from __future__ import annotations

import re
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from spotshift.errors import (
    ConfigError,
    CredentialsError,
    IntegrityError,
    NotFoundError,
    RemoteError,
    SpotshiftError,
)

_SECRET_PARAMS = re.compile(
    r"(?i)([?&](?:key|api_key|apikey|access_token|token|sig|signature|x-amz-[a-z-]+|x-goog-[a-z-]+|"
    r"awsaccesskeyid|googleaccessid|password|secret)=)[^&#]*"
)
_TOKEN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def redact_url(url: str) -> str:
    """``url`` without user-info and with the values of credential-like query parameters masked."""
    text = str(url)
    try:
        parts = urlsplit(text)
    except ValueError:
        return "<malformed URL>"
    if "@" in parts.netloc:
        host = parts.netloc.rsplit("@", 1)[1]
        text = urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))
    return _SECRET_PARAMS.sub(r"\1***", text)


def safe_token(value: Any) -> str | None:
    """``value`` when it looks like an error code (``NoSuchKey``, ``InternalError``); else None.

    Error codes come from response bodies, so anything that is not a short plain token is dropped.
    """
    text = str(value) if value is not None else ""
    return text if _TOKEN.match(text) else None


def for_status(who: str, what: str, status: int | None, code: Any = None) -> SpotshiftError:
    """The error for an HTTP ``status`` answered to ``what`` by ``who`` (a feed or a store).

    401/403 -> :class:`CredentialsError`, 404 -> :class:`NotFoundError`, anything else ->
    :class:`RemoteError`. ``code`` (a provider error code) is shown only when it is a plain token.
    """
    token = safe_token(code)
    detail = f"HTTP {status}" if status else "no HTTP status"
    if token and token != str(status):
        detail += f" {token}"
    if status in (401, 403):
        return CredentialsError(f"{who}: {what} refused the credentials ({detail})")
    if status == 404:
        return NotFoundError(f"{who}: {what} not found ({detail})")
    return RemoteError(f"{who}: {what} failed ({detail})")


# ---- botocore -----------------------------------------------------------------------------------
_last_status = threading.local()


def _remember_status(response_dict: Any = None, **_: Any) -> None:
    _last_status.value = (response_dict or {}).get("status_code")


def track_status(client: Any) -> Any:
    """Make ``client`` remember the HTTP status of the response it parses (per thread); returns it."""
    events = getattr(getattr(client, "meta", None), "events", None)
    if events is not None:
        events.register("before-parse", _remember_status, unique_id="spotshift-track-status")
    return client


def from_botocore(exc: BaseException, who: str, what: str) -> SpotshiftError:
    """A botocore/boto3 exception (or botocore's ``ResponseParserError``) as one line.

    Callers keep their own special cases (a 404 that means "missing", a 412 that means "exists")
    and hand everything else here.
    """
    from botocore import exceptions as bx

    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return CredentialsError(
            f"{who}: no AWS credentials (use a role: web identity with AWS_ROLE_ARN + "
            "AWS_WEB_IDENTITY_TOKEN_FILE, or an instance/task role; else AWS_PROFILE)"
        )
    if isinstance(exc, bx.InvalidConfigError):  # e.g. a web identity token file but no role
        return ConfigError(
            f"{who}: the AWS credentials configuration is incomplete (AWS_WEB_IDENTITY_TOKEN_FILE needs "
            "AWS_ROLE_ARN; or check the profile)"
        )
    if isinstance(exc, bx.NoRegionError):
        return ConfigError(f"{who}: no AWS region configured (set AWS_DEFAULT_REGION)")
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {}) if isinstance(exc.response, dict) else {}
        meta = exc.response.get("ResponseMetadata", {}) if isinstance(exc.response, dict) else {}
        code = err.get("Code")
        status = meta.get("HTTPStatusCode")
        if str(code) in _AWS_CREDENTIAL_CODES and status not in (401, 403):
            status = 403
        return for_status(who, what, status if isinstance(status, int) else None, code)
    if isinstance(exc, bx.ParamValidationError):
        return ConfigError(f"{who}: {what}: request parameters are invalid (check the bucket and key names)")
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ProxyConnectionError)):
        return ConfigError(f"{who}: cannot reach the endpoint for {what}")
    if isinstance(exc, (bx.ReadTimeoutError, bx.ConnectionClosedError)):
        return RemoteError(f"{who}: {what}: the connection failed mid-response ({type(exc).__name__})")
    if isinstance(exc, bx.ChecksumError):
        return IntegrityError(f"{who}: {what}: checksum mismatch on arrival")
    if type(exc).__name__ == "ResponseParserError":  # botocore.parsers, not a BotoCoreError
        status = getattr(_last_status, "value", None)
        return RemoteError(
            f"{who}: {what}: HTTP {status if status else '?'} response is not a valid AWS response "
            "(body withheld)"
        )
    return RemoteError(f"{who}: {what} failed ({type(exc).__name__})")


def botocore_errors() -> tuple[type[BaseException], ...]:
    """Every exception type :func:`from_botocore` translates (for ``except`` clauses)."""
    from botocore.exceptions import BotoCoreError, ClientError
    from botocore.parsers import ResponseParserError

    return (BotoCoreError, ClientError, ResponseParserError)


_AWS_CREDENTIAL_CODES = {
    "AuthFailure",
    "UnauthorizedOperation",
    "InvalidClientTokenId",
    "ExpiredToken",
    "ExpiredTokenException",
    "AccessDenied",
    "AccessDeniedException",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "InvalidAccessKeyId",
    "InvalidIdentityToken",  # AssumeRoleWithWebIdentity refused the token
    "IDPRejectedClaim",
}


# ---- google -------------------------------------------------------------------------------------
def from_google(exc: BaseException, who: str, what: str) -> SpotshiftError:
    """A google-cloud-storage / google-api-core / google-auth / requests exception as one line."""
    from google.api_core import exceptions as gx
    from google.auth import exceptions as ga

    if isinstance(exc, gx.RetryError) and exc.cause is not None:
        inner = from_google(exc.cause, who, what)
        return type(inner)(f"{inner} after retries")
    if isinstance(exc, ga.DefaultCredentialsError):
        return CredentialsError(
            f"{who}: no Google credentials (set GOOGLE_APPLICATION_CREDENTIALS to an external_account "
            "file (workload identity federation) or run `gcloud auth application-default login`; "
            "STORAGE_EMULATOR_HOST for an emulator)"
        )
    if isinstance(exc, ga.RefreshError):
        return CredentialsError(f"{who}: Google credentials were rejected")
    if isinstance(exc, ga.TransportError):
        return ConfigError(f"{who}: cannot reach the Google authentication endpoint")
    if isinstance(exc, gx.GoogleAPICallError):
        return for_status(who, what, exc.code if isinstance(exc.code, int) else None)
    status = _google_media_status(exc)
    if status is not None:
        return for_status(who, what, status)
    if type(exc).__name__ == "DataCorruption":
        return IntegrityError(f"{who}: {what}: checksum mismatch on arrival")
    import requests

    if isinstance(exc, requests.exceptions.JSONDecodeError):
        return RemoteError(f"{who}: {what}: the response is not valid JSON (body withheld)")
    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return ConfigError(f"{who}: cannot reach the endpoint for {what}")
    if isinstance(exc, requests.exceptions.RequestException):
        return RemoteError(f"{who}: {what} failed ({type(exc).__name__})")
    return RemoteError(f"{who}: {what} failed ({type(exc).__name__})")


def _google_media_status(exc: BaseException) -> int | None:
    """HTTP status of google-resumable-media's ``InvalidResponse`` (upload/download paths)."""
    if type(exc).__name__ != "InvalidResponse":
        return None
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return status if isinstance(status, int) else 0


def google_errors() -> tuple[type[BaseException], ...]:
    """Every exception type :func:`from_google` translates (for ``except`` clauses)."""
    import requests
    from google.api_core.exceptions import GoogleAPIError
    from google.auth.exceptions import GoogleAuthError

    out: list[type[BaseException]] = [GoogleAPIError, GoogleAuthError, requests.exceptions.RequestException]
    for mod in ("google.cloud.storage.exceptions", "google.resumable_media.common"):
        try:
            m = __import__(mod, fromlist=["InvalidResponse"])
        except ImportError:
            continue
        out.extend(getattr(m, n) for n in ("InvalidResponse", "DataCorruption") if hasattr(m, n))
    return tuple(out)
