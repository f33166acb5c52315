"""Shared fixtures: an isolated SPOTSHIFT_HOME per test, service availability, the shared real data."""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from filelock import FileLock

T = TypeVar("T")

os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

REPO = Path(__file__).resolve().parents[1]


#: The modules that take longest, longest first (sum of their tests' durations in a full run of the
#: suite, 2026-12-04: 913 s for the demo's down to 113 s); every other module with a ``slow`` test
#: follows them, then the rest.
LONGEST_FIRST = (
    "tests/dagster/test_demo.py",
    "tests/dagster/test_workers.py",
    "tests/dagster/test_migration.py",
    "tests/unit/training/test_ddp.py",
    "tests/unit/test_readme.py",
    "tests/unit/serving/test_replica.py",
    "tests/unit/training/test_run_wrapper.py",
    "tests/unit/serving/test_bench_preemption_drill.py",
    "tests/unit/test_fact_lake_remote.py",
    "tests/unit/serving/test_cutover_router.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the modules with slow tests first, the longest of them at the very front, so that no long
    test starts near the end and holds one xdist worker while the others are idle. Whole modules move
    (a stable sort on a per-module key), so ``--dist loadscope`` and module fixtures see them intact."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    rank = {REPO / name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path, len(rank) + (item.path not in slow)))


@pytest.fixture
def spotshift_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty SPOTSHIFT_HOME; every path helper of spotshift.home points inside it."""
    home = tmp_path / "spotshift-home"
    home.mkdir()
    monkeypatch.setenv("SPOTSHIFT_HOME", str(home))
    for var in ("DAGSTER_HOME", "SPOTSHIFT_WAREHOUSE", "SPOTSHIFT_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    return home


def once_per_run(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], T]) -> T:
    """``build(directory)`` once per test run, shared by the pytest-xdist workers (a session fixture
    alone runs once per worker): the first worker to get here builds into ``directory`` under a file
    lock and pickles the result (temp name + rename); the others wait for the lock and read it. Only
    for read-only artefacts (a built warehouse that tests open read-only or copy)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's directory, shared by the workers (popen-gw0, popen-gw1, ...)
    directory = base / f"once-{name}"
    result = directory / "result.pickle"
    with FileLock(str(base / f"once-{name}.lock")):
        if result.is_file():
            return pickle.loads(result.read_bytes())
        directory.mkdir(exist_ok=True)
        value = build(directory)
        partial = result.with_suffix(".partial")
        partial.write_bytes(pickle.dumps(value))
        partial.rename(result)
        return value


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
