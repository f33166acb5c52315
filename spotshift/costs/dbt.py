"""Running the ``dbt_costs`` project against a warehouse file, offline, from the library.

The command line (``spotshift report``), the tests and the benchmark build the marts through
:func:`run_dbt`; Dagster runs the same project through dagster-dbt (``assets/costs.py``). dbt runs
inside the calling process (``dbtRunner``; ``SPOTSHIFT_DBT_SUBPROCESS=1``: a child process) with
``SPOTSHIFT_WAREHOUSE`` pointing at the warehouse (the profile in ``dbt_costs/profiles.yml`` reads
it), ``DO_NOT_TRACK=1`` and its artifacts in a private target directory, so concurrent builds never
overwrite the manifest Dagster loads. dbt's partial-parse state is kept between runs in
``$SPOTSHIFT_HOME/cache/dbt/`` (one file per project and warehouse: dbt re-parses everything when
the profile's warehouse path changes), which saves most of dbt's start-up (bench/bench_costs.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spotshift.atomic import atomic_write_bytes
from spotshift.costs.baselines import record_baselines
from spotshift.errors import ConfigError, SpotshiftError
from spotshift.home import spotshift_home
from spotshift.progress import NO_PROGRESS, Progress
from spotshift.warehouse import connect


class DbtBuildError(SpotshiftError):
    """dbt finished with errors or failing data tests (exit code 1: a check found a problem)."""

    exit_code = 1


@dataclass
class DbtRun:
    """Outcome of one dbt invocation."""

    args: list[str]
    returncode: int
    seconds: float
    results: list[dict] = field(default_factory=list)  # run_results.json "results"
    stdout: str = ""

    def warnings(self) -> list[str]:
        """One line per data test that warned (found rows under ``severity: warn``)."""
        out = []
        for r in self.results:
            if r.get("status") == "warn":
                name = str(r.get("unique_id") or "").removeprefix("test.dbt_costs.").rsplit(".", 1)[0]
                failures = r.get("failures")
                out.append(f"{name}: {failures} row(s)" if failures is not None else name)
        return sorted(out)

    def failures(self) -> list[str]:
        """One line per node that errored or whose test failed."""
        out = []
        for r in self.results:
            if r.get("status") in ("error", "fail", "runtime error"):
                msg = " ".join(str(r.get("message") or "").split())[:300]
                out.append(f"{r.get('unique_id')}: {r.get('status')} {msg}".strip())
        return out


def dbt_project_dir() -> Path:
    """The ``dbt_costs`` project: ``SPOTSHIFT_DBT_PROJECT`` when set, else next to the package."""
    env = os.environ.get("SPOTSHIFT_DBT_PROJECT")
    path = Path(env).expanduser().resolve() if env else Path(__file__).resolve().parents[2] / "dbt_costs"
    if not (path / "dbt_project.yml").is_file():
        raise ConfigError(f"dbt project {path}: no dbt_project.yml (set SPOTSHIFT_DBT_PROJECT)")
    return path


def project_changed_since(timestamp: float, project: Path | None = None) -> str | None:
    """A file of the dbt project (models, seeds, macros, tests, dbt_project.yml) modified after the
    POSIX ``timestamp``, as a project-relative path; None when nothing changed."""
    project = project or dbt_project_dir()
    candidates = [project / "dbt_project.yml"]
    for sub in ("models", "seeds", "macros", "tests"):
        candidates += [f for f in (project / sub).rglob("*") if f.is_file()]
    for f in candidates:
        if f.stat().st_mtime > timestamp:
            return str(f.relative_to(project))
    return None


def dbt_executable() -> str:
    """The ``dbt`` console script of this interpreter's environment."""
    candidate = Path(sys.executable).with_name("dbt")
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("dbt")
    if not found:
        raise ConfigError("dbt is not installed in this environment (pip install -e . installs dbt-core)")
    return found


def dbt_env(warehouse: str | Path) -> dict[str, str]:
    """Environment for a dbt child process: the warehouse path and no telemetry."""
    env = dict(os.environ)
    env.update(
        {
            "SPOTSHIFT_WAREHOUSE": str(Path(warehouse).resolve()),
            "DO_NOT_TRACK": "1",
            "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
            "DBT_VERSION_CHECK": "false",
            "DBT_USE_COLORS": "false",
        }
    )
    return env


def partial_parse_cache(project: Path, warehouse: str | Path) -> Path:
    """Where dbt's ``partial_parse.msgpack`` for ``project`` building ``warehouse`` is kept between
    runs (a rebuildable cache: dbt checks every file's hash against it and re-parses what changed)."""
    key = hashlib.sha256(f"{project.resolve()}\0{Path(warehouse).resolve()}".encode()).hexdigest()[:16]
    return spotshift_home() / "cache" / "dbt" / f"partial_parse-{key}.msgpack"


def _restore_parse_state(cache: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    if cache.is_file():
        shutil.copyfile(cache, target / "partial_parse.msgpack")


def _save_parse_state(target: Path, cache: Path) -> None:
    fresh = target / "partial_parse.msgpack"
    if fresh.is_file():
        # temp name + rename: a concurrent build reads the old state or the new one, never a torn file
        atomic_write_bytes(cache, fresh.read_bytes(), fsync=False)


def run_dbt(
    args: Sequence[str],
    *,
    warehouse: str | Path,
    check: bool = True,
    extra_env: dict[str, str] | None = None,
    progress: Progress = NO_PROGRESS,
) -> DbtRun:
    """Run ``dbt <args>`` on ``warehouse`` (schema ``raw`` is created first when missing).

    With ``check`` a non-zero exit raises :class:`DbtBuildError` naming the failing nodes.
    ``progress`` gets one task counting the nodes dbt has finished.
    """
    project = dbt_project_dir()
    with connect(warehouse):
        pass  # creates the raw schema so sources resolve on an empty warehouse
    with tempfile.TemporaryDirectory(prefix="spotshift-dbt-") as tmp:
        target = Path(tmp) / "target"
        cache = partial_parse_cache(project, warehouse)
        _restore_parse_state(cache, target)
        cmd = [
            dbt_executable(),
            *args,
            "--project-dir",
            str(project),
            "--profiles-dir",
            str(project),
            "--target-path",
            str(target),
            "--log-path",
            str(Path(tmp) / "logs"),
        ]
        env = dbt_env(warehouse)
        env.update(extra_env or {})
        task = progress.task(f"dbt {args[0]}" if args else "dbt", unit="nodes")
        t0 = time.perf_counter()
        returncode, messages, results = _invoke(cmd, env, project, task)
        seconds = time.perf_counter() - t0
        if returncode in (0, 1):  # 1: the project parsed, some node failed
            _save_parse_state(target, cache)
        rr = target / "run_results.json"
        if results is None and rr.is_file():
            results = json.loads(rr.read_text()).get("results", [])
    run = DbtRun(list(args), returncode, seconds, results or [], "\n".join(m for m in messages if m))
    if check and returncode != 0:
        failed = run.failures()
        if not failed:
            tail = [ln for ln in run.stdout.splitlines() if "error" in ln.lower()][-3:]
            failed = tail or [f"exit code {returncode}"]
        raise DbtBuildError(
            f"dbt {' '.join(args)} on {warehouse} failed: {len(failed)} problem(s): " + "; ".join(failed[:5])
        )
    return run


#: dbt's in-process runner is not re-entrant (global flags, event manager, adapter registry)
_DBT_LOCK = threading.Lock()


def _invoke(
    cmd: list[str], env: dict[str, str], project: Path, task: Any
) -> tuple[int, list[str], list[dict] | None]:
    """Run dbt: in this process (``dbtRunner``) unless ``SPOTSHIFT_DBT_SUBPROCESS=1``; returns the exit
    code (0 ok, 1 a node failed, 2 dbt itself failed), one message per log event and, in-process,
    the node results (as in run_results.json, which is then not written, nor manifest.json: about
    half a second per run; a child process's come from its run_results.json: None).

    In-process skips a fresh interpreter importing dbt (about 2 CPU-s per invocation on the 2-core
    benchmark box, bench/results/costs*.json). dbt reads the profile's environment variables from
    ``os.environ`` and dbt-duckdb loads seeds by paths relative to the working directory, so both
    are set for the run and restored after it, under a lock.
    """
    args = [*cmd[1:], "--log-format", "json"]
    if os.environ.get("SPOTSHIFT_DBT_SUBPROCESS") == "1":
        proc = subprocess.Popen(
            [cmd[0], *args], env=env, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        # JSON log lines, read as they come: the messages for errors, the node count for progress
        messages = [_log_message(line, task) for line in proc.stdout or []]
        return proc.wait(), messages, None
    from dbt.cli.main import dbtRunner
    from dbt_common.events.functions import msg_to_json

    messages = []
    with _DBT_LOCK:
        old_env, old_cwd = dict(os.environ), os.getcwd()
        os.environ.update(env)
        os.chdir(project)
        try:
            runner = dbtRunner(callbacks=[lambda msg: messages.append(_log_message(msg_to_json(msg), task))])
            # events reach the callback only; the results come back as objects
            res = runner.invoke([*args, "--log-level", "none", "--no-write-json"])
        finally:
            _close_duckdb()
            os.chdir(old_cwd)
            os.environ.clear()
            os.environ.update(old_env)
    if res.exception is not None:
        messages.append(f"dbt failed: {type(res.exception).__name__}: {res.exception}")
        return 2, messages, None
    results = [
        {
            "unique_id": r.node.unique_id,
            "status": str(r.status),
            "message": r.message,
            "failures": r.failures,
            "execution_time": r.execution_time,
        }
        for r in getattr(res.result, "results", None) or []
    ]
    return (0 if res.success else 1), messages, results


def _close_duckdb() -> None:
    """Close the DuckDB instance dbt-duckdb keeps for the next invocation in this process: it would
    hold the warehouse's file lock, blocking every other writer (Dagster steps, sensors, the CLI)."""
    from dbt.adapters.duckdb.connections import DuckDBConnectionManager

    with DuckDBConnectionManager._LOCK:
        env, DuckDBConnectionManager._ENV = DuckDBConnectionManager._ENV, None
    if env is not None:
        env.close()


def _log_message(line: str, task: Any) -> str:
    """The human message of one dbt JSON log line; a finished node advances ``task``."""
    try:
        event = json.loads(line)
        info, data = event.get("info") or {}, event.get("data") or {}
    except (ValueError, AttributeError):
        return line.rstrip("\n")
    if isinstance(data.get("total"), int):
        task.update(total=data["total"])
        if "index" in data and info.get("name") != "LogStartLine":
            task.advance(1)
    return str(info.get("msg") or "")


def build_marts(
    warehouse: str | Path,
    *,
    select: str | None = None,
    data_tests_warn: bool = False,
    progress: Progress = NO_PROGRESS,
) -> DbtRun:
    """``dbt build`` (seeds, models, data tests, unit tests) of the whole project or ``select``.

    ``data_tests_warn`` builds with every project data test at ``severity: warn`` (dbt_project.yml
    reads ``SPOTSHIFT_DBT_TEST_SEVERITY``): problems in the facts come back as
    :meth:`DbtRun.warnings` and never stop a model; unit tests and SQL errors still fail.
    """
    prepare_build(warehouse)
    args = ["build"]
    if select:
        args += ["--select", select]
    extra = {"SPOTSHIFT_DBT_TEST_SEVERITY": "warn"} if data_tests_warn else None
    return run_dbt(args, warehouse=warehouse, extra_env=extra, progress=progress)


def prepare_build(warehouse: str | Path) -> int:
    """What a ``dbt build`` needs besides the facts: the simulated stay-on-first-spot baselines of
    :mod:`spotshift.costs.baselines` in ``raw.job_baselines`` (rows written; schema ensured).

    Called before every build, by :func:`build_marts` and by Dagster's ``dbt_costs`` asset.
    """
    with connect(warehouse) as con:
        return record_baselines(con)
