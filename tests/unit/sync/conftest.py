"""Fixtures for the sync tests: random trees, and real S3 (moto server) and GCS (emulator) peers over HTTP."""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from spotshift.sync.chunking import ChunkParams

#: small chunks so small test trees still have many chunks
SMALL = ChunkParams.resolve(16 * 1024, 64 * 1024, 256 * 1024)


def rand_bytes(n: int, seed: int) -> bytes:
    """``n`` pseudo-random bytes, generated in pieces (``randbytes`` overflows at 256 MiB)."""
    r = random.Random(seed)
    out = bytearray()
    while len(out) < n:
        out += r.randbytes(min(16 << 20, n - len(out)))
    return bytes(out)


def make_tree(root: Path, seed: int = 1) -> Path:
    """A small tree with nested dirs, an empty file, an empty dir, a symlink and odd modes/mtimes."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "emptydir").mkdir()
    (root / "a.bin").write_bytes(rand_bytes(900_000, seed))
    (root / "sub" / "b.bin").write_bytes(rand_bytes(400_000, seed + 1))
    (root / "sub" / "deeper" / "c.txt").write_text("hello\n" * 1000)
    (root / "empty.txt").write_bytes(b"")
    (root / "script.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "script.sh", 0o755)
    os.symlink("../a.bin", root / "sub" / "link-to-a")
    os.symlink("/nonexistent/target", root / "dangling")
    os.utime(root / "sub" / "b.bin", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    old = 1_500_000_000_000_000_000
    for p in (root / "a.bin", root / "empty.txt", root / "script.sh", root / "sub" / "deeper" / "c.txt"):
        os.utime(p, ns=(old, old))
    return root


def tree_bytes(root: Path) -> dict[str, object]:
    """Comparable view of a tree: files -> bytes+mode+mtime, symlinks -> target, dirs -> mode."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode & 0o7777)
            else:
                out[rel] = ("file", p.read_bytes(), st.st_mode & 0o7777, st.st_mtime_ns)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real S3 endpoint over HTTP (moto's threaded server) with fake credentials in the environment."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Environment pointing boto3 at the moto server; returns a fresh bucket name."""
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    bucket = f"spotshift-{random.randrange(1 << 30):08x}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[str]:
    """A GCS emulator over HTTP with bucket ``spotshift-gcs``; yields its base URL."""
    from gcp_storage_emulator.server import create_server

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="spotshift-gcs")
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def gcs_env(gcs_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server)
    return "spotshift-gcs"


@pytest.fixture
def loose_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every chunk its own object, as stores hold chunks of >= 1 MiB (the default sizes), so the
    small-chunk test trees exercise the loose-chunk paths; pack files have their own tests."""
    import spotshift.sync.packs as packs

    monkeypatch.setattr(packs, "PACK_CHUNK_LIMIT", 0)


def stored_objects(root: Path) -> list[Path]:
    """The chunk and pack files of a local store, sorted."""
    return sorted(
        p for d in ("chunks", "packs") if (root / d).is_dir() for p in (root / d).rglob("*") if p.is_file()
    )
