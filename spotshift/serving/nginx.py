"""The nginx traffic backend: a :class:`~spotshift.serving.policy.TrafficPolicy` as weighted upstreams.

The control plane can push the router's decisions to an existing proxy instead of (or in front of)
``spotshift router``. This backend renders one ``nginx.conf`` per endpoint:

* one ``upstream`` with a ``server`` per replica, ``weight`` = the policy's share x 100 (nginx's
  smooth weighted round robin reproduces the shares exactly over every 100 requests); replicas with
  weight 0 are ``backup`` servers: they get traffic only when every weighted one failed;
* ``proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent``: a refused
  (503 draining) or failed request is retried on the next server, as the router does (POST is
  retried because completions are idempotent under greedy decoding);
* keep-alive connections to the replicas (``keepalive`` + HTTP/1.1), and under mutual TLS
  ``proxy_ssl_certificate``/``proxy_ssl_trusted_certificate`` with ``proxy_ssl_verify on``.

:meth:`NginxBackend.apply` writes the configuration atomically only after ``nginx -t`` accepted it
(a bad policy never replaces a working configuration), then starts nginx or sends ``nginx -s
reload`` (graceful: old workers finish their requests) and waits until the new workers run and the
old ones have left, so connections opened after it returns follow the new policy. Errors are
one line naming nginx and the step, never its full output.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

from spotshift.atomic import atomic_write_text, pid_alive, temp_path
from spotshift.errors import ConfigError
from spotshift.serving.mtls import CLIENT_FILE
from spotshift.serving.policy import TrafficPolicy
from spotshift.serving.replica_api import TLS_CA_FILE

WEIGHT_SCALE = 100
CONF_FILE = "nginx.conf"


def nginx_binary() -> str | None:
    """Path of the nginx executable (``PATH``, then ``/usr/sbin/nginx``), or None."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def _upstream_name(endpoint: str) -> str:
    return "spotshift_" + re.sub(r"[^A-Za-z0-9_]", "_", endpoint)


def _comment(text: str) -> str:
    return " ".join(text.split())[:200]


def render_nginx_config(
    policy: TrafficPolicy, prefix: Path, listen_port: int, tls_dir: Path | None = None
) -> str:
    """The full ``nginx.conf`` for ``policy``, serving on ``127.0.0.1:listen_port``.

    ``prefix``: nginx's working directory (pid, logs, temp paths). ``tls_dir``: the router's client
    certificate directory (:mod:`spotshift.serving.mtls`) when replicas require mutual TLS.
    :class:`ConfigError` when no replica carries traffic or replicas mix http and https.
    """
    ints = policy.integer_weights(WEIGHT_SCALE)
    if not any(ints.values()):
        raise ConfigError(f"nginx backend: the policy of {policy.endpoint} sends traffic to no replica")
    schemes = {urlsplit(w.url).scheme for w in policy.weights}
    if len(schemes) != 1 or not schemes <= {"http", "https"}:
        raise ConfigError(f"nginx backend: replicas of {policy.endpoint} mix URL schemes {sorted(schemes)}")
    scheme = schemes.pop()
    if scheme == "https" and tls_dir is None:
        raise ConfigError(
            f"nginx backend: replicas of {policy.endpoint} use https; a TLS directory is needed"
        )
    up = _upstream_name(policy.endpoint)
    servers = []
    for w in policy.weights:
        parts = urlsplit(w.url)
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or not port:
            raise ConfigError(f"nginx backend: replica {w.replica_id} URL {w.url!r} has no host:port")
        n = ints[w.replica_id]
        how = f"weight={n} max_fails=1 fail_timeout=1s" if n else "backup"
        why = _comment(f"{w.replica_id} {w.location} {w.market}: {'; '.join(w.reasons)}")
        servers.append(f"        server {parts.hostname}:{port} {how};  # {why}")
    p = Path(prefix).resolve()
    tls = ""
    if scheme == "https":
        d = Path(tls_dir).resolve()  # type: ignore[arg-type]
        tls = (
            f"            proxy_ssl_certificate {d / CLIENT_FILE};\n"
            f"            proxy_ssl_certificate_key {d / CLIENT_FILE};\n"
            f"            proxy_ssl_trusted_certificate {d / TLS_CA_FILE};\n"
            "            proxy_ssl_verify on;\n"
            # X509_check_host matches DNS names only: the leaves carry "localhost" for it
            "            proxy_ssl_name localhost;\n"
            "            proxy_ssl_session_reuse on;\n"
        )
    temps = "\n".join(
        f"    {k}_temp_path {p / 'tmp' / k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""# spotshift nginx backend for endpoint {policy.endpoint}: rendered from its TrafficPolicy, do not edit
# SLO {policy.slo_ms:g} ms, {policy.cheap_share:.0%} cheapest / {1 - policy.cheap_share:.0%} fastest
worker_processes 1;
pid {p / "nginx.pid"};
error_log {p / "error.log"} warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
{temps}
    upstream {up} {{
{chr(10).join(servers)}
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{int(listen_port)};
        location / {{
            proxy_pass {scheme}://{up};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;
            proxy_connect_timeout 2s;
            proxy_read_timeout 30s;
{tls}        }}
    }}
}}
"""


class NginxBackend:
    """One nginx process serving one endpoint from ``directory`` (configuration, pid, logs)."""

    def __init__(self, directory: Path, listen_port: int, tls_dir: Path | None = None) -> None:
        binary = nginx_binary()
        if binary is None:
            raise ConfigError("nginx backend: nginx is not installed (Debian: apt-get install nginx)")
        self.nginx, self.directory, self.port, self.tls_dir = (
            binary,
            Path(directory).resolve(),
            listen_port,
            tls_dir,
        )
        self.conf = self.directory / CONF_FILE

    def _run(self, step: str, *args: str) -> None:
        proc = subprocess.run(
            [self.nginx, "-p", str(self.directory), "-c", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if "[emerg]" in ln or "[alert]" in ln]
            first = (lines or proc.stderr.splitlines() or ["no message"])[0]
            raise ConfigError(f"nginx backend: {step} failed (exit {proc.returncode}): {first[:300]}")

    def master_pid(self) -> int | None:
        """The running master's pid, or None."""
        try:
            pid = int((self.directory / "nginx.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def _workers(self, master: int) -> set[int]:
        import psutil

        try:
            return {c.pid for c in psutil.Process(master).children()}
        except psutil.Error:
            return set()

    def apply(self, policy: TrafficPolicy, wait_s: float = 10.0) -> bool:
        """Render ``policy``; if it differs from the live file, test, install atomically, then start
        nginx or reload it and wait (up to ``wait_s``) until only new workers run. True when it changed."""
        text = render_nginx_config(policy, self.directory, self.port, self.tls_dir)
        for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.directory / "tmp" / k).mkdir(parents=True, exist_ok=True)
        master = self.master_pid()
        if master and self.conf.exists() and self.conf.read_text() == text:
            return False
        candidate = temp_path(self.directory)
        try:
            Path(candidate).write_text(text)
            self._run("configuration test", str(candidate), "-t", "-q")
        finally:
            Path(candidate).unlink(missing_ok=True)
        atomic_write_text(self.conf, text)
        if master is None:
            self._run("start", str(self.conf))
            return True
        before = self._workers(master)
        self._run("reload", str(self.conf), "-s", "reload")
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            now = self._workers(master)
            if now - before and not now & before:  # new workers up, the old ones done
                break
            time.sleep(0.02)
        return True

    def stop(self, wait_s: float = 10.0) -> None:
        """Graceful stop (``nginx -s quit``: workers finish their requests); no-op when not running."""
        master = self.master_pid()
        if master is None:
            return
        self._run("stop", str(self.conf), "-s", "quit")
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and pid_alive(master):
            time.sleep(0.02)
