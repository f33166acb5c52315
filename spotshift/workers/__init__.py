"""Workers per region: where the steps of a move run when the home is configured for Celery.

:mod:`spotshift.workers.settings` says which executor the move jobs use (in-process by default,
the dagster-celery executor on a broker when configured) and names the queue of each region;
:mod:`spotshift.workers.processes` starts, lists and stops the worker processes of this machine;
:mod:`spotshift.workers.commands` is ``spotshift workers``. No Dagster or Celery import here: the
executor and the worker's Celery app are Dagster glue (``ops/workers.py``).
"""
