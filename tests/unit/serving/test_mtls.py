"""Mutual TLS router <-> replica: local CA, refusal of clients without a valid certificate, rotation
every 24 virtual hours without a dropped request."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import stat
import time
from pathlib import Path

import httpx
import pytest

from bench._replica_peer import PeerState, ServerThread, peer_app
from spotshift.errors import IntegrityError
from spotshift.serving import mtls
from spotshift.serving.mtls import (
    CA_KEY_FILE,
    CLIENT_FILE,
    CertRotator,
    LocalCA,
    client_context,
    reload_context,
    uvicorn_ssl_options,
)
from spotshift.serving.replica_api import COMPLETIONS_PATH, TLS_CERT_FILE

BODY = {"prompt": "hello", "max_tokens": 4}


def _setup(tmp: Path) -> tuple[LocalCA, Path, Path]:
    ca = LocalCA.open(tmp / "ca")
    server_dir, client_dir = tmp / "replica-tls", tmp / "router-tls"
    ca.write_server_files(server_dir, "replica-1")
    ca.write_client_file(client_dir, "router-chat")
    return ca, server_dir, client_dir


def _serial_seen(port: int, client_dir: Path) -> int:
    """Serial number of the certificate the server presents to a new connection."""
    from cryptography import x509

    ctx = client_context(client_dir)
    import socket

    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s,
    ):
        return x509.load_der_x509_certificate(s.getpeercert(binary_form=True)).serial_number


def test_ca_is_created_once_and_its_key_is_private(tmp_path: Path) -> None:
    ca = LocalCA.open(tmp_path / "ca")
    again = LocalCA.open(tmp_path / "ca")
    assert again.ca_pem == ca.ca_pem
    assert stat.S_IMODE((tmp_path / "ca" / CA_KEY_FILE).stat().st_mode) == 0o600
    ca.write_client_file(tmp_path / "c", "router")
    assert stat.S_IMODE((tmp_path / "c" / CLIENT_FILE).stat().st_mode) == 0o600
    other = LocalCA.open(tmp_path / "other")
    (tmp_path / "ca" / CA_KEY_FILE).write_bytes((tmp_path / "other" / CA_KEY_FILE).read_bytes())
    with pytest.raises(IntegrityError, match="does not match"):
        LocalCA.open(tmp_path / "ca")
    assert other.ca_pem != ca.ca_pem


def test_replica_refuses_clients_without_a_valid_certificate(tmp_path: Path) -> None:
    ca, server_dir, client_dir = _setup(tmp_path)
    stranger = LocalCA.open(tmp_path / "stranger")
    stranger.write_client_file(tmp_path / "stranger-client", "router-chat")
    # an expired certificate from the right CA
    expired_dir = tmp_path / "expired"
    ca.write_client_file(
        expired_dir, "router-chat", not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    )
    with ServerThread(peer_app(PeerState("r1", 0)), ssl=uvicorn_ssl_options(server_dir)) as srv:
        good = httpx.post(srv.url + COMPLETIONS_PATH, json=BODY, verify=client_context(client_dir))
        assert good.status_code == 200

        no_cert = ssl.create_default_context(cafile=str(client_dir / "ca.pem"))
        wrong_ca = ssl.create_default_context(cafile=str(client_dir / "ca.pem"))
        wrong_ca.load_cert_chain(str(tmp_path / "stranger-client" / CLIENT_FILE))
        old = ssl.create_default_context(cafile=str(client_dir / "ca.pem"))
        old.load_cert_chain(str(expired_dir / CLIENT_FILE))
        for ctx in (no_cert, wrong_ca, old):
            with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
                httpx.post(srv.url + COMPLETIONS_PATH, json=BODY, verify=ctx)
        # and the router refuses a replica whose certificate is not from the CA
        with pytest.raises(httpx.ConnectError):
            httpx.post(srv.url + COMPLETIONS_PATH, json=BODY, verify=ssl.create_default_context())


def test_rotation_every_24_virtual_hours_drops_no_request(tmp_path: Path) -> None:
    ca, server_dir, client_dir = _setup(tmp_path)
    now = [dt.datetime(2026, 1, 1, tzinfo=dt.UTC)]
    clock = lambda: now[0]  # noqa: E731
    server_rot = CertRotator(ca, server_dir, "replica-1", "server", clock)
    client_rot = CertRotator(ca, client_dir, "router-chat", "client", clock)
    server_rot.check(), client_rot.check()
    client_ctx = client_context(client_dir)

    with ServerThread(peer_app(PeerState("r1", 2.0)), ssl=uvicorn_ssl_options(server_dir)) as srv:
        reloader = srv.reloader  # polled in the server's own loop, as a replica does
        serials = [_serial_seen(srv.port, client_dir)]

        done = [0]  # answered requests so far (ok or not)
        failures: list[str] = []

        async def load(stop: asyncio.Event) -> tuple[int, int]:
            ok = failed = 0
            limits = httpx.Limits(max_connections=8, max_keepalive_connections=2)
            # a generous timeout: on a loaded box a slow answer is not a dropped request
            async with httpx.AsyncClient(verify=client_ctx, limits=limits, timeout=60.0) as client:
                while not stop.is_set():
                    rs = await asyncio.gather(
                        *(client.post(srv.url + COMPLETIONS_PATH, json=BODY) for _ in range(8)),
                        return_exceptions=True,
                    )
                    for r in rs:
                        good = isinstance(r, httpx.Response) and r.status_code == 200
                        ok += good
                        failed += not good
                        if not good:
                            failures.append(repr(r))
                    done[0] += len(rs)
            return ok, failed

        async def traffic(n: int) -> None:  # wait until n more requests were answered
            target = done[0] + n
            while done[0] < target:
                await asyncio.sleep(0.01)

        async def rotate(stop: asyncio.Event) -> None:
            for _ in range(3):
                await traffic(24)  # requests in flight on pooled connections across each rotation
                now[0] += dt.timedelta(hours=23)
                assert not server_rot.check() and not client_rot.check()  # not due yet
                now[0] += dt.timedelta(hours=1)
                assert server_rot.check() and client_rot.check()
                deadline = time.monotonic() + 10
                while reloader.reloads < server_rot.rotations and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)  # the replica's poll picks the new files up
                reload_context(client_ctx, client_dir, "client")  # the router's tick
                serials.append(await asyncio.to_thread(_serial_seen, srv.port, client_dir))
            await traffic(24)
            stop.set()

        async def main() -> tuple[int, int]:
            stop = asyncio.Event()
            (ok, failed), _ = await asyncio.gather(load(stop), rotate(stop))
            return ok, failed

        ok, failed = asyncio.run(main())
    assert failed == 0 and ok >= 96, failures[:3]
    assert server_rot.rotations == client_rot.rotations == 3 and reloader.reloads == 3
    assert len(set(serials)) == 4  # every new handshake after a rotation saw the new certificate
    assert (server_dir / TLS_CERT_FILE).exists()


def test_a_rotation_landing_while_the_reloader_loads_counts_one_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files renamed between the reloader's stamp and its load: one reload, not a second one
    at the next poll for files it already loaded (the flake seen in the rotation test)."""
    ca, server_dir, _ = _setup(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    reload_context(ctx, server_dir, "server")
    reloader = mtls.TLSReloader(ctx, server_dir, "server")
    cert, key = ca.issue("replica-1", "server")
    mtls.atomic_write_bytes(server_dir / mtls.TLS_KEY_FILE, key)  # the key landed; the cert not yet
    real, calls = mtls.reload_context, [0]

    def cert_lands_during_the_load(*args: object) -> None:
        calls[0] += 1
        if calls[0] == 1:
            time.sleep(0.01)  # a new mtime, even on coarse-grained filesystems
            mtls.atomic_write_bytes(server_dir / TLS_CERT_FILE, cert)
        real(*args)

    monkeypatch.setattr(mtls, "reload_context", cert_lands_during_the_load)
    assert reloader.check() and reloader.reloads == 1
    assert not reloader.check() and reloader.reloads == 1
