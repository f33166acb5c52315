"""The move lifecycle as plain Python: moving a training job from one region to another.

* :mod:`~spotshift.migration.plan` — the :class:`MovePlan` (where, on what, why) from a placement
  decision or a preemption notice; cutover and rollback with their facts.
* :mod:`~spotshift.migration.steps` — the typed :class:`MoveState` and one function per step:
  fingerprint and replicate the dataset, drain the source, carry the checkpoint, probation in the
  target, validate the shadow, go live, roll back.
* :mod:`~spotshift.migration.run` — the whole lifecycle without Dagster (``spotshift move``).
* :mod:`~spotshift.migration.contract` — run tags, run keys and run config of the Dagster jobs
  that move something.
* :mod:`~spotshift.migration.ledger` — each job's last move on disk.

Placement (:mod:`spotshift.placement`) only decides; this package moves.
"""
