"""Workers per region: the executor of the move jobs, and the Celery app their workers run.

``move_executor`` decides when a run starts, from the home's settings
(:mod:`spotshift.workers.settings`): in-process by default; with ``executor: celery`` each step
becomes a dagster-celery task on the broker. The move ops carry dagster-celery's per-op queue tag
(``dagster-celery/queue``) naming the side of the move they act on (``{source}`` / ``{target}``);
:func:`spotshift.migration.contract.step_queue` turns it into that region's queue from the move's
plan, so the target's workers sync into the target store, run the probation and go live, and the
source's workers drain. Steps without the tag (planning) go to the control queue.

A step goes to a queue only when a worker consumes it: the queues a run can name before it starts
are checked first, the others when their step is due, each waiting up to
``SPOTSHIFT_WORKER_WAIT_SECONDS`` (:mod:`spotshift.workers.queues`); then the run fails in one line
naming the queue, before anything of the move is done when the queue was known at the start.

A worker acknowledges a step's message only once the step is done and hands it back when the
worker dies mid-step (``task_acks_late`` + ``task_reject_on_worker_lost``), so a step whose
worker is killed runs again on another worker of its region's queue; the steps are idempotent.

dagster-celery is the optional ``workers`` extra: it is imported when a Celery run starts or a
worker starts (``ops/celery_worker.py``), never when the code location loads.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from spotshift.errors import ConfigError
from spotshift.migration import contract
from spotshift.workers import queues
from spotshift.workers.settings import ExecutorSettings, load_settings

#: the Celery settings the executor and every worker share (one function builds both apps)
CELERY_SETTINGS: dict[str, Any] = {
    "task_acks_late": True,  # acknowledged when the step is done, not when it is received
    "task_reject_on_worker_lost": True,  # a worker killed mid-step gives the step back to the queue
    "worker_prefetch_multiplier": 1,  # a busy worker holds no second step another worker could run
    "broker_connection_retry_on_startup": True,
}


def celery_executor_for(settings: ExecutorSettings, retries: Any = None) -> Any:
    """A dagster-celery executor on the settings' broker (results over the broker: ``rpc://``)
    that routes the move ops' ``{source}`` / ``{target}`` queue tags to region queues."""
    from dagster._core.execution.retries import RetryMode
    from dagster_celery.executor import CeleryExecutor, _submit_task

    wait_s = queues.wait_seconds()

    served: set[str] = set()  # queues seen with a worker during this run

    def resolve(queue: str, plan_context: Any) -> tuple[str, str]:
        """(the broker's queue name, the command that starts a worker for it)."""
        run = plan_context.dagster_run
        region = contract.step_queue(queue, run.run_id, dict(run.tags))
        if queue in (contract.QUEUE_SOURCE, contract.QUEUE_TARGET):  # a region: the deployment's name of it
            return settings.queue_name(region), queues.start_hint(region, settings.control_queue)
        return region, queues.start_hint(settings.control_queue, settings.control_queue)

    def ensure_workers(plan_context: Any, wanted: dict[str, str]) -> None:
        missing = {q: hint for q, hint in wanted.items() if q not in served}
        if missing:
            queues.wait_for_workers(
                settings.broker_url(), missing.items(), timeout_s=wait_s, log=plan_context.log.warning
            )
            served.update(missing)

    def submit(app: Any, plan_context: Any, step: Any, queue: str, priority: int, known_state: Any) -> Any:
        resolved, hint = resolve(queue, plan_context)
        ensure_workers(plan_context, {resolved: hint})
        plan_context.log.info(f'step "{step.key}" ({queue}) goes to the Celery queue "{resolved}"')
        # dagster-celery's own submission (pinned to 0.29.x by the workers extra)
        return _submit_task(app, plan_context, step, resolved, priority, known_state)

    class RegionCeleryExecutor(CeleryExecutor):
        def execute(self, plan_context: Any, execution_plan: Any) -> Any:
            from dagster_celery.core_execution_loop import core_celery_execution_loop
            from dagster_celery.tags import DAGSTER_CELERY_QUEUE_TAG

            # every queue known before the first step has a worker, or nothing runs (a recovery
            # learns its target only from its plan step: that queue is checked when its step is due)
            wanted: dict[str, str] = {}
            for step in execution_plan.get_steps_to_execute_in_topo_order():
                tag = step.tags.get(DAGSTER_CELERY_QUEUE_TAG, settings.queue_name(settings.control_queue))
                try:
                    name, hint = resolve(tag, plan_context)
                except ConfigError:
                    continue
                wanted[name] = hint
            ensure_workers(plan_context, wanted)
            return core_celery_execution_loop(plan_context, execution_plan, step_execution_fn=submit)

    return RegionCeleryExecutor(
        retries=retries or RetryMode(RetryMode.DISABLED),
        broker=settings.broker_url(),
        backend="rpc://",
        config_source={**CELERY_SETTINGS, "task_default_queue": settings.queue_name(settings.control_queue)},
    )


def worker_app(settings: ExecutorSettings | None = None) -> Any:
    """The Celery app of a region worker: the executor's own app, with dagster-celery's step task."""
    from dagster_celery.make_app import make_app
    from dagster_celery.tasks import create_task

    app = make_app(celery_executor_for(settings or load_settings()).app_args())
    create_task(app)
    return app


@dg.executor(name="spotshift_moves", config_schema=dg.in_process_executor.config_schema)
def move_executor(init_context: dg.InitExecutorContext) -> dg.Executor:
    """In-process, or dagster-celery with one queue per region when the home says ``celery``
    (``spotshift home init --executor celery`` or ``SPOTSHIFT_EXECUTOR=celery``)."""
    settings = load_settings()
    if not settings.distributed:
        return dg.in_process_executor.executor_creation_fn(init_context)  # type: ignore[misc]
    from dagster._core.execution.retries import RetryMode

    return celery_executor_for(settings, RetryMode.from_config(init_context.executor_config["retries"]))
