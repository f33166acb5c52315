"""Real replicas: `spotshift serve` processes (uvicorn on ephemeral ports) serving a checkpoint the
trainer committed; greedy completions, metrics, usage facts through dbt, drain on a spot notice,
and a tampered checkpoint refused before anything listens."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spotshift.cli import main
from spotshift.serving import replica_api as api
from tests.training_support import declare_tiny_job, forge_checkpoint

httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.slow

GCP = "gcp/us-central1"
PROMPT = "the cheap spot gpu moves"
START_TIMEOUT_S = 180.0  # torch import + checkpoint verification on a loaded 2-core machine


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A SPOTSHIFT_HOME with job `tiny` trained 40 steps in gcp/us-central1 and endpoint `chat` serving it."""
    home = tmp_path_factory.mktemp("serving") / "home"
    home.mkdir()
    saved = {
        k: os.environ.get(k)
        for k in ("SPOTSHIFT_HOME", "DAGSTER_HOME", "SPOTSHIFT_WAREHOUSE", "SPOTSHIFT_CONFIG")
    }
    os.environ["SPOTSHIFT_HOME"] = str(home)
    for k in ("DAGSTER_HOME", "SPOTSHIFT_WAREHOUSE", "SPOTSHIFT_CONFIG"):
        os.environ.pop(k, None)
    try:
        declare_tiny_job(home, total_steps=400, every=40)
        assert main(["train", "tiny", "--location", GCP, "--steps", "40"]) == 0
        assert (
            main(["endpoints", "add", "chat", "--model", "tiny", "--slo-ms", "250", "--users", "us-east=1"])
            == 0
        )
        yield home
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Replica:
    """A `spotshift serve` subprocess; ``url`` from the line it prints once registered."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spotshift.cli", "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
        )
        line = self._readline(START_TIMEOUT_S)
        assert line.startswith("serving "), (line, self.stderr())
        self.url = line.split(" at ", 1)[1].split(" ", 1)[0]
        self.replica_id = line.split("(replica ", 1)[1].split(",", 1)[0]

    def _readline(self, timeout_s: float) -> str:
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
        if not sel.select(timeout_s):
            self.proc.kill()
            raise AssertionError(f"replica did not start in {timeout_s}s: {self.stderr()}")
        return self.proc.stdout.readline()  # type: ignore[union-attr]

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(running)"
        return self.proc.stderr.read()  # type: ignore[union-attr]

    def stop(self, timeout_s: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _complete(url: str, prompt: str = PROMPT, max_tokens: int = 24, **headers: str) -> Any:
    return httpx.post(
        url + api.COMPLETIONS_PATH,
        json={"prompt": prompt, "max_tokens": max_tokens},
        headers=headers,
        timeout=60,
    )


def _metric(families: dict[str, Any], name: str, **labels: str) -> float:
    for sample in (s for f in families.values() for s in f.samples):
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    raise AssertionError(f"no sample {name} {labels}")


def test_replica_serves_greedy_completions_metrics_and_usage_facts(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    from prometheus_client.parser import text_string_to_metric_families

    from spotshift.serving.loadgen import run_load

    r = Replica("chat", "--location", GCP, "--market", "reserved", "--usd-per-hour", "2.0")
    try:
        health = httpx.get(r.url + api.HEALTH_PATH).json()
        assert (
            health["status"] == "ok"
            and health["replica_id"] == r.replica_id
            and health["market"] == "reserved"
        )
        assert [x.replica_id for x in api.live_replicas("chat")] == [r.replica_id]

        first, second = _complete(r.url), _complete(r.url)
        assert first.status_code == 200, first.text
        assert first.headers[api.HEADER_REPLICA] == r.replica_id
        body = first.json()
        assert body["usage"] == {
            "prompt_tokens": len(PROMPT),
            "completion_tokens": 24,
            "total_tokens": len(PROMPT) + 24,
        }
        assert body["choices"][0]["text"] == second.json()["choices"][0]["text"]  # greedy: reproducible
        # the same text as an independent forward pass of the committed checkpoint, in this process
        from spotshift.serving.model_host import load_served_model

        torch_state = _torch_globals()
        try:
            local = load_served_model("tiny", GCP).complete(PROMPT, 24)
        finally:
            _restore_torch(torch_state)
        assert body["choices"][0]["text"] == local.text

        # a served endpoint cannot be undeclared; show lists its replica
        assert main(["endpoints", "remove", "chat"]) == 2
        assert main(["endpoints", "show", "chat", "--json"]) == 0
        out, err = capsys.readouterr()
        assert "live replica" in err and r.replica_id in err
        assert [x["replica_id"] for x in json.loads(out.splitlines()[-1])["replicas"]] == [r.replica_id]

        bad = httpx.post(r.url + api.COMPLETIONS_PATH, json={"prompt": PROMPT, "max_tokens": 0})
        assert bad.status_code == 400 and "max_tokens" in bad.json()["error"]["message"]

        load = asyncio.run(run_load(r.url, rps=20, duration_s=2, users={"us-east": 1.0}, max_tokens=8))
        assert (load.requests, load.ok, load.errors) == (40, 40, 0) and load.p50_ms is not None

        families = {
            f.name: f for f in text_string_to_metric_families(httpx.get(r.url + api.METRICS_PATH).text)
        }
        ok = _metric(families, "spotshift_replica_requests_total", status="ok")
        assert ok == 42 and _metric(families, "spotshift_replica_requests_total", status="error") == 1
        assert _metric(families, "spotshift_replica_completion_tokens_total") == 2 * 24 + 40 * 8
        assert _metric(families, "spotshift_replica_prompt_tokens_total") == 2 * len(PROMPT) + sum(
            len(_prompt(i)) for i in range(40)
        )
        assert _metric(families, "spotshift_replica_request_latency_seconds_count") == 42
        assert _metric(families, "spotshift_replica_in_flight") == 0
        assert _metric(families, "spotshift_replica_queue_depth") == 0

        # the embedded default applies the user region's round trip on the path
        from spotshift.serving.latency import rtt_ms

        def fastest_s(**headers: str) -> float:
            best = float("inf")
            with httpx.Client(timeout=60) as client:
                for _ in range(3):
                    t0 = time.perf_counter()
                    resp = client.post(
                        r.url + api.COMPLETIONS_PATH, json={"prompt": "a", "max_tokens": 1}, headers=headers
                    )
                    assert resp.status_code == 200
                    best = min(best, time.perf_counter() - t0)
            return best

        rtt_s = rtt_ms("ap-northeast", GCP) / 1000
        assert rtt_s > 0.1
        assert fastest_s(**{api.HEADER_USER_REGION: "ap-northeast"}) - fastest_s() >= 0.8 * rtt_s
        assert _complete(r.url, max_tokens=1, **{api.HEADER_USER_REGION: "mars"}).status_code == 400
        assert r.stop() == 0
    finally:
        r.kill()
    assert api.live_replicas("chat", include_draining=True) == []
    _check_usage_and_marts(home, tmp_path, r.replica_id, requests=48)


def _prompt(i: int) -> str:
    from spotshift.serving.loadgen import PROMPTS

    return PROMPTS[i % len(PROMPTS)]


def _torch_globals() -> tuple[int, bool]:
    import torch

    return torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()


def _restore_torch(state: tuple[int, bool]) -> None:
    import torch

    torch.set_num_threads(state[0])
    torch.use_deterministic_algorithms(state[1])


def _check_usage_and_marts(home: Path, tmp_path: Path, replica_id: str, *, requests: int) -> None:
    import duckdb

    from spotshift.costs.dbt import build_marts

    copy = tmp_path / "warehouse.duckdb"
    shutil.copy(home / "warehouse.duckdb", copy)
    con = duckdb.connect(str(copy), read_only=True)
    try:
        rows = con.execute(
            "select sum(requests), sum(tokens), sum(usd), count(*), min(replica_id), max(replica_id), "
            "min(market), sum(tokens_in + tokens_out) from raw.inference_usage where endpoint = 'chat'"
        ).fetchone()
    finally:
        con.close()
    n_req, tokens, usd, n_rows, rid_min, rid_max, market, tokens_split = rows
    assert n_req == requests and rid_min == rid_max == replica_id and market == "reserved"
    assert tokens == tokens_split > 0 and usd > 0 and n_rows >= 1
    run = build_marts(copy, select="+mart_cost_metrics +focus_cost_and_usage")
    assert run.returncode == 0, run.failures()
    con = duckdb.connect(str(copy), read_only=True)
    try:
        value, denominator = con.execute(
            "select value, denominator from mart_cost_metrics where scope_kind = 'fleet' and scope = 'inference' "
            "and metric = 'cost_per_million_tokens'"
        ).fetchone()
        focus = con.execute(
            "select count(*), sum(BilledCost) from focus_cost_and_usage where x_workload = 'inference'"
        ).fetchone()
    finally:
        con.close()
    assert denominator == pytest.approx(tokens / 1e6) and value == pytest.approx(usd / (tokens / 1e6))
    assert focus[0] == n_rows and float(focus[1]) == pytest.approx(usd)  # FOCUS money is DECIMAL(38,10)


def test_spot_replica_drains_on_a_notice_finishing_in_flight_and_refusing_new(home: Path) -> None:
    from spotshift.training.notice_server import MetadataServer
    from spotshift.training.preemption_endpoints import register_endpoints

    with MetadataServer() as md:
        register_endpoints({GCP: md.url})
        try:
            r = Replica("chat", "--location", GCP, "--market", "spot", "--usd-per-hour", "0.9", "--no-record")
        finally:
            register_endpoints({GCP: None})
        try:
            results: list[Any] = []
            threads = [
                threading.Thread(target=lambda i=i: results.append(_complete(r.url, f"{PROMPT} {i}", 400)))
                for i in range(6)
            ]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 30
            while httpx.get(r.url + api.HEALTH_PATH).json()["in_flight"] < 6:
                assert time.monotonic() < deadline, "requests never got in flight"
                time.sleep(0.02)
            md.preempt("gcp")  # GCP: 30 s until the instance goes
            while httpx.get(r.url + api.HEALTH_PATH).status_code != api.DRAINING_STATUS:
                assert time.monotonic() < deadline + 30, "the replica never started draining"
                time.sleep(0.02)
            # in flight still: the registry says draining (routers stop sending), new requests are refused
            while api.live_replicas("chat"):  # the registry write follows the flag by a few ms
                assert time.monotonic() < deadline + 30, "the registry never said draining"
                time.sleep(0.01)
            (entry,) = api.read_registry("chat").values()
            assert entry.state == "draining"
            refused = _complete(r.url, max_tokens=1)
            assert refused.status_code == api.DRAINING_STATUS
            assert refused.headers["Retry-After"] == "0" and refused.headers[api.HEADER_DRAINING] == "1"
            assert refused.json()["error"]["type"] == "draining"
            for t in threads:
                t.join(60)
            assert [x.status_code for x in results] == [200] * 6  # every accepted request was finished
            assert all(x.json()["usage"]["completion_tokens"] == 400 for x in results)
            assert r.proc.wait(timeout=30) == 0  # gone well before the 30 s deadline
        finally:
            r.kill()
        err = r.stderr()
        assert "gcp_metadata notice" in err and "'abandoned': 0" in err, err
        assert api.live_replicas("chat", include_draining=True) == []
        # the trainers' notice path: a write-once event in the region store and a raw.preemptions row
        from spotshift.training.notice_events import read_notices
        from spotshift.warehouse import connect

        (event,) = [e for e in read_notices(GCP) if e.get("replica_id") == r.replica_id]
        assert (event["endpoint"], event["location"], event["kind"]) == ("chat", GCP, "gcp_metadata")
        with connect(read_only=True) as con:
            row = con.execute(
                "SELECT endpoint, job, location FROM raw.preemptions WHERE notice_id = ?",
                [event["notice_id"]],
            ).fetchone()
        assert row == ("chat", None, GCP)


def test_tampered_checkpoint_is_refused_with_one_line(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from spotshift.checkpoint.format import list_checkpoints
    from spotshift.sync.store_url import open_store

    src = home / "stores" / "gcp" / "us-central1" / "checkpoints" / "tiny"
    shutil.copytree(src, tmp_path / "store" / "checkpoints" / "tiny")
    store = open_store(str(tmp_path / "store"))
    (ckpt,) = list_checkpoints(store, "tiny")
    forge_checkpoint(store, "tiny", ckpt)
    model = f"{tmp_path / 'store'}/checkpoints/tiny/{ckpt}"
    assert main(["endpoints", "add", "forged", "--model", model, "--slo-ms", "100"]) == 0
    capsys.readouterr()
    code = main(["serve", "forged", "--location", GCP, "--market", "on_demand", "--usd-per-hour", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert ckpt in err and "seal" in err, err
    assert api.live_replicas("forged", include_draining=True) == []
    assert main(["endpoints", "remove", "forged"]) == 0


def test_endpoints_cli(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = str(taken.getsockname()[1])
    assert main(["endpoints", "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:4] == ["NAME", "MODEL", "SLO_MS", "REPLICAS"] and "chat" in out
    assert main(["endpoints", "show", "chat", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["users"] == {"us-east": 1.0} and shown["slo_ms"] == 250 and shown["replicas"] == []
    for argv, word in [
        (["endpoints", "add", "x", "--model", "nope", "--slo-ms", "100"], "neither a declared job"),
        (["endpoints", "add", "x", "--model", "tiny", "--slo-ms", "-1"], "slo_ms"),
        (
            ["endpoints", "add", "x", "--model", "tiny", "--slo-ms", "100", "--users", "mars=1"],
            "user region 'mars'",
        ),
        (
            ["endpoints", "add", "x", "--model", "tiny", "--slo-ms", "100", "--users", "us-east"],
            "REGION=SHARE",
        ),
        (
            ["endpoints", "add", "x", "--model", "tiny", "--slo-ms", "100", "--allow", "gcp/nowhere-9"],
            "nowhere-9",
        ),
        (["endpoints", "add", "Bad Name", "--model", "tiny", "--slo-ms", "100"], "endpoint name"),
        (["endpoints", "add", "chat", "--model", "tiny", "--slo-ms", "100"], "already declared"),
        (["endpoints", "show", "ghost"], "ghost"),
        (["endpoints", "remove", "ghost"], "ghost"),
        (["serve", "ghost", "--location", GCP, "--market", "spot"], "ghost"),
        (["serve", "chat", "--location", "gcp/nowhere-9", "--market", "spot"], "nowhere-9"),
        (["serve", "chat", "--location", GCP, "--market", "spot", "--port", "70000"], "--port"),
        (
            ["serve", "chat", "--location", GCP, "--market", "spot", "--usd-per-hour", "1", "--port", port],
            "cannot listen",
        ),
        (["loadgen", "http://10.1.2.3:80", "--rps", "1", "--duration", "1"], "only this host"),
        (["loadgen", "http://127.0.0.1:9", "--rps", "0", "--duration", "1"], "--rps"),
        (["loadgen", "http://127.0.0.1:9", "--rps", "1", "--duration", "1e9"], "--duration"),
    ]:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and word in err, (argv, err)
    taken.close()


def _ca_and_certs(tls_dir: Path, *, serial: int, ca: Any = None) -> tuple[Any, Path, Path]:
    """A local CA (made once) and, signed by it, the replica's server certificate (``serial``) and a
    client certificate; written the way a rotation writes them (temp + rename)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from spotshift.atomic import atomic_write_bytes

    now = dt.datetime.now(dt.UTC)

    def cert(name: str, key: Any, issuer: Any, issuer_key: Any, serial_no: int, *, is_ca: bool) -> Any:
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(serial_no)
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        )
        if not is_ca:
            b = b.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return b.sign(issuer_key, hashes.SHA256())

    pem = serialization.Encoding.PEM
    if ca is None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "spotshift test CA")])
        ca = (ca_key, ca_name, cert("spotshift test CA", ca_key, ca_name, ca_key, 1, is_ca=True))
    ca_key, ca_name, ca_cert = ca

    def key_pem(k: Any) -> bytes:
        return k.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    server_key = ec.generate_private_key(ec.SECP256R1())
    client_key = ec.generate_private_key(ec.SECP256R1())
    atomic_write_bytes(tls_dir / api.TLS_CA_FILE, ca_cert.public_bytes(pem))
    atomic_write_bytes(tls_dir / api.TLS_KEY_FILE, key_pem(server_key))
    atomic_write_bytes(
        tls_dir / api.TLS_CERT_FILE,
        cert("replica", server_key, ca_name, ca_key, serial, is_ca=False).public_bytes(pem),
    )
    client_cert, client_key_file = tls_dir / "client.pem", tls_dir / "client-key.pem"
    atomic_write_bytes(
        client_cert, cert("router", client_key, ca_name, ca_key, serial + 1, is_ca=False).public_bytes(pem)
    )
    atomic_write_bytes(client_key_file, key_pem(client_key))
    return ca, client_cert, client_key_file


def _server_serial(url: str, ca_file: Path, client: tuple[Path, Path]) -> int:
    import socket
    import ssl
    from urllib.parse import urlparse

    from cryptography import x509

    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.load_cert_chain(str(client[0]), str(client[1]))
    u = urlparse(url)
    with (
        socket.create_connection((u.hostname, u.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=u.hostname) as s,
    ):
        return x509.load_der_x509_certificate(s.getpeercert(binary_form=True)).serial_number


def test_replica_under_mutual_tls_refuses_clients_without_a_certificate_and_reloads_rotated_ones(
    home: Path, tmp_path: Path
) -> None:
    import ssl

    tls = tmp_path / "tls"
    tls.mkdir()
    ca, client_cert, client_key = _ca_and_certs(tls, serial=100)
    r = Replica(
        "chat",
        "--location",
        GCP,
        "--market",
        "on_demand",
        "--usd-per-hour",
        "1",
        "--no-record",
        "--tls-dir",
        str(tls),
    )
    try:
        assert r.url.startswith("https://127.0.0.1:")
        ca_file = tls / api.TLS_CA_FILE
        with (
            httpx.Client(verify=ssl.create_default_context(cafile=str(ca_file))) as anonymous,
            pytest.raises(httpx.HTTPError),
        ):
            anonymous.post(r.url + api.COMPLETIONS_PATH, json={"prompt": PROMPT, "max_tokens": 2})
        ctx = ssl.create_default_context(cafile=str(ca_file))
        ctx.load_cert_chain(str(client_cert), str(client_key))
        with httpx.Client(verify=ctx) as router:
            assert (
                router.post(
                    r.url + api.COMPLETIONS_PATH, json={"prompt": PROMPT, "max_tokens": 2}
                ).status_code
                == 200
            )
            assert _server_serial(r.url, ca_file, (client_cert, client_key)) == 100
            _ca_and_certs(tls, serial=200, ca=ca)  # rotation: new server and client certificates, same CA
            deadline = time.monotonic() + 20
            while _server_serial(r.url, ca_file, (client_cert, client_key)) != 200:
                # the open connection keeps working while the replica picks up the new files
                assert (
                    router.post(
                        r.url + api.COMPLETIONS_PATH, json={"prompt": PROMPT, "max_tokens": 2}
                    ).status_code
                    == 200
                )
                assert time.monotonic() < deadline, "rotated certificate never served"
                time.sleep(0.2)
        assert r.stop() == 0
    finally:
        r.kill()


def test_replica_rotates_its_own_certificate_every_virtual_day_without_a_failed_request(
    home: Path, tmp_path: Path
) -> None:
    import ssl
    from datetime import UTC, datetime

    from spotshift.clock import VirtualClock, clock_path
    from spotshift.serving.mtls import LocalCA

    tls = tmp_path / "tls"
    ca = LocalCA.open()  # the local CA of this SPOTSHIFT_HOME: the replica may re-issue its own leaf
    ca.write_server_files(tls, "replica-1")
    client = ca.write_client_file(tmp_path / "client", "router-test") / "client.pem"
    args = ("--location", GCP, "--market", "on_demand", "--usd-per-hour", "1", "--no-record")
    r = Replica("chat", *args, "--tls-dir", str(tls))
    try:
        ca_file = tls / api.TLS_CA_FILE
        first = _server_serial(r.url, ca_file, (client, client))
        VirtualClock.starting(datetime.now(UTC), speed=86_400 / 4).save()  # a virtual day every 4 s
        try:
            ctx = ssl.create_default_context(cafile=str(ca_file))
            ctx.load_cert_chain(str(client))
            statuses = []
            deadline = time.monotonic() + 40
            with httpx.Client(verify=ctx) as router:
                while _server_serial(r.url, ca_file, (client, client)) == first:
                    assert time.monotonic() < deadline, "the replica never re-issued its certificate"
                    statuses.append(
                        router.post(
                            r.url + api.COMPLETIONS_PATH, json={"prompt": PROMPT, "max_tokens": 2}
                        ).status_code
                    )
                    time.sleep(0.2)
                statuses.append(
                    router.post(
                        r.url + api.COMPLETIONS_PATH, json={"prompt": PROMPT, "max_tokens": 2}
                    ).status_code
                )
            assert set(statuses) == {200}
        finally:
            clock_path().unlink(missing_ok=True)
        assert r.stop() == 0
    finally:
        r.kill()
