"""The Celery app a region worker runs: ``celery -A ops.celery_worker worker -Q <region queue>``
(``spotshift workers start`` builds that command). Built from the same settings as the executor
of the move jobs (:func:`ops.workers.worker_app`), so both agree on broker and acknowledgement.

The code location is loaded here, once, before the worker says it is ready: every step of a move
rebuilds its job from the ``definitions`` module, which is then already imported (a broken code
location stops the worker at start-up instead of failing its first step)."""

import definitions  # noqa: F401
from ops.workers import worker_app

app = worker_app()
