"""Errors from clouds and stores are one line naming the feed or store and the HTTP status (issue 11,
defect 3): never a response body, a header or a URL's user-info, never a traceback.

Real protocol peers over HTTP: a tiny local server that answers garbage (with secrets in its body
and headers), moto's ThreadedMotoServer, botocore's Stubber for the AWS price APIs.
"""

from __future__ import annotations

import http.server
import socketserver
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from spotshift.cli import main
from spotshift.errors import CredentialsError, SpotshiftError

#: what a hostile or broken endpoint echoes: none of it may reach a message
LEAKS = ("AKIALEAKEDKEYID", "leaked-session-token", "x-secret-header", "SECRETPASS", "hunter2")
BODY = (
    b"<html><body>Request by AKIALEAKEDKEYID with X-Amz-Security-Token=leaked-session-token "
    b"failed</body></html"
)
NOW = datetime(2025, 1, 6, tzinfo=UTC)


class GarbageServer:
    """Answers every request with ``status`` and a non-XML, non-JSON body (``raw``: not even HTTP)."""

    def __init__(self, status: int = 200, raw: bool = False) -> None:
        self.status = status
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                self.send_response(outer.status)
                self.send_header("Content-Type", "text/html")
                self.send_header("X-Debug", "x-secret-header AKIALEAKEDKEYID")
                self.send_header("Content-Length", str(len(BODY)))
                self.end_headers()
                self.wfile.write(BODY)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _answer  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        class RawHandler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.recv(65536)
                self.request.sendall(b"GARBAGE leaked-session-token AKIALEAKEDKEYID\r\n\r\n" + BODY)

        if raw:
            self.server: Any = socketserver.ThreadingTCPServer(("127.0.0.1", 0), RawHandler)
        else:
            self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def garbage() -> Iterator[Any]:
    servers: list[GarbageServer] = []

    def start(status: int = 200, raw: bool = False) -> GarbageServer:
        s = GarbageServer(status, raw)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATESTTESTTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # one attempt: the garbage never improves
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)


def one_clean_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for leak in LEAKS:
        assert leak not in err, f"{leak} leaked: {err}"
    return lines[0]


def assert_clean(exc: BaseException) -> str:
    text = str(exc)
    assert isinstance(exc, SpotshiftError), repr(exc)
    assert "\n" not in text
    for leak in LEAKS:
        assert leak not in text, f"{leak} leaked: {text}"
    return text


# ---- S3 stores --------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [200, 500, 403])
def test_s3_store_garbage_endpoint_is_one_line_with_status(
    garbage: Any,
    aws_env: None,
    status: int,
    tmp_path: Path,
    spotshift_home: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = garbage(status)
    from spotshift.sync.store_s3 import S3ChunkStore

    store = S3ChunkStore("bucket", "p", endpoint_url=server.base)
    calls = [lambda: store.put_bytes("chunks/ab/x", b"data"), lambda: list(store.list_keys("refs/"))]
    if status != 200:  # a 200 GET is an object whatever its bytes: digests and parsers judge those
        calls.append(lambda: store.get_bytes("refs/ds/latest"))
    for call in calls:
        with pytest.raises(SpotshiftError) as info:
            call()
        text = assert_clean(info.value)
        # botocore turns a 200 PUT with an unparseable body into a retryable 500 of its own
        assert "s3 store s3://bucket/p" in text and ("HTTP" if status == 200 else f"HTTP {status}") in text, (
            text
        )
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    # through the command line, the endpoint from boto3's standard variable
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL_S3", server.base)
        code = main(["sync", "push", str(src), "s3://bucket/p", "--no-record"])
    line = one_clean_line(capsys.readouterr().err)
    assert code == 2 and "s3://bucket/p" in line and "HTTP" in line, line


# ---- GCS stores -------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [200, 400, 403])
def test_gcs_store_garbage_endpoint_is_one_line_with_status(
    garbage: Any, status: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = garbage(status)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.base)
    from spotshift.sync.store_url import open_store

    store = open_store("gs://bucket/p")
    for call in (
        lambda: store.get_bytes("refs/ds/latest"),
        lambda: store.put_bytes("chunks/ab/x", b"data"),
        lambda: store.size("chunks/ab/x"),
        lambda: list(store.list_keys("refs/")),
    ):
        with pytest.raises(SpotshiftError) as info:
            call()
        text = assert_clean(info.value)
        assert "gs://bucket/p" in text, text
        if status != 200:
            assert f"HTTP {status}" in text, text
    if status == 403:
        with pytest.raises(CredentialsError):
            store.put_bytes("k", b"v")


# ---- AWS price feed ---------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [200, 500])
def test_quotes_poll_aws_against_garbage_endpoint(
    garbage: Any,
    aws_env: None,
    status: int,
    spotshift_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = garbage(status)
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.base)
    monkeypatch.setenv("SPOTSHIFT_AWS_REGIONS", "us-east-1")
    assert main(["quotes", "poll", "--feed", "aws"]) == 2
    line = one_clean_line(capsys.readouterr().err)
    assert "aws feed" in line and f"HTTP {status}" in line, line


def test_aws_feed_error_body_from_stubber_is_never_shown() -> None:
    import boto3
    from botocore.stub import Stubber

    from spotshift.pricing.feeds.aws import AwsFeed

    ec2 = boto3.client("ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    stub = Stubber(ec2)
    stub.add_client_error(
        "describe_spot_price_history",
        service_error_code="InternalError",
        service_message="echo: X-Amz-Security-Token=leaked-session-token AKIALEAKEDKEYID",
        http_status_code=500,
    )
    stub.activate()
    feed = AwsFeed(["us-east-1"], client_factory=lambda service, region: ec2, instance_types=["p4d.24xlarge"])
    with pytest.raises(SpotshiftError) as info:
        feed.fetch_spot(NOW, ["us-east-1"])
    text = assert_clean(info.value)
    assert (
        text.startswith("aws feed: describe_spot_price_history in us-east-1")
        and "HTTP 500 InternalError" in text
    )


# ---- GCP and Azure price feeds (plain HTTP) ----------------------------------------------------------
@pytest.mark.parametrize(
    ("feed", "status", "raw"),
    [
        ("gcp", 200, False),
        ("gcp", 500, False),
        ("gcp", 200, True),
        ("azure", 200, False),
        ("azure", 503, False),
        ("azure", 200, True),
    ],
)
def test_http_feeds_against_garbage_endpoint(
    garbage: Any,
    feed: str,
    status: int,
    raw: bool,
    spotshift_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = garbage(status, raw=raw)
    host = server.base.removeprefix("http://")
    monkeypatch.setenv("SPOTSHIFT_GCP_API_KEY", "hunter2")
    # credential-like parameters in the configured URL must not be echoed either
    monkeypatch.setenv("SPOTSHIFT_GCP_BASE_URL", f"http://{host}/v1")
    monkeypatch.setenv("SPOTSHIFT_AZURE_BASE_URL", f"http://{host}/prices?sig=hunter2")
    assert main(["quotes", "poll", "--feed", feed]) == 2
    line = one_clean_line(capsys.readouterr().err)
    assert f"{feed} feed" in line, line
    if raw:
        assert "malformed HTTP response" in line, line
    else:
        assert f"HTTP {status}" in line, line


@pytest.mark.parametrize("feed", ["gcp", "azure"])
def test_feed_url_with_user_info_is_refused_without_echo(
    feed: str, spotshift_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SPOTSHIFT_GCP_API_KEY", "hunter2")
    monkeypatch.setenv(f"SPOTSHIFT_{feed.upper()}_BASE_URL", "http://user:SECRETPASS@127.0.0.1:9/v1")
    assert main(["quotes", "poll", "--feed", feed]) == 2
    line = one_clean_line(capsys.readouterr().err)
    assert "credentials in the URL" in line, line


def test_deeply_nested_http_body_is_one_line(garbage: Any) -> None:
    from spotshift.pricing.feeds.http import get_json

    class Deep(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = b"[" * 200_000 + b"]" * 200_000
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Deep)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        with pytest.raises(SpotshiftError, match="nested too deeply"):
            get_json(f"http://127.0.0.1:{server.server_address[1]}/x", feed="azure")
    finally:
        server.shutdown()
        server.server_close()


def test_redact_url() -> None:
    from spotshift.cloud_errors import redact_url

    assert redact_url("s3://AK:SECRET@bucket/p") == "s3://***@bucket/p"
    assert redact_url("https://h/x?key=abc&b=1&sig=zz") == "https://h/x?key=***&b=1&sig=***"
    assert "tok" not in redact_url("https://u@h/x?X-Amz-Security-Token=tok")
