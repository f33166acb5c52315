"""Preemption notices: the three providers' metadata endpoints, SIGTERM, and the stop controller.

=====================  =============================================  ==========  =================
provider               endpoint (relative to the base URL)             warning     deadline from
=====================  =============================================  ==========  =================
AWS (IMDSv2)           ``PUT /latest/api/token`` then                   120 s       ``time`` field
                       ``GET /latest/meta-data/spot/instance-action``
                       (404 until a notice; JSON ``{"action", "time"}``)
GCP                    ``GET /computeMetadata/v1/instance/preempted``   30 s        first ``TRUE`` + 30 s
                       (``Metadata-Flavor: Google``; ``TRUE``/``FALSE``)
Azure                  ``GET /metadata/scheduledevents?api-version=…``  30 s        ``NotBefore``
                       (``Metadata: true``; ``Events[].EventType ==
                       "Preempt"``), acknowledged by a ``StartRequests``
                       POST once the checkpoint is safe
SIGTERM                the process signal                               configurable ``grace_s``
=====================  =============================================  ==========  =================

Base URLs come from ``SPOTSHIFT_AWS_IMDS_URL``, ``SPOTSHIFT_GCP_METADATA_URL`` and
``SPOTSHIFT_AZURE_METADATA_URL`` (so tests and the preemption injector point trainers at local
servers, see :mod:`spotshift.training.notice_server`; per simulated location:
:mod:`spotshift.training.preemption_endpoints`), or a trainer request names them
explicitly. On a real instance set ``SPOTSHIFT_PREEMPTION_WATCHERS=aws`` (or gcp, azure) to poll
the provider's link-local default address. Deadlines are wall-clock UTC: the provider's clock.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from spotshift.clock import parse_utc
from spotshift.errors import ConfigError
from spotshift.pricing.regions import provider_of
from spotshift.training.preemption_endpoints import registered_endpoints

log = logging.getLogger("spotshift.preemption")

KINDS = ("aws_imds", "gcp_metadata", "azure_scheduled_events", "sigterm")
PROVIDER_KIND = {"aws": "aws_imds", "gcp": "gcp_metadata", "azure": "azure_scheduled_events"}
URL_ENV = {
    "aws_imds": "SPOTSHIFT_AWS_IMDS_URL",
    "gcp_metadata": "SPOTSHIFT_GCP_METADATA_URL",
    "azure_scheduled_events": "SPOTSHIFT_AZURE_METADATA_URL",
}
DEFAULT_URL = {
    "aws_imds": "http://169.254.169.254",
    "gcp_metadata": "http://metadata.google.internal",
    "azure_scheduled_events": "http://169.254.169.254",
}
WARNING_S = {"aws_imds": 120.0, "gcp_metadata": 30.0, "azure_scheduled_events": 30.0, "sigterm": 30.0}
AZURE_API_VERSION = "2020-07-01"


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class PreemptionNotice:
    """A notice that the instance will be reclaimed (or told to stop) at ``deadline_at``."""

    kind: str
    noticed_at: datetime  # wall-clock UTC
    deadline_at: datetime  # wall-clock UTC
    provider_ref: str = ""  # the provider's identity of the event (time, EventId, ...)
    detail: dict[str, Any] = field(default_factory=dict)
    notice_id: str = ""
    is_preemption: bool = True  # False for a planned stop (SIGTERM with a stop reason)
    monotonic_at: float = field(default_factory=time.monotonic)

    def assign_id(self, job: str, location: str) -> str:
        """Deterministic id from the provider's identity of the event, the job and the location."""
        ref = self.provider_ref or self.noticed_at.isoformat()
        digest = hashlib.sha256(f"{self.kind}\0{job}\0{location}\0{ref}".encode()).hexdigest()[:16]
        self.notice_id = f"{self.kind.split('_')[0]}-{digest}"
        return self.notice_id

    @property
    def warning_s(self) -> float:
        return (self.deadline_at - self.noticed_at).total_seconds()

    def remaining_s(self) -> float:
        """Seconds left before the deadline, measured on the monotonic clock since the notice."""
        return self.warning_s - (time.monotonic() - self.monotonic_at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "notice_id": self.notice_id,
            "kind": self.kind,
            "noticed_at": self.noticed_at.isoformat(),
            "deadline_at": self.deadline_at.isoformat(),
            "warning_s": round(self.warning_s, 3),
            "provider_ref": self.provider_ref,
            "is_preemption": self.is_preemption,
            "detail": self.detail,
        }


class StopController:
    """The trainer's stop flag: the first notice wins; later ones are logged and ignored."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self.notice: PreemptionNotice | None = None

    def request(self, notice: PreemptionNotice) -> bool:
        with self._lock:
            if self.notice is not None:
                return False
            self.notice = notice
            self._event.set()
        return True

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)


def _http(
    method: str, url: str, headers: dict[str, str], body: bytes | None = None, timeout: float = 1.0
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - metadata endpoints
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers or {}), exc.read() or b""


class NoticeWatcher(ABC):
    """Polls one provider's metadata endpoint; ``poll()`` returns a notice once one is posted."""

    kind: str

    def __init__(self, base_url: str, *, timeout_s: float = 1.0):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    @abstractmethod
    def poll(self) -> PreemptionNotice | None:
        """A notice if the provider has posted one; None otherwise. Network errors propagate (OSError)."""

    def acknowledge(self, notice: PreemptionNotice) -> None:  # noqa: B027 - optional hook
        """Tell the provider the instance is ready to go (only Azure has this)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"


class AwsImdsWatcher(NoticeWatcher):
    """EC2 spot interruption notice through IMDSv2 (session token, refreshed on 401)."""

    kind = "aws_imds"
    TOKEN_TTL_S = 21600

    def __init__(self, base_url: str, *, timeout_s: float = 1.0):
        super().__init__(base_url, timeout_s=timeout_s)
        self._token: str | None = None

    def _fetch_token(self) -> str:
        status, _, body = _http(
            "PUT",
            f"{self.base_url}/latest/api/token",
            {"X-aws-ec2-metadata-token-ttl-seconds": str(self.TOKEN_TTL_S)},
            timeout=self.timeout_s,
        )
        if status != 200 or not body:
            raise OSError(f"IMDSv2 token request returned HTTP {status}")
        return body.decode().strip()

    def poll(self) -> PreemptionNotice | None:
        for _attempt in range(2):
            if self._token is None:
                self._token = self._fetch_token()
            status, _, body = _http(
                "GET",
                f"{self.base_url}/latest/meta-data/spot/instance-action",
                {"X-aws-ec2-metadata-token": self._token},
                timeout=self.timeout_s,
            )
            if status == 401:  # token expired: fetch a new one once
                self._token = None
                continue
            if status == 404:
                return None
            if status != 200:
                raise OSError(f"IMDS spot/instance-action returned HTTP {status}")
            return self.parse(body)
        raise OSError("IMDS kept refusing the session token")

    @staticmethod
    def parse(body: bytes) -> PreemptionNotice:
        """A notice from the ``spot/instance-action`` JSON (``action`` terminate/stop/hibernate, ``time``)."""
        now = utc_now()
        try:
            doc = json.loads(body)
            action = str(doc["action"])
            deadline = parse_utc(str(doc["time"]))
        except (ValueError, KeyError, TypeError, ConfigError):
            raise OSError(f"IMDS spot/instance-action is not the documented JSON: {body[:120]!r}") from None
        return PreemptionNotice(
            "aws_imds", now, deadline, provider_ref=f"{action}@{doc['time']}", detail={"action": action}
        )


class GcpMetadataWatcher(NoticeWatcher):
    """GCE preemption flag ``instance/preempted`` (30 s before the instance stops)."""

    kind = "gcp_metadata"

    def poll(self) -> PreemptionNotice | None:
        status, headers, body = _http(
            "GET",
            f"{self.base_url}/computeMetadata/v1/instance/preempted",
            {"Metadata-Flavor": "Google"},
            timeout=self.timeout_s,
        )
        if status != 200:
            raise OSError(f"GCE metadata instance/preempted returned HTTP {status}")
        flavor = {k.lower(): v for k, v in headers.items()}.get("metadata-flavor")
        if flavor != "Google":  # a captive portal or proxy is not the metadata server
            raise OSError("GCE metadata response lacks Metadata-Flavor: Google")
        text = body.decode().strip().upper()
        if text == "FALSE":
            return None
        if text != "TRUE":
            raise OSError(f"GCE metadata instance/preempted answered {text[:20]!r}")
        now = utc_now()
        return PreemptionNotice(
            "gcp_metadata",
            now,
            now + timedelta(seconds=WARNING_S["gcp_metadata"]),
            provider_ref=now.isoformat(),
        )


class AzureScheduledEventsWatcher(NoticeWatcher):
    """Azure Scheduled Events ``Preempt`` (Spot eviction, at least 30 s ahead)."""

    kind = "azure_scheduled_events"

    def __init__(self, base_url: str, *, timeout_s: float = 1.0, vm_name: str | None = None):
        super().__init__(base_url, timeout_s=timeout_s)
        self.vm_name = vm_name or os.environ.get("SPOTSHIFT_AZURE_VM_NAME") or None

    @property
    def _url(self) -> str:
        return f"{self.base_url}/metadata/scheduledevents?api-version={AZURE_API_VERSION}"

    def poll(self) -> PreemptionNotice | None:
        status, _, body = _http("GET", self._url, {"Metadata": "true"}, timeout=self.timeout_s)
        if status != 200:
            raise OSError(f"Azure Scheduled Events returned HTTP {status}")
        return self.parse(body, vm_name=self.vm_name)

    @staticmethod
    def parse(body: bytes, *, vm_name: str | None = None) -> PreemptionNotice | None:
        """The first ``Preempt`` event (for ``vm_name`` when given) of a Scheduled Events document."""
        try:
            doc = json.loads(body)
            events = list(doc.get("Events") or [])
        except (ValueError, AttributeError, TypeError):
            raise OSError(f"Azure Scheduled Events is not the documented JSON: {body[:120]!r}") from None
        for ev in events:
            if not isinstance(ev, dict) or ev.get("EventType") != "Preempt":
                continue
            if vm_name and vm_name not in (ev.get("Resources") or []):
                continue
            now = utc_now()
            not_before = str(ev.get("NotBefore") or "")
            deadline = now + timedelta(seconds=WARNING_S["azure_scheduled_events"])
            if not_before:
                try:
                    deadline = email.utils.parsedate_to_datetime(not_before).astimezone(UTC)
                except (TypeError, ValueError):
                    log.warning(
                        "Azure event %s has an unreadable NotBefore %r", ev.get("EventId"), not_before
                    )
            return PreemptionNotice(
                "azure_scheduled_events",
                now,
                deadline,
                provider_ref=str(ev.get("EventId", "")),
                detail={
                    "event_id": ev.get("EventId"),
                    "document_incarnation": doc.get("DocumentIncarnation"),
                    "resources": ev.get("Resources"),
                },
            )
        return None

    def acknowledge(self, notice: PreemptionNotice) -> None:
        event_id = notice.detail.get("event_id")
        if not event_id:
            return
        body = json.dumps({"StartRequests": [{"EventId": event_id}]}).encode()
        status, _, _ = _http(
            "POST", self._url, {"Metadata": "true", "Content-Type": "application/json"}, body, self.timeout_s
        )
        if status not in (200, 202, 204):
            raise OSError(f"Azure Scheduled Events acknowledgement returned HTTP {status}")


WATCHER_CLASSES: dict[str, type[NoticeWatcher]] = {
    "aws_imds": AwsImdsWatcher,
    "gcp_metadata": GcpMetadataWatcher,
    "azure_scheduled_events": AzureScheduledEventsWatcher,
}


def watcher_urls_for(location: str) -> dict[str, str]:
    """Which endpoints a trainer in ``location`` polls: the location's registered simulated instance
    metadata (local compute backend), else its provider's, when configured by environment."""
    provider = provider_of(location)
    kind = PROVIDER_KIND.get(provider)
    if kind is None:
        return {}
    registered = registered_endpoints().get(location)
    if registered:
        return {kind: registered}
    if os.environ.get(URL_ENV[kind]):
        return {kind: os.environ[URL_ENV[kind]]}
    enabled = {k.strip() for k in os.environ.get("SPOTSHIFT_PREEMPTION_WATCHERS", "").split(",") if k.strip()}
    if provider in enabled or kind in enabled:
        return {kind: DEFAULT_URL[kind]}
    return {}


def build_watchers(urls: dict[str, str]) -> list[NoticeWatcher]:
    """Watchers for ``{kind: base url}``; :class:`ConfigError` for an unknown kind."""
    out = []
    for kind, url in sorted(urls.items()):
        if kind not in WATCHER_CLASSES:
            raise ConfigError(f"unknown preemption watcher {kind!r} (use {', '.join(WATCHER_CLASSES)})")
        out.append(WATCHER_CLASSES[kind](url))
    return out


class WatcherThread(threading.Thread):
    """Polls every watcher each ``interval_s`` until a notice arrives or ``stop()``; errors back off, never crash."""

    def __init__(self, watchers: list[NoticeWatcher], controller: StopController, *, interval_s: float = 1.0):
        super().__init__(name="preemption-watcher", daemon=True)
        self.watchers = watchers
        self.controller = controller
        self.interval_s = interval_s
        self._halt = threading.Event()
        self._errors: dict[str, int] = {}

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        while not self._halt.is_set() and not self.controller.is_set():
            for w in self.watchers:
                try:
                    notice = w.poll()
                except OSError as exc:
                    n = self._errors.get(w.kind, 0) + 1
                    self._errors[w.kind] = n
                    if n in (1, 10, 100) or n % 1000 == 0:
                        log.warning("%s poll failed (%d times): %s", w.kind, n, exc)
                    continue
                if notice is not None:
                    notice.detail.setdefault("watcher", repr(w))
                    self.controller.request(notice)
                    return
            self._halt.wait(self.interval_s)

    def watcher(self, kind: str) -> NoticeWatcher | None:
        return next((w for w in self.watchers if w.kind == kind), None)
