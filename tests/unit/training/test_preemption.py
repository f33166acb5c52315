"""Each provider's notice format, spoken by a local HTTP peer, read by the watchers."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spotshift.training.notice_server import MetadataServer
from spotshift.training.preemption import (
    AwsImdsWatcher,
    AzureScheduledEventsWatcher,
    GcpMetadataWatcher,
    StopController,
    WatcherThread,
    build_watchers,
    watcher_urls_for,
)


@pytest.fixture
def md():  # noqa: ANN201
    with MetadataServer() as server:
        yield server


def test_aws_imds_v2_spot_instance_action(md: MetadataServer) -> None:
    w = AwsImdsWatcher(md.url)
    assert w.poll() is None  # 404 until a notice is posted
    assert ("PUT", "/latest/api/token") in md.state.requests  # IMDSv2: a session token first
    when = md.preempt("aws", in_seconds=120)
    n = w.poll()
    assert n is not None and n.kind == "aws_imds" and n.detail["action"] == "terminate"
    assert n.deadline_at == datetime.strptime(when, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert 115 <= n.warning_s <= 121
    # an expired token is refreshed, not fatal
    md.state.tokens.clear()
    assert w.poll() is not None
    n.assign_id("job", "aws/us-east-1")
    again = w.poll()
    again.assign_id("job", "aws/us-east-1")
    assert n.notice_id == again.notice_id and n.notice_id.startswith(
        "aws-"
    )  # deterministic: same event, same id


def test_aws_malformed_notice_is_an_error() -> None:
    with pytest.raises(OSError, match="not the documented JSON"):
        AwsImdsWatcher.parse(b'{"action": "terminate"}')


def test_gcp_preempted_flag(md: MetadataServer) -> None:
    w = GcpMetadataWatcher(md.url)
    assert w.poll() is None  # "FALSE"
    md.preempt("gcp")
    n = w.poll()
    assert n is not None and n.kind == "gcp_metadata" and n.warning_s == 30.0
    assert all(path.startswith("/computeMetadata/v1/instance/preempted") for _, path in md.state.requests)


def test_azure_scheduled_events_preempt_and_acknowledge(md: MetadataServer) -> None:
    w = AzureScheduledEventsWatcher(md.url)
    assert w.poll() is None
    eid = md.preempt("azure", in_seconds=30)
    n = w.poll()
    assert n is not None and n.kind == "azure_scheduled_events" and n.detail["event_id"] == eid
    assert 25 <= n.warning_s <= 31  # NotBefore is RFC 1123, second precision
    w.acknowledge(n)
    assert md.acknowledged == [eid] and w.poll() is None  # the event is gone once approved


def test_azure_ignores_other_events_and_other_vms() -> None:
    doc = {
        "DocumentIncarnation": 3,
        "Events": [
            {"EventId": "A", "EventType": "Reboot", "Resources": ["vm1"], "NotBefore": ""},
            {
                "EventId": "B",
                "EventType": "Preempt",
                "Resources": ["vm2"],
                "NotBefore": "Mon, 19 Sep 2016 18:29:47 GMT",
            },
        ],
    }
    body = json.dumps(doc).encode()
    assert AzureScheduledEventsWatcher.parse(body, vm_name="vm1") is None
    n = AzureScheduledEventsWatcher.parse(body)
    assert n.provider_ref == "B" and n.deadline_at == datetime(2016, 9, 19, 18, 29, 47, tzinfo=UTC)


def test_peer_enforces_protocol_headers(md: MetadataServer) -> None:
    from spotshift.training.preemption import _http

    assert _http("GET", f"{md.url}/latest/meta-data/spot/instance-action", {})[0] == 401
    assert _http("GET", f"{md.url}/computeMetadata/v1/instance/preempted", {})[0] == 403
    assert _http("GET", f"{md.url}/metadata/scheduledevents?api-version=2020-07-01", {})[0] == 400


def test_watcher_thread_raises_the_stop_flag(md: MetadataServer) -> None:
    controller = StopController()
    t = WatcherThread(build_watchers({"gcp_metadata": md.url}), controller, interval_s=0.05)
    t.start()
    time.sleep(0.2)
    assert not controller.is_set()
    md.preempt("gcp")
    assert controller.wait(5)
    assert controller.notice.kind == "gcp_metadata"
    t.join(2)
    assert not t.is_alive()


def test_watcher_survives_an_unreachable_endpoint() -> None:
    controller = StopController()
    t = WatcherThread(build_watchers({"aws_imds": "http://127.0.0.1:9"}), controller, interval_s=0.01)
    t.start()
    time.sleep(0.2)
    assert t.is_alive() and not controller.is_set()
    t.stop()
    t.join(2)


def test_which_watchers_a_location_gets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # an empty home: no simulated instance metadata registered (a running demo registers some)
    monkeypatch.setenv("SPOTSHIFT_HOME", str(tmp_path))
    for var in (
        "SPOTSHIFT_AWS_IMDS_URL",
        "SPOTSHIFT_GCP_METADATA_URL",
        "SPOTSHIFT_AZURE_METADATA_URL",
        "SPOTSHIFT_PREEMPTION_WATCHERS",
    ):
        monkeypatch.delenv(var, raising=False)
    assert watcher_urls_for("aws/us-east-1") == {}  # nothing polls link-local addresses unless asked
    monkeypatch.setenv("SPOTSHIFT_PREEMPTION_WATCHERS", "aws")
    assert watcher_urls_for("aws/us-east-1") == {"aws_imds": "http://169.254.169.254"}
    monkeypatch.setenv("SPOTSHIFT_GCP_METADATA_URL", "http://127.0.0.1:1234")
    assert watcher_urls_for("gcp/us-central1") == {"gcp_metadata": "http://127.0.0.1:1234"}
    assert watcher_urls_for("azure/eastus") == {}


def test_first_notice_wins() -> None:
    from spotshift.training.preemption import PreemptionNotice

    c = StopController()
    now = datetime.now(UTC)
    assert c.request(PreemptionNotice("gcp_metadata", now, now + timedelta(seconds=30)))
    assert not c.request(PreemptionNotice("sigterm", now, now + timedelta(seconds=30)))
    assert c.notice.kind == "gcp_metadata"
