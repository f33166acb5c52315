"""Mutual TLS between the router and the replicas: a local CA, leaf certificates, rotation.

Seed 000 makes this non-negotiable: router <-> replica traffic is encrypted and both sides prove
who they are with certificates from one local CA, rotated every 24 hours without a dropped request.

* :class:`LocalCA` — an ECDSA P-256 CA made with ``cryptography`` (no shell calls), kept in
  ``$SPOTSHIFT_HOME/serving/ca/`` (key file mode 0600, never logged). It issues short-lived leaf
  certificates: ``server`` ones (SAN ``127.0.0.1``, ``localhost`` and the replica's name, extended
  key usage serverAuth) and ``client`` ones (clientAuth).
* **Files** follow :mod:`spotshift.serving.replica_api`: a replica's ``--tls-dir`` holds
  ``ca.pem``, ``server.pem`` and ``server-key.pem``. The router keeps its client certificate and
  key in one PEM file (``client.pem``), so one atomic rename replaces both.
* **Rotation** (:class:`CertRotator`): a leaf is re-issued when its age on the *virtual* clock
  (:mod:`spotshift.clock`; the demo runs it fast) reaches ``rotate_every_s`` (24 h). The
  certificate's own validity is wall-clock time (TLS libraries check it against the system clock):
  from 5 minutes before issue to ``rotate_every_s`` + 1 h after, so an unrotated leaf expires
  for real. New files land by temp + rename, the key before the certificate; whoever holds a live
  ``ssl.SSLContext`` reloads it (:func:`reload_context`), which changes what *new* handshakes
  present while open connections carry on — hence no dropped request.
* **Servers** (the replica): :func:`uvicorn_ssl_options` gives uvicorn's ``ssl_*`` options with
  ``ssl_cert_reqs=CERT_REQUIRED`` (a client without a certificate from the CA is refused during
  the handshake); after ``config.load()`` the live context is ``config.ssl``, and a
  :class:`TLSReloader` on it, polled every second, picks up rotated files::

      config = uvicorn.Config(app, host="127.0.0.1", port=port, **uvicorn_ssl_options(tls_dir))
      config.load()
      reloader = TLSReloader(config.ssl, tls_dir, role="server")
      ...  # every second: reloader.check()

  The reloader loads a changed pair into a scratch context first and only then into the live one,
  so a poll that falls between the key's and the certificate's rename never breaks the server.
* **Clients** (the router, loadgen, benchmarks): :func:`client_context` for httpx's ``verify=``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from spotshift.atomic import atomic_write_bytes
from spotshift.errors import ConfigError, IntegrityError
from spotshift.home import spotshift_home
from spotshift.serving.replica_api import TLS_CA_FILE, TLS_CERT_FILE, TLS_KEY_FILE

ROTATE_EVERY_S = 86_400.0  # seed 000: certificates rotate every 24 hours
CLIENT_FILE = "client.pem"  # the router's certificate chain and key, one file
CA_KEY_FILE = "ca-key.pem"
CA_VALIDITY_DAYS = 3650
BACKDATE_S = 300.0  # leaves are valid from a little before issue (clock skew between processes)
GRACE_S = 3600.0  # and expire an hour after they were due for rotation
ROLES = ("server", "client")


def ca_dir() -> Path:
    """Where the local CA lives: ``$SPOTSHIFT_HOME/serving/ca``."""
    return spotshift_home() / "serving" / "ca"


def _wall_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class LocalCA:
    """The local certificate authority (load with :meth:`open`, which creates it on first use)."""

    def __init__(self, directory: Path, key: object, cert: object) -> None:
        self.directory, self._key, self.cert = directory, key, cert

    @classmethod
    def open(cls, directory: Path | None = None) -> LocalCA:
        """Load the CA in ``directory`` (default :func:`ca_dir`), creating key and certificate if absent.

        :class:`IntegrityError` when the files exist but do not form a CA key pair.
        """
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        d = Path(directory) if directory is not None else ca_dir()
        key_path, cert_path = d / CA_KEY_FILE, d / TLS_CA_FILE
        if key_path.exists() and cert_path.exists():
            try:
                key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
                cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            except ValueError:
                raise IntegrityError(f"{d}: the local CA files are not PEM key and certificate") from None
            if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
                raise IntegrityError(f"{d}: the local CA key does not match its certificate")
            return cls(d, key, cert)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "spotshift local CA")])
        now = _wall_now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(seconds=BACKDATE_S))
            .not_valid_after(now + dt.timedelta(days=CA_VALIDITY_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        pem_key = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        atomic_write_bytes(key_path, pem_key)  # 0600; the certificate last: it marks a complete CA
        atomic_write_bytes(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        return cls(d, key, cert)

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate, PEM (what both sides trust)."""
        from cryptography.hazmat.primitives import serialization

        return self.cert.public_bytes(serialization.Encoding.PEM)  # type: ignore[attr-defined]

    def issue(
        self,
        name: str,
        role: str,
        *,
        hosts: Sequence[str] = ("127.0.0.1", "localhost"),
        lifetime_s: float = ROTATE_EVERY_S + GRACE_S,
        not_before: dt.datetime | None = None,
    ) -> tuple[bytes, bytes]:
        """A fresh leaf for ``name``: ``(certificate PEM, private key PEM)``.

        ``role`` is ``server`` (SAN ``hosts`` + ``name``, serverAuth) or ``client`` (clientAuth).
        Valid from ``not_before`` (default: now minus 5 minutes, wall clock) for ``lifetime_s``.
        """
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        if role not in ROLES:
            raise ConfigError(f"certificate role {role!r} is not one of {', '.join(ROLES)}")
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or (_wall_now() - dt.timedelta(seconds=BACKDATE_S))
        sans: list[x509.GeneralName] = [x509.DNSName(name)] if role == "server" else []
        for h in hosts if role == "server" else ():
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        usage = ExtendedKeyUsageOID.SERVER_AUTH if role == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)  # type: ignore[attr-defined]
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(seconds=BACKDATE_S + lifetime_s))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),  # type: ignore[attr-defined]
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())  # type: ignore[arg-type]
        pem_key = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cert.public_bytes(serialization.Encoding.PEM), pem_key

    def _write_ca(self, d: Path) -> None:
        # unchanged: left alone, so a rotation changes only the leaf (one reload per rotation)
        path = d / TLS_CA_FILE
        if not path.exists() or path.read_bytes() != self.ca_pem:
            atomic_write_bytes(path, self.ca_pem)

    def write_server_files(self, tls_dir: Path, name: str, **kwargs: object) -> Path:
        """Issue a server leaf into a replica's ``--tls-dir`` (``ca.pem``, key, then certificate)."""
        cert, key = self.issue(name, "server", **kwargs)  # type: ignore[arg-type]
        d = Path(tls_dir)
        self._write_ca(d)
        atomic_write_bytes(d / TLS_KEY_FILE, key)
        atomic_write_bytes(d / TLS_CERT_FILE, cert)
        return d

    def write_client_file(self, tls_dir: Path, name: str, **kwargs: object) -> Path:
        """Issue a client leaf into ``tls_dir``: ``ca.pem`` and ``client.pem`` (chain + key, 0600)."""
        cert, key = self.issue(name, "client", **kwargs)  # type: ignore[arg-type]
        d = Path(tls_dir)
        self._write_ca(d)
        atomic_write_bytes(d / CLIENT_FILE, cert + key)
        return d


def _files(tls_dir: Path, role: str) -> tuple[Path, Path | None]:
    d = Path(tls_dir)
    return (d / TLS_CERT_FILE, d / TLS_KEY_FILE) if role == "server" else (d / CLIENT_FILE, None)


def uvicorn_ssl_options(tls_dir: Path) -> dict[str, object]:
    """uvicorn ``Config``/``run`` options serving HTTPS from a replica's ``--tls-dir`` and requiring
    a client certificate that chains to the directory's ``ca.pem``."""
    d = Path(tls_dir)
    for f in (TLS_CA_FILE, TLS_CERT_FILE, TLS_KEY_FILE):
        if not (d / f).is_file():
            raise ConfigError(f"--tls-dir {d}: {f} is missing")
    return {
        "ssl_certfile": str(d / TLS_CERT_FILE),
        "ssl_keyfile": str(d / TLS_KEY_FILE),
        "ssl_ca_certs": str(d / TLS_CA_FILE),
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
    }


def client_context(tls_dir: Path) -> ssl.SSLContext:
    """The router's TLS context: trusts only ``ca.pem``, checks the server name, presents ``client.pem``."""
    d = Path(tls_dir)
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(d / TLS_CA_FILE))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(d / CLIENT_FILE))
    return ctx


def reload_context(ctx: ssl.SSLContext, tls_dir: Path, role: str) -> None:
    """Load the current certificate, key and CA of ``tls_dir`` into the live ``ctx``.

    The pair is first loaded into a scratch context: a mismatched or half-rotated pair raises
    :class:`ssl.SSLError` before the live context is touched (the caller keeps the old one and
    tries again at its next poll).
    """
    cert, key = _files(tls_dir, role)
    ca = str(Path(tls_dir) / TLS_CA_FILE)
    scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if role == "server" else ssl.PROTOCOL_TLS_CLIENT)
    scratch.load_cert_chain(str(cert), str(key) if key else None)
    scratch.load_verify_locations(ca)
    ctx.load_cert_chain(str(cert), str(key) if key else None)
    ctx.load_verify_locations(ca)


class TLSReloader:
    """Polls a TLS directory and reloads a live context when its files change (see module doc)."""

    def __init__(self, ctx: ssl.SSLContext, tls_dir: Path, role: str = "server") -> None:
        self.ctx, self.tls_dir, self.role = ctx, Path(tls_dir), role
        self._stamp = self._mtimes()
        self.reloads = 0

    def _mtimes(self) -> tuple[int, ...]:
        cert, key = _files(self.tls_dir, self.role)
        paths = [cert, self.tls_dir / TLS_CA_FILE] + ([key] if key else [])
        return tuple(os.stat(p).st_mtime_ns if p.exists() else 0 for p in paths)

    def check(self) -> bool:
        """Reload when the files changed since the last successful load; True if it reloaded."""
        stamp = self._mtimes()
        if stamp == self._stamp:
            return False
        for _ in range(3):
            try:
                reload_context(self.ctx, self.tls_dir, self.role)
            except (ssl.SSLError, OSError):
                return False  # caught between renames: retry at the next poll
            after = self._mtimes()
            if after == stamp:
                break
            stamp = after  # renamed while loading: load again, so the stamp names what is loaded
        self._stamp = stamp
        self.reloads += 1
        return True


@dataclass
class CertRotator:
    """Re-issues one leaf when its age on ``clock`` (virtual time) reaches ``rotate_every_s``.

    ``check()`` is cheap; call it from the owner's periodic loop. It writes the new files (see
    :class:`LocalCA`) and returns True when it rotated; the owner's :class:`TLSReloader` (or its
    own :func:`reload_context`) then loads them.
    """

    ca: LocalCA
    tls_dir: Path
    name: str
    role: str
    clock: Callable[[], dt.datetime]
    rotate_every_s: float = ROTATE_EVERY_S
    issued_at: dt.datetime | None = None
    rotations: int = 0

    def issue(self) -> None:
        """Issue now (first certificate, or a forced rotation)."""
        if self.role == "server":
            self.ca.write_server_files(self.tls_dir, self.name)
        else:
            self.ca.write_client_file(self.tls_dir, self.name)
        self.issued_at = self.clock()

    def check(self) -> bool:
        """Issue when none was issued yet or the current leaf is due; True when it issued."""
        if (
            self.issued_at is not None
            and (self.clock() - self.issued_at).total_seconds() < self.rotate_every_s
        ):
            return False
        first = self.issued_at is None
        self.issue()
        self.rotations += 0 if first else 1
        return True
