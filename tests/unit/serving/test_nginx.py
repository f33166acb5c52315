"""The nginx backend: a TrafficPolicy rendered as weighted upstreams, tested against a real nginx.

nginx comes from Debian's packages (``apt-get install nginx``), not from pyproject. It is a program
the tests start, not one of the machine's running services, so the tests that run it skip (saying
so) when it is not installed, whatever SPOTSHIFT_REQUIRE_SERVICES says; the rendering tests always run.
"""

from __future__ import annotations

import collections
from pathlib import Path

import httpx
import pytest

from bench._replica_peer import PeerState, ServerThread, bound_socket, peer_app
from spotshift.errors import ConfigError
from spotshift.serving import replica_api as api
from spotshift.serving.nginx import NginxBackend, nginx_binary, render_nginx_config
from spotshift.serving.policy import ReplicaWeight, TrafficPolicy

BODY = {"prompt": "hello nginx", "max_tokens": 4}


def policy(weights: dict[str, float], urls: dict[str, str]) -> TrafficPolicy:
    rows = tuple(
        ReplicaWeight(rid, urls[rid], "aws/us-east-1", "spot", w, 0.1, {}, (f"test weight {w}",))
        for rid, w in weights.items()
    )
    return TrafficPolicy("chat", 500.0, 0.8, {"us-east": 1.0}, rows)


def require_nginx() -> None:
    if nginx_binary() is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")


def test_render_weights_backups_retries_and_tls(tmp_path: Path) -> None:
    urls = {"a": "http://127.0.0.1:8001", "b": "http://127.0.0.1:8002", "c": "http://127.0.0.1:8003"}
    text = render_nginx_config(policy({"a": 0.8, "b": 0.2, "c": 0.0}, urls), tmp_path, 9000)
    assert "server 127.0.0.1:8001 weight=80 " in text and "server 127.0.0.1:8002 weight=20 " in text
    assert "server 127.0.0.1:8003 backup;" in text
    assert "proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;" in text
    assert "listen 127.0.0.1:9000;" in text and "proxy_ssl" not in text
    tls = {k: v.replace("http:", "https:") for k, v in urls.items()}
    text = render_nginx_config(policy({"a": 1.0}, tls), tmp_path, 9000, tls_dir=tmp_path / "router")
    assert "proxy_pass https://spotshift_chat;" in text and "proxy_ssl_verify on;" in text
    with pytest.raises(ConfigError, match="no replica"):
        render_nginx_config(policy({"a": 0.0}, urls), tmp_path, 9000)
    with pytest.raises(ConfigError, match="mix URL schemes"):
        render_nginx_config(policy({"a": 0.5, "b": 0.5}, {"a": urls["a"], "b": tls["b"]}), tmp_path, 9000)
    with pytest.raises(ConfigError, match="no host:port"):
        render_nginx_config(policy({"a": 1.0}, {"a": "http://127.0.0.1:99999"}), tmp_path, 9000)


def _free_port() -> int:
    s = bound_socket()
    port = s.getsockname()[1]
    s.close()
    return port


def test_real_nginx_follows_the_policy_reloads_and_retries_refusals(tmp_path: Path) -> None:
    require_nginx()
    a_state, b_state = PeerState("a", 0), PeerState("b", 0)
    with ServerThread(peer_app(a_state)) as a, ServerThread(peer_app(b_state)) as b:
        urls = {"a": a.url, "b": b.url}
        port = _free_port()
        backend = NginxBackend(tmp_path / "nginx", port)
        try:
            assert backend.apply(policy({"a": 0.75, "b": 0.25}, urls))
            assert not backend.apply(policy({"a": 0.75, "b": 0.25}, urls))  # unchanged: no reload
            base = f"http://127.0.0.1:{port}"

            def send(n: int) -> list[httpx.Response]:
                # a new client per phase: connections opened after a reload reach the new workers
                # (old workers finish the requests of their open connections under the old policy)
                with httpx.Client(timeout=10) as client:
                    return [client.post(base + api.COMPLETIONS_PATH, json=BODY) for _ in range(n)]

            first = send(200)
            assert backend.apply(policy({"a": 0.0, "b": 1.0}, urls))  # a becomes a backup
            second = send(40)
            b_state.draining = True  # b refuses with 503: nginx retries on the backup
            third = send(40)
            live = (tmp_path / "nginx" / "nginx.conf").read_text()
            # nginx -t refuses (no client certificate in the TLS directory): the live file stays
            tls = {k: v.replace("http:", "https:") for k, v in urls.items()}
            broken = NginxBackend(tmp_path / "nginx", port, tls_dir=tmp_path / "missing")
            with pytest.raises(ConfigError, match="nginx backend: configuration test failed"):
                broken.apply(policy({"a": 1.0, "b": 0.0}, tls))
            assert (tmp_path / "nginx" / "nginx.conf").read_text() == live
        finally:
            backend.stop()
    assert all(r.status_code == 200 for r in first + second + third)
    by = collections.Counter(r.headers[api.HEADER_REPLICA] for r in first)
    assert by == {"a": 150, "b": 50}  # smooth weighted round robin: exact shares
    assert {r.headers[api.HEADER_REPLICA] for r in second} == {"b"}
    assert {r.headers[api.HEADER_REPLICA] for r in third} == {"a"}
    assert backend.master_pid() is None


def test_real_nginx_speaks_mutual_tls_to_the_replicas(tmp_path: Path) -> None:
    """Replicas that require a client certificate from the local CA answer through nginx (the
    upstream's certificate is checked by name: nginx matches DNS names, not IP addresses)."""
    require_nginx()
    from spotshift.serving.mtls import LocalCA, uvicorn_ssl_options

    ca = LocalCA.open(tmp_path / "ca")
    opts = uvicorn_ssl_options(ca.write_server_files(tmp_path / "server", "a"))
    with ServerThread(peer_app(PeerState("a", 0)), ssl=opts) as a:
        port = _free_port()
        backend = NginxBackend(tmp_path / "nginx", port, tls_dir=ca.write_client_file(tmp_path / "c", "ngx"))
        try:
            backend.apply(policy({"a": 1.0}, {"a": a.url}))
            with httpx.Client(timeout=10) as client:
                got = [
                    client.post(f"http://127.0.0.1:{port}" + api.COMPLETIONS_PATH, json=BODY)
                    for _ in range(3)
                ]
        finally:
            backend.stop()
    assert a.url.startswith("https:") and [r.status_code for r in got] == [200] * 3
