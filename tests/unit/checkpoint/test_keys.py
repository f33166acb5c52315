"""Key providers against real protocol peers: AWS KMS (moto server mode) and a Cloud KMS REST peer."""

from __future__ import annotations

import base64
import json
import os
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from spotshift.checkpoint.format import CheckpointPayload, open_checkpoint, write_checkpoint
from spotshift.checkpoint.keys import AwsKmsKeyProvider, GcpKmsKeyProvider, KeyProvider, open_key_provider
from spotshift.errors import ConfigError, IntegrityError
from spotshift.sync.store import LocalChunkStore


def _roundtrip(tmp_path: Path, keys: KeyProvider) -> None:
    store = LocalChunkStore(tmp_path / "s")
    w = torch.randn(16, 16)
    ref = write_checkpoint(
        store, CheckpointPayload("j", 3, 9, "periodic", "aws/us-east-1", {}, {"model": {"w": w}}), keys
    )
    ck = open_checkpoint(store, "j")
    assert ck.meta["encryption"]["kek_id"] == keys.key_id
    assert torch.equal(ck.load_tensors(keys)["model"]["w"], w)
    assert ref.checkpoint_id == ck.checkpoint_id


# ---- AWS KMS ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_kms() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def _kms_key(endpoint: str) -> str:
    import boto3

    kms = boto3.client("kms", region_name="us-east-1", endpoint_url=endpoint)
    return kms.create_key(Description="spotshift test KEK")["KeyMetadata"]["KeyId"]


def test_aws_kms_wraps_and_checkpoints_round_trip(moto_kms: str, aws_env: None, tmp_path: Path) -> None:
    key_id = _kms_key(moto_kms)
    kp = open_key_provider(f"aws-kms:{key_id}?region=us-east-1&endpoint={moto_kms}")
    assert isinstance(kp, AwsKmsKeyProvider) and kp.key_id == f"aws-kms:{key_id}"
    assert open_key_provider(kp.spec).key_id == kp.key_id  # the spec re-opens it in another process
    dk = secrets.token_bytes(32)
    wrapped = kp.wrap(dk, {"spotshift:job": "j", "spotshift:ctx": "c1"})
    assert dk not in wrapped
    assert kp.unwrap(wrapped, {"spotshift:job": "j", "spotshift:ctx": "c1"}, what="t") == dk
    with pytest.raises(IntegrityError, match="t: data key does not unwrap with aws-kms"):
        kp.unwrap(wrapped, {"spotshift:job": "j", "spotshift:ctx": "c2"}, what="t")
    _roundtrip(tmp_path, kp)


def test_aws_kms_wrong_key_refused(moto_kms: str, aws_env: None, tmp_path: Path) -> None:
    a = AwsKmsKeyProvider(_kms_key(moto_kms), endpoint_url=moto_kms)
    b = AwsKmsKeyProvider(_kms_key(moto_kms), endpoint_url=moto_kms)
    store = LocalChunkStore(tmp_path / "s")
    write_checkpoint(
        store, CheckpointPayload("j", 1, 1, "final", "aws/us-east-1", {}, {"model": {"w": torch.ones(2)}}), a
    )
    with pytest.raises(IntegrityError, match="wrong key"):
        open_checkpoint(store, "j").verify(b)


def test_aws_kms_missing_key_is_a_config_error(moto_kms: str, aws_env: None) -> None:
    kp = AwsKmsKeyProvider("alias/does-not-exist", endpoint_url=moto_kms)
    with pytest.raises(ConfigError, match="alias/does-not-exist"):
        kp.wrap(b"\0" * 32, {"a": "b"})


# ---- Cloud KMS (REST) ------------------------------------------------------------------------------------


class CloudKmsPeer:
    """Serves ``POST /v1/{cryptoKey}:encrypt`` and ``:decrypt`` with the documented JSON shapes."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.keys: dict[str, bytes] = {}
        self.calls: list[str] = []
        peer = self

        def crc(b: bytes) -> str:
            import google_crc32c

            return str(google_crc32c.value(b))

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def _reply(self, status: int, doc: dict) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _error(self, code: int, status: str, message: str) -> None:
                self._reply(code, {"error": {"code": code, "message": message, "status": status}})

            def do_POST(self) -> None:  # noqa: N802
                path = self.path.split("?")[0]
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                name, _, verb = path.removeprefix("/v1/").rpartition(":")
                peer.calls.append(verb)
                if name not in peer.keys:
                    return self._error(404, "NOT_FOUND", f"CryptoKey {name} not found.")
                aead = AESGCM(peer.keys[name])
                aad = base64.b64decode(body.get("additionalAuthenticatedData", ""))
                if verb == "encrypt":
                    plain = base64.b64decode(body["plaintext"])
                    nonce = secrets.token_bytes(12)
                    ct = b"v1" + nonce + aead.encrypt(nonce, plain, aad)
                    return self._reply(
                        200,
                        {
                            "name": f"{name}/cryptoKeyVersions/1",
                            "ciphertext": base64.b64encode(ct).decode(),
                            "ciphertextCrc32c": crc(ct),
                            "verifiedPlaintextCrc32c": body.get("plaintextCrc32c") == crc(plain),
                            "verifiedAdditionalAuthenticatedDataCrc32c": body.get(
                                "additionalAuthenticatedDataCrc32c"
                            )
                            == crc(aad),
                            "protectionLevel": "SOFTWARE",
                        },
                    )
                if verb == "decrypt":
                    ct = base64.b64decode(body["ciphertext"])
                    try:
                        plain = aead.decrypt(ct[2:14], ct[14:], aad)
                    except Exception:
                        return self._error(
                            400, "INVALID_ARGUMENT", "Decryption failed: the ciphertext is invalid."
                        )
                    return self._reply(
                        200,
                        {
                            "plaintext": base64.b64encode(plain).decode(),
                            "plaintextCrc32c": crc(plain),
                            "usedPrimary": True,
                            "protectionLevel": "SOFTWARE",
                        },
                    )
                self._error(404, "NOT_FOUND", "unknown method")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def create_key(self, name: str) -> str:
        self.keys[name] = os.urandom(32)
        return name


@pytest.fixture(scope="module")
def cloud_kms() -> Iterator[CloudKmsPeer]:
    peer = CloudKmsPeer()
    yield peer
    peer.server.shutdown()


KEY = "projects/p/locations/global/keyRings/spotshift/cryptoKeys/ckpt"


def test_gcp_kms_rest_round_trip(cloud_kms: CloudKmsPeer, tmp_path: Path) -> None:
    cloud_kms.create_key(KEY)
    kp = open_key_provider(f"gcp-kms:{KEY}?endpoint={cloud_kms.url}")
    assert isinstance(kp, GcpKmsKeyProvider) and kp.key_id == f"gcp-kms:{KEY}"
    dk = secrets.token_bytes(32)
    wrapped = kp.wrap(dk, {"spotshift:job": "j", "spotshift:ctx": "c"})
    assert kp.unwrap(wrapped, {"spotshift:job": "j", "spotshift:ctx": "c"}, what="t") == dk
    with pytest.raises(IntegrityError, match="t: data key does not unwrap with gcp-kms"):
        kp.unwrap(wrapped, {"spotshift:job": "other", "spotshift:ctx": "c"}, what="t")
    _roundtrip(tmp_path, kp)
    assert {"encrypt", "decrypt"} <= set(cloud_kms.calls)


def test_gcp_kms_errors(cloud_kms: CloudKmsPeer) -> None:
    with pytest.raises(ConfigError, match="not found"):
        GcpKmsKeyProvider(KEY.replace("ckpt", "missing"), endpoint=cloud_kms.url).wrap(b"\0" * 32, {})
    with pytest.raises(ConfigError, match="expected projects/P/locations/L/keyRings/R/cryptoKeys/K"):
        GcpKmsKeyProvider("ckpt")
