"""The move lifecycle as plain Python: moving a training job from one region to another.

* :mod:`~spotshift.migration.plan` — the :class:`MovePlan` (where, on what, why) from a placement
  decision or a preemption notice; which jobs the price sensor decides for.
* :mod:`~spotshift.migration.state` — the typed :class:`MoveState` one step hands the next, and the
  :class:`MoveEnv` the steps act in (compute backend, region stores, keys, warehouse, run id).
* :mod:`~spotshift.migration.steps` — one function per step, each returning a typed result:
  fingerprint and replicate the dataset, drain the source, carry the checkpoint, probation in the
  target; :mod:`~spotshift.migration.cutover` — validate the shadow, go live, roll back.
* :mod:`~spotshift.migration.run` — the whole lifecycle without Dagster (``spotshift move``).
* :mod:`~spotshift.migration.contract` — run tags, run keys and run config of the Dagster jobs
  that move something.
* :mod:`~spotshift.migration.ledger` — each job's last move on disk (what a rollback undoes).

Placement (:mod:`spotshift.placement`) only decides; this package moves. Dagster records what the
steps return (``ops/migration.py``, the chain assets, ``recording.py``) and does nothing else.
"""
