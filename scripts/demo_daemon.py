"""The demo's Dagster side, done the way ``dagster-daemon`` does it, at moments the demo chooses.

``make ui`` loads the code location from ``workspace.yaml`` (location ``spotshift``). The demo loads
the same workspace (:class:`WorkspaceProcessContext`: a code server process, as ``dagster dev``
starts one), so every run it makes has that code-location origin and shows under its job:

* a sensor tick goes through the sensor daemon's own tick function
  (``dagster._daemon.sensor._process_tick_generator``): the tick, its cursor, its skip reason and
  the runs it requested are recorded in the instance, run keys deduplicated, runs submitted;
* submitted runs are queued by the instance's ``QueuedRunCoordinator`` and dequeued by the queued-run
  daemon's iteration (``QueuedRunCoordinatorDaemon.run_iteration``), which hands them to the run
  launcher. The demo's instance (same storage, same ``dagster.yaml``) swaps only the launcher for
  dagster's ``SyncInMemoryRunLauncher``: the run is rebuilt from its code-location origin and
  executed in the demo's process, sparing a run-worker start-up of several seconds per run on a
  small machine (the UI and daemon of ``make ui`` keep the default launcher);
* runs the demo starts itself (price polls, ``placement_plan``, the deliberately broken move, the
  cost report) are created from the code location's job (``RemoteJob``) and submitted the same way,
  as the UI's Launchpad does.

What differs from the daemon is only *when*: the demo ticks a sensor at a virtual-clock moment (the
sensors' wall-clock ``minimum_interval_seconds`` is lifted before each tick) and waits for the runs
it launched, so the story does not depend on the machine's speed. The sensors are left running:
``make ui`` starts the daemon, which keeps ticking them. The code server's and run workers' logs go
to ``$SPOTSHIFT_HOME/logs/demo-dagster.log`` (``make ui`` shows every run's logs).

Dagster's daemon functions are internal API; this module pins their use to dagster 1.13.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LOCATION = "spotshift"  # workspace.yaml's location_name
RUN_TIMEOUT_S = 900.0
#: how long the code server may take to load definitions.py (dagster's default is 180 s, which a
#: busy 2-core machine exceeds when the dbt manifest is stale)
STARTUP_TIMEOUT_S = 900


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Point file descriptors 1 and 2 at ``path`` while child processes are started (they inherit them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


def _demo_instance() -> Any:
    """The persistent instance of ``DAGSTER_HOME``, its runs launched in this process (module doc)."""
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    launcher = {
        "module": "dagster._core.launcher.sync_in_memory_run_launcher",
        "class": "SyncInMemoryRunLauncher",
    }
    overrides = {"run_launcher": launcher, "code_servers": {"local_startup_timeout": STARTUP_TIMEOUT_S}}
    ref = InstanceRef.from_dir(os.environ["DAGSTER_HOME"], overrides=overrides)
    return dg.DagsterInstance.from_ref(ref)


class Daemon:
    """Sensor ticks and runs through the workspace's code location (see module doc)."""

    def __init__(self, log_path: Path, sensors: list[str]):
        import dagster as dg
        from dagster._core.workspace.context import WorkspaceProcessContext
        from dagster._core.workspace.load_target import WorkspaceFileTarget
        from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
            QueuedRunCoordinatorDaemon,
        )

        self.dg = dg
        self.log_path = log_path
        with _output_to(log_path):
            # dbt parse, when the manifest is missing or stale, here rather than inside the code
            # server's start-up window (resources/dbt.py prepares it on import)
            import resources.dbt  # noqa: F401
        self.instance = _demo_instance()
        self.logger = logging.getLogger("spotshift.demo.daemon")
        self.logger.addHandler(logging.NullHandler())
        self.logger.propagate = False
        self._stack = contextlib.ExitStack()
        with _output_to(log_path):  # the code server and, through it, every run worker
            self.ctx = self._stack.enter_context(
                WorkspaceProcessContext(self.instance, WorkspaceFileTarget([str(REPO / "workspace.yaml")]))
            )
        entry = self.ctx.create_request_context().get_code_location_entries().get(LOCATION)
        if entry is None or entry.code_location is None:
            error = (
                entry.load_error.message.strip().splitlines()[0][:300]
                if entry and entry.load_error
                else "absent"
            )
            self.close()
            raise SystemExit(
                f"demo: code location {LOCATION!r} of workspace.yaml did not load: {error} (traceback in {log_path})"
            )
        self.repo = next(iter(entry.code_location.get_repositories().values()))
        self.queue = self._stack.enter_context(QueuedRunCoordinatorDaemon(interval_seconds=1))
        for name in sensors:
            remote = self.repo.get_sensor(name)
            state = self.instance.get_instigator_state(remote.get_remote_origin_id(), remote.selector_id)
            if state is None or not state.is_running:
                self.instance.start_sensor(remote)

    def close(self) -> None:
        """Stop the code server (runs are finished by then)."""
        self._stack.close()

    # -- runs -----------------------------------------------------------------------------------
    def launch_assets(self, assets: list[str], *, partition: str, tags: dict[str, str]) -> Any:
        """Materialize one partition of ``assets`` (the code location's asset job), wait for the run."""
        keys = [self.dg.AssetKey.from_user_string(a) for a in assets]
        return self.launch("__ASSET_JOB", {}, {**tags, "dagster/partition": partition}, assets=keys)

    def launch(
        self,
        job_name: str,
        run_config: dict[str, Any],
        tags: dict[str, str],
        *,
        assets: list[Any] | None = None,
    ) -> Any:
        """Submit a run of ``job_name`` (:meth:`submit`) and wait for it."""
        return self.wait([self.submit(job_name, run_config, tags, assets=assets)])[0]

    def submit(
        self,
        job_name: str,
        run_config: dict[str, Any],
        tags: dict[str, str],
        *,
        assets: list[Any] | None = None,
    ) -> str:
        """Create a run of ``job_name`` from the code location (as the Launchpad does) and submit it
        (queued); returns its id."""
        from dagster._core.definitions.selector import JobSubsetSelector as Selector

        location = self.ctx.create_request_context().get_code_location(LOCATION)
        remote_job = location.get_job(
            Selector(
                location_name=LOCATION,
                repository_name=self.repo.name,
                job_name=job_name,
                op_selection=None,
                asset_selection=assets,
            )
        )
        plan = location.get_execution_plan(
            remote_job, run_config, step_keys_to_execute=None, known_state=None, instance=self.instance
        )
        run = self.instance.create_run(
            job_name=job_name,
            run_id=None,
            run_config=run_config,
            resolved_op_selection=None,
            step_keys_to_execute=None,
            status=self.dg.DagsterRunStatus.NOT_STARTED,
            op_selection=None,
            root_run_id=None,
            parent_run_id=None,
            tags={**(remote_job.run_tags or {}), **tags},
            job_snapshot=remote_job.job_snapshot,
            execution_plan_snapshot=plan.execution_plan_snapshot,
            parent_job_snapshot=remote_job.parent_job_snapshot,
            remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(),
            asset_selection=frozenset(assets) if assets is not None else None,
            asset_check_selection=None,
            asset_graph=location.get_repository(self.repo.name).asset_graph,
        )
        self.instance.submit_run(run.run_id, self.ctx.create_request_context())
        return run.run_id

    def wait(self, run_ids: list[str]) -> list[Any]:
        """Dequeue (the queued-run daemon's iteration) and wait until every run has ended."""
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while True:
            with _output_to(self.log_path):  # the runs' event logs and dbt's output
                for _ in self.queue.run_iteration(self.ctx):
                    pass
            runs = [self.instance.get_run_by_id(r) for r in run_ids]
            if all(r is not None and r.is_finished for r in runs):
                return runs
            if time.monotonic() > deadline:
                pending = ", ".join(
                    f"{r.job_name} {r.run_id} {r.status.value}" for r in runs if r and not r.is_finished
                )
                raise SystemExit(f"demo: runs did not end within {RUN_TIMEOUT_S:.0f}s: {pending}")
            time.sleep(0.2)

    # -- sensors --------------------------------------------------------------------------------
    def tick(self, sensor_name: str) -> list[str]:
        """One tick of ``sensor_name`` through the sensor daemon's tick function; returns the ids of the
        runs it submitted (queued: :meth:`wait` runs them). A failed tick (the sensor raised) stops the
        demo with its one-line error."""
        from dagster._core.scheduler.instigation import InstigatorType, TickStatus
        from dagster._daemon.sensor import _process_tick_generator

        instance = self.instance
        remote = self.repo.get_sensor(sensor_name)
        origin_id, selector_id = remote.get_remote_origin_id(), remote.selector_id
        state = instance.get_instigator_state(origin_id, selector_id)
        data = state.instigator_data
        if data is not None:  # the demo, not the wall clock, decides when a tick is due
            state = state.with_data(data._replace(last_tick_timestamp=None, last_tick_start_timestamp=None))
            instance.update_instigator_state(state)
        retention = instance.get_tick_retention_settings(InstigatorType.SENSOR)
        errors = [
            e
            for e in _process_tick_generator(self.ctx, self.logger, remote, state, None, retention, None)
            if e is not None
        ]
        tick = instance.get_ticks(origin_id, selector_id, limit=1)[0]
        error = errors[0] if errors else tick.error
        if error is not None or tick.status == TickStatus.FAILURE:
            message = (error.message if error else "failed").strip().splitlines()[0]
            raise SystemExit(f"demo: {sensor_name} tick failed: {message}")
        return list(tick.run_ids)
