"""``KeyProvider``: where checkpoint key-encryption keys (KEKs) live.

Envelope encryption (see :mod:`spotshift.checkpoint.crypto`): every checkpoint gets a fresh 256-bit
data key; a ``KeyProvider`` wraps it with a KEK that never leaves the provider. Three
implementations behind the same interface:

* ``local`` (default) — a 32-byte key file under ``$SPOTSHIFT_HOME/keys/kek.key`` with mode 0600
  (refused when group/other can read it); wrapping is AES-256-GCM with the context as associated
  data. Only a writer that starts a job's lineage — a training run with no checkpoint to resume —
  creates the file (``create=True``); every other use (verify, inspect, migrate, resume, shadow)
  refuses a missing file with "key file ... does not exist", so a mistyped path or
  ``SPOTSHIFT_HOME`` never mints a key that later writes would silently use.
* ``aws-kms:<key id|arn|alias>`` — AWS KMS ``Encrypt``/``Decrypt`` with the context as the
  ``EncryptionContext`` (boto3; ``?region=`` and ``?endpoint=`` or ``AWS_ENDPOINT_URL_KMS``).
* ``gcp-kms:projects/P/locations/L/keyRings/R/cryptoKeys/K`` — Cloud KMS ``encrypt``/``decrypt``
  over the REST transport with the context as additional authenticated data and CRC32C
  integrity checks both ways (``?endpoint=http://host:port`` for a local peer).

Specs are strings so a trainer process can be told which provider to use; they carry no secret.
Errors never include key material: wrapped keys, data keys and KEKs stay out of messages and logs.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qs

from spotshift.errors import ConfigError, CredentialsError, IntegrityError
from spotshift.home import spotshift_home

#: environment variable naming the default key provider spec
KEY_PROVIDER_ENV = "SPOTSHIFT_KEY_PROVIDER"
DATA_KEY_BYTES = 32
_LOCAL_WRAP_MAGIC = b"SSKW1"


def context_bytes(context: Mapping[str, str]) -> bytes:
    """Canonical bytes of a wrapping context (sorted, compact JSON): the associated data of a wrap."""
    return json.dumps(dict(context), sort_keys=True, separators=(",", ":")).encode()


class KeyProvider(ABC):
    """Wraps and unwraps per-checkpoint data keys with a key-encryption key it keeps to itself."""

    #: ``local`` | ``aws-kms`` | ``gcp-kms``
    kind: str

    @property
    @abstractmethod
    def key_id(self) -> str:
        """A non-secret identifier of the KEK (``local:<fingerprint>``, ``aws-kms:<arn>``, ...)."""

    @property
    @abstractmethod
    def spec(self) -> str:
        """The spec string that re-opens this provider in another process (:func:`open_key_provider`)."""

    @abstractmethod
    def wrap(self, data_key: bytes, context: Mapping[str, str]) -> bytes:
        """Encrypt ``data_key`` under the KEK, binding ``context`` as associated data."""

    @abstractmethod
    def unwrap(self, wrapped: bytes, context: Mapping[str, str], *, what: str) -> bytes:
        """The data key; :class:`IntegrityError` naming ``what`` when the KEK or context do not match."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key_id!r})"


def default_key_path() -> Path:
    """The local KEK file: ``$SPOTSHIFT_HOME/keys/kek.key``."""
    return spotshift_home() / "keys" / "kek.key"


class LocalKeyProvider(KeyProvider):
    """A 32-byte KEK in a file readable only by its owner (created only when ``create`` says so)."""

    kind = "local"

    def __init__(self, path: str | os.PathLike[str] | None = None, *, create: bool = False):
        self.path = Path(path).expanduser().resolve() if path else default_key_path()
        self._key = self._load(create)
        self._key_id = "local:" + hashlib.sha256(b"spotshift-kek-id\0" + self._key).hexdigest()[:16]

    def _load(self, create: bool) -> bytes:
        if not self.path.exists():
            if not create:
                raise ConfigError(
                    f"key file {self.path} does not exist (only a job's first training run creates one; "
                    "give the key the checkpoints were written with: --key-provider or SPOTSHIFT_KEY_PROVIDER)"
                )
            self._create()
        st = self.path.stat()
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"key file {self.path} is accessible by group/others (mode {stat.S_IMODE(st.st_mode):04o}); "
                "run chmod 600 on it"
            )
        key = self.path.read_bytes()
        if len(key) != DATA_KEY_BYTES:
            raise ConfigError(
                f"key file {self.path} must hold exactly {DATA_KEY_BYTES} bytes, has {len(key)}"
            )
        return key

    def _create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(DATA_KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, self.path)  # create-if-absent: a concurrent creator's key wins, ours is dropped
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def spec(self) -> str:
        return f"local:{self.path}"

    def wrap(self, data_key: bytes, context: Mapping[str, str]) -> bytes:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        nonce = secrets.token_bytes(12)
        return _LOCAL_WRAP_MAGIC + nonce + AESGCM(self._key).encrypt(nonce, data_key, context_bytes(context))

    def unwrap(self, wrapped: bytes, context: Mapping[str, str], *, what: str) -> bytes:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if not wrapped.startswith(_LOCAL_WRAP_MAGIC) or len(wrapped) < len(_LOCAL_WRAP_MAGIC) + 12 + 16:
            raise IntegrityError(f"{what}: wrapped data key is not a local-KEK wrap")
        nonce = wrapped[len(_LOCAL_WRAP_MAGIC) : len(_LOCAL_WRAP_MAGIC) + 12]
        try:
            return AESGCM(self._key).decrypt(
                nonce, wrapped[len(_LOCAL_WRAP_MAGIC) + 12 :], context_bytes(context)
            )
        except InvalidTag:
            raise IntegrityError(
                f"{what}: data key does not unwrap with {self.key_id} (wrong key or tampered envelope)"
            ) from None


class AwsKmsKeyProvider(KeyProvider):
    """AWS KMS symmetric key; the wrapping context is the KMS ``EncryptionContext``."""

    kind = "aws-kms"

    def __init__(self, key: str, *, region: str | None = None, endpoint_url: str | None = None):
        if not key:
            raise ConfigError("aws-kms key provider: empty key id")
        self.key = key
        self.region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        self.endpoint_url = endpoint_url
        self._client = None

    def client(self):  # noqa: ANN201 - boto3 client
        if self._client is None:
            import boto3

            # A session of its own, like the S3 store: boto3's default session caches the first
            # credentials it resolved for the whole process, whatever the environment says now.
            self._client = boto3.session.Session().client(
                "kms", region_name=self.region or "us-east-1", endpoint_url=self.endpoint_url
            )
        return self._client

    @property
    def key_id(self) -> str:
        return f"aws-kms:{self.key}"

    @property
    def spec(self) -> str:
        q = "&".join(f"{k}={v}" for k, v in (("region", self.region), ("endpoint", self.endpoint_url)) if v)
        return f"aws-kms:{self.key}" + (f"?{q}" if q else "")

    def _call(self, op: str, what: str, **kwargs):  # noqa: ANN202
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return getattr(self.client(), op)(**kwargs)
        except NoCredentialsError:
            raise CredentialsError(
                f"{what}: no AWS credentials for KMS key {self.key} (use a role: AWS_ROLE_ARN + "
                "AWS_WEB_IDENTITY_TOKEN_FILE, or an instance/task role)"
            ) from None
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("InvalidCiphertextException", "IncorrectKeyException"):
                raise IntegrityError(
                    f"{what}: data key does not unwrap with {self.key_id} (wrong key or tampered envelope)"
                ) from None
            if code in ("AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException"):
                raise CredentialsError(f"{what}: AWS KMS refused key {self.key} ({code})") from None
            if code in ("NotFoundException", "DisabledException", "KMSInvalidStateException"):
                raise ConfigError(f"{what}: AWS KMS key {self.key} is not usable ({code})") from None
            raise ConfigError(f"{what}: AWS KMS {op} failed ({code or 'error'})") from None
        except BotoCoreError as exc:
            raise ConfigError(f"{what}: AWS KMS {op} failed ({type(exc).__name__})") from None

    def wrap(self, data_key: bytes, context: Mapping[str, str]) -> bytes:
        resp = self._call(
            "encrypt", "wrap data key", KeyId=self.key, Plaintext=data_key, EncryptionContext=dict(context)
        )
        return bytes(resp["CiphertextBlob"])

    def unwrap(self, wrapped: bytes, context: Mapping[str, str], *, what: str) -> bytes:
        resp = self._call(
            "decrypt", what, CiphertextBlob=wrapped, EncryptionContext=dict(context), KeyId=self.key
        )
        return bytes(resp["Plaintext"])


class GcpKmsKeyProvider(KeyProvider):
    """Google Cloud KMS symmetric key over the REST transport, with CRC32C checks both ways."""

    kind = "gcp-kms"

    def __init__(self, key_name: str, *, endpoint: str | None = None):
        parts = key_name.split("/")
        if len(parts) < 8 or parts[0] != "projects" or parts[6] != "cryptoKeys":
            raise ConfigError(
                f"gcp-kms key {key_name!r}: expected projects/P/locations/L/keyRings/R/cryptoKeys/K"
            )
        self.key_name = "/".join(parts[:8])  # decrypt takes the CryptoKey, never a version
        self.endpoint = endpoint
        self._client = None

    def client(self):  # noqa: ANN201 - KeyManagementServiceClient
        if self._client is None:
            from google.api_core.client_options import ClientOptions
            from google.cloud import kms

            kwargs = {"transport": "rest"}
            if self.endpoint:
                kwargs["client_options"] = ClientOptions(api_endpoint=self.endpoint)
                if self.endpoint.startswith("http://"):  # a local peer: no Google credentials involved
                    from google.auth.credentials import AnonymousCredentials

                    kwargs["credentials"] = AnonymousCredentials()
            try:
                self._client = kms.KeyManagementServiceClient(**kwargs)
            except Exception as exc:  # google.auth.exceptions.DefaultCredentialsError and friends
                raise CredentialsError(
                    f"gcp-kms key {self.key_name}: no Google credentials ({type(exc).__name__})"
                ) from None
        return self._client

    @property
    def key_id(self) -> str:
        return f"gcp-kms:{self.key_name}"

    @property
    def spec(self) -> str:
        return f"gcp-kms:{self.key_name}" + (f"?endpoint={self.endpoint}" if self.endpoint else "")

    def _call(self, op: str, what: str, request: dict):  # noqa: ANN202
        from google.api_core import exceptions as gexc

        try:
            return getattr(self.client(), op)(request=request)
        except gexc.BadRequest:  # INVALID_ARGUMENT (gRPC) or HTTP 400: the ciphertext or AAD does not match
            raise IntegrityError(
                f"{what}: data key does not unwrap with {self.key_id} (wrong key or tampered envelope)"
            ) from None
        except (gexc.Unauthenticated, gexc.PermissionDenied) as exc:
            raise CredentialsError(f"{what}: Cloud KMS refused key {self.key_name} ({exc.code})") from None
        except gexc.NotFound:
            raise ConfigError(f"{what}: Cloud KMS key {self.key_name} not found") from None
        except gexc.GoogleAPIError as exc:
            raise ConfigError(f"{what}: Cloud KMS {op} failed ({type(exc).__name__})") from None
        except Exception as exc:  # transport errors (connection refused, ...)
            raise ConfigError(f"{what}: Cloud KMS {op} failed ({type(exc).__name__})") from None

    def wrap(self, data_key: bytes, context: Mapping[str, str]) -> bytes:
        import google_crc32c

        aad = context_bytes(context)
        resp = self._call(
            "encrypt",
            "wrap data key",
            {
                "name": self.key_name,
                "plaintext": data_key,
                "additional_authenticated_data": aad,
                "plaintext_crc32c": google_crc32c.value(data_key),
                "additional_authenticated_data_crc32c": google_crc32c.value(aad),
            },
        )
        if not resp.verified_plaintext_crc32c or not resp.verified_additional_authenticated_data_crc32c:
            raise IntegrityError(
                f"wrap data key: Cloud KMS did not verify the request CRC32C ({self.key_id})"
            )
        if google_crc32c.value(resp.ciphertext) != int(resp.ciphertext_crc32c):
            raise IntegrityError(f"wrap data key: Cloud KMS response corrupted in transit ({self.key_id})")
        return bytes(resp.ciphertext)

    def unwrap(self, wrapped: bytes, context: Mapping[str, str], *, what: str) -> bytes:
        import google_crc32c

        aad = context_bytes(context)
        resp = self._call(
            "decrypt",
            what,
            {
                "name": self.key_name,
                "ciphertext": wrapped,
                "additional_authenticated_data": aad,
                "ciphertext_crc32c": google_crc32c.value(wrapped),
                "additional_authenticated_data_crc32c": google_crc32c.value(aad),
            },
        )
        if google_crc32c.value(resp.plaintext) != int(resp.plaintext_crc32c):
            raise IntegrityError(f"{what}: Cloud KMS response corrupted in transit ({self.key_id})")
        return bytes(resp.plaintext)


def open_key_provider(spec: str | None = None, *, create: bool = False) -> KeyProvider:
    """The provider named by ``spec`` (default: ``$SPOTSHIFT_KEY_PROVIDER``, else ``local``).

    ``local`` | ``local:/path/kek.key`` | ``aws-kms:<key>[?region=R&endpoint=URL]`` |
    ``gcp-kms:projects/.../cryptoKeys/K[?endpoint=URL]``. :class:`ConfigError` for anything else,
    and for a local key file that does not exist unless ``create`` (a first training run only).
    """
    spec = (spec or os.environ.get(KEY_PROVIDER_ENV) or "local").strip()
    kind, _, rest = spec.partition(":")
    body, _, query = rest.partition("?")
    opts = {k: v[-1] for k, v in parse_qs(query).items()}
    if kind == "local":
        return LocalKeyProvider(body or None, create=create)
    if kind == "aws-kms":
        return AwsKmsKeyProvider(
            body,
            region=opts.get("region"),
            endpoint_url=opts.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL_KMS") or None,
        )
    if kind == "gcp-kms":
        return GcpKmsKeyProvider(body, endpoint=opts.get("endpoint"))
    raise ConfigError(
        f"key provider {spec!r}: unknown kind {kind!r} (use local, aws-kms:<key> or gcp-kms:<key name>)"
    )
