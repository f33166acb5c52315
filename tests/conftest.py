"""Shared fixtures: an isolated SPOTSHIFT_HOME per test, service availability, the shared real data."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def spotshift_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty SPOTSHIFT_HOME; every path helper of spotshift.home points inside it."""
    home = tmp_path / "spotshift-home"
    home.mkdir()
    monkeypatch.setenv("SPOTSHIFT_HOME", str(home))
    for var in ("DAGSTER_HOME", "SPOTSHIFT_WAREHOUSE", "SPOTSHIFT_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    return home


def require_service(name: str, host: str, port: int) -> None:
    """Skip the test when ``host:port`` does not answer, unless SPOTSHIFT_REQUIRE_SERVICES=1 (then fail)."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError as exc:
        message = f"{name} not available at {host}:{port} ({exc})"
    if os.environ.get("SPOTSHIFT_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


def shared_data(name: str) -> Path:
    """A file of ../shared/data; the test is skipped when the real data is absent (fresh clone elsewhere)."""
    from spotshift.home import shared_data_file

    p = shared_data_file(name)
    if p is None:
        pytest.skip(f"../shared/data/{name} not present")
    return p


@pytest.fixture
def gcp_history() -> Path:
    """The real weekly GCP GPU price history (skips when absent)."""
    return shared_data("gcp_gpu_prices_2022_2024.csv")


@contextlib.contextmanager
def open_instance(dagster_home: Path | None = None) -> Iterator[Any]:
    """A persistent DagsterInstance (``dagster_home`` or $DAGSTER_HOME), disposed on exit.

    Deliberately not ``with DagsterInstance...``: Dagster 1.13's ``__enter__`` puts the instance's
    defs-state storage into a context variable that ``__exit__`` never resets, so every later
    ``materialize()`` in the same test process trips over a dead weak reference.
    """
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(dagster_home)) if dagster_home else dg.DagsterInstance.get()
    try:
        yield instance
    finally:
        instance.dispose()
