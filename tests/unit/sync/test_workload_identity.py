"""Credentials without long-lived secrets (issue 17 item 7), against real protocol peers over HTTP.

* AWS: with only ``AWS_ROLE_ARN`` + ``AWS_WEB_IDENTITY_TOKEN_FILE`` (no access key anywhere, no
  shared files, no instance metadata), the S3 region store and the ``aws-kms`` checkpoint key
  provider get short-lived credentials from ``AssumeRoleWithWebIdentity`` (botocore's own provider
  chain) at moto's STS (``AWS_ENDPOINT_URL_STS``), and use them. Without the role, the store says
  "no AWS credentials" in one line.
* GCP: ``GOOGLE_APPLICATION_CREDENTIALS`` names an ``external_account`` file whose subject token
  is a file; the GCS store's client exchanges that token at the configured STS URL (a local stub
  that checks the exchange) and talks to the storage emulator with the access token it got.
* Neither token, nor the short-lived keys, appear in what ``spotshift sync push`` prints or in any
  file it leaves under ``SPOTSHIFT_HOME``.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from spotshift.checkpoint.keys import AwsKmsKeyProvider
from spotshift.errors import ConfigError, CredentialsError
from spotshift.sync.store_gcs import GCSChunkStore
from spotshift.sync.store_s3 import S3ChunkStore

REPO = Path(__file__).resolve().parents[3]
ROLE = "arn:aws:iam::123456789012:role/spotshift-trainer"


@pytest.fixture
def web_identity(moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The environment of a pod with a projected service-account token and nothing else; the token."""
    token = f"eyJhbGciOiJub25lIn0.{secrets.token_hex(24)}.sig"
    (tmp_path / "token").write_text(token)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ROLE_ARN", ROLE)
    monkeypatch.setenv("AWS_ROLE_SESSION_NAME", "spotshift-test")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(tmp_path / "token"))
    for service in ("STS", "S3", "KMS"):
        monkeypatch.setenv(f"AWS_ENDPOINT_URL_{service}", moto_endpoint)
    return token


def _bucket() -> str:
    import boto3

    name = f"spotshift-wi-{secrets.token_hex(4)}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def test_s3_store_and_kms_use_assumed_role_credentials(
    web_identity: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    # Some earlier code in this process resolved other credentials on boto3's default session
    # (which caches them for the life of the process): spotshift's clients must not reuse them.
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    boto3.setup_default_session(aws_access_key_id="AKIAEARLIER", aws_secret_access_key="earlier")
    store = S3ChunkStore(_bucket(), "wi")
    assert store.put_bytes("a/b", b"payload") and store.get_bytes("a/b") == b"payload"
    creds = store.client._request_signer._credentials
    assert creds.method == "assume-role-with-web-identity"  # not a key from the environment or a file
    frozen = creds.get_frozen_credentials()
    assert frozen.token and frozen.access_key.startswith("ASIA")  # STS session credentials
    key_id = boto3.client("kms").create_key(Description="spotshift KEK")["KeyMetadata"]["KeyId"]
    kp = AwsKmsKeyProvider(key_id, region="us-east-1")
    dk = secrets.token_bytes(32)
    assert kp.unwrap(kp.wrap(dk, {"spotshift:job": "j"}), {"spotshift:job": "j"}, what="t") == dk
    assert kp.client()._request_signer._credentials.method == "assume-role-with-web-identity"


def test_without_the_role_or_token_the_store_says_so_in_one_line(
    web_identity: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ROLE_ARN")
    with pytest.raises(ConfigError, match=r"^s3 store s3://spotshift-absent/wi: .*needs AWS_ROLE_ARN"):
        S3ChunkStore("spotshift-absent", "wi")
    monkeypatch.delenv("AWS_WEB_IDENTITY_TOKEN_FILE")
    with pytest.raises(
        CredentialsError, match=r"^s3 store .*: no AWS credentials \(use a role: web identity"
    ):
        S3ChunkStore("spotshift-absent", "wi").get_bytes("k")


def test_no_token_or_session_key_in_output_or_files(
    web_identity: str, tmp_path: Path, spotshift_home: Path
) -> None:
    bucket = _bucket()
    src = tmp_path / "data"
    src.mkdir()
    (src / "f.bin").write_bytes(os.urandom(4096))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    exe = Path(sys.executable).with_name("spotshift")
    out = subprocess.run(
        [str(exe), "sync", "push", str(src), f"s3://{bucket}/ds"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    frozen = S3ChunkStore(bucket, "ds").client._request_signer._credentials.get_frozen_credentials()
    secrets_seen = [web_identity, frozen.secret_key, frozen.token]
    text = out.stdout + out.stderr
    files = [p for p in spotshift_home.rglob("*") if p.is_file()]
    assert files  # the push left its caches and facts there
    for s in secrets_seen:
        assert s not in text
        assert not [p for p in files if s.encode() in p.read_bytes()]


# ---- GCP ----------------------------------------------------------------------------------------------


class _Sts(BaseHTTPRequestHandler):
    exchanges: list[dict[str, str]] = []
    access_token = ""

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        form = dict(urllib.parse.parse_qsl(body))
        type(self).exchanges.append({"path": self.path, **form})
        reply = json.dumps(
            {
                "access_token": self.access_token,
                "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                "token_type": "Bearer",
                "expires_in": 3600,
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: Any) -> None:
        del args


@pytest.fixture
def sts_stub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sts)
    _Sts.exchanges, _Sts.access_token = [], f"ya29.{secrets.token_hex(16)}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_gcs_store_exchanges_a_file_sourced_token(
    gcs_server: str, sts_stub: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    subject = f"eyJhbGciOiJub25lIn0.{secrets.token_hex(24)}.sig"
    (tmp_path / "subject-token").write_text(subject)
    audience = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/spot/providers/k8s"
    config = {
        "type": "external_account",
        "audience": audience,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": f"{sts_stub}/v1/token",
        "credential_source": {"file": str(tmp_path / "subject-token")},
    }
    (tmp_path / "wif.json").write_text(json.dumps(config))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "wif.json"))
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "spotshift-test")
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)  # the emulator then stays anonymous
    monkeypatch.setenv("API_ENDPOINT_OVERRIDE", gcs_server)  # a custom endpoint that gets credentials
    store = GCSChunkStore("spotshift-gcs", f"wi-{secrets.token_hex(3)}")
    assert store.put_bytes("a/b", b"payload") and store.get_bytes("a/b") == b"payload"
    (exchange,) = _Sts.exchanges[:1]
    assert exchange["path"] == "/v1/token" and exchange["subject_token"] == subject
    assert exchange["audience"] == audience
    assert exchange["grant_type"] == "urn:ietf:params:oauth:grant-type:token-exchange"
    creds = store._bucket().client._credentials
    assert type(creds).__module__ == "google.auth.identity_pool" and creds.token == _Sts.access_token
    assert subject not in (tmp_path / "wif.json").read_text()  # the config names the file, not the token
