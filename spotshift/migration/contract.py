"""The orchestration contract of every job that moves something: run tags, run keys, run config.

Sensors build run requests with these functions, the ops read what they name, the demo and the
tests request runs the same way. Nothing here imports Dagster: a run request is the tuple
(job name, run key, tags, run config), which the Dagster side wraps in ``dg.RunRequest``.

Runs carry few tags, each one plain text a person can filter on in the UI: the training job (the
run coordinator allows one run per job at a time), the trigger, source and target, and the notice
or failed run they answer. The plan itself is not a tag: the move ledger
(:mod:`spotshift.migration.ledger`) keeps it, keyed by job, for the rollback to read.

Run keys are built from the external identity of what a sensor reacts to, never from the clock;
their formats live in :mod:`spotshift.runkeys` (placement names the run a decision asks for and
must not import this package) and are re-exported here.
"""

from __future__ import annotations

from typing import Any

from spotshift import runkeys
from spotshift.errors import ConfigError
from spotshift.locations import region_of
from spotshift.migration import ledger
from spotshift.runkeys import move_run_key as move_run_key
from spotshift.runkeys import placement_run_key as placement_run_key
from spotshift.runkeys import recovery_run_key as recovery_run_key
from spotshift.runkeys import rollback_run_key as rollback_run_key

#: the training job a run acts on (the run coordinator limits runs per value of this tag)
TAG_JOB = "spotshift/job"
#: why the run exists: place | price | preemption | rollback | price_poll_schedule
TAG_TRIGGER = "spotshift/trigger"
TAG_FROM = "spotshift/from"
TAG_TO = "spotshift/to"
#: the preemption notice a recovery answers
TAG_NOTICE = "spotshift/notice"
#: the failed run a rollback undoes
TAG_ROLLS_BACK = "spotshift/rolls_back"
#: where ``checkpoints`` advances a job when its config names no location
TAG_LOCATION = "spotshift/location"
#: the kind of an op job (set on the job definition)
TAG_KIND = "spotshift/kind"

MIGRATION_JOB = "migration_job"
RECOVERY_JOB = "preemption_recovery_job"
ROLLBACK_JOB = "rollback_job"

#: the op of each job that takes the run's config
PLAN_MOVE_OP = "plan_move"
PLAN_RECOVERY_OP = "plan_recovery"
ROLL_BACK_OP = "roll_back"

#: dagster-celery's per-op queue tag. A move's ops name the side of the move they act on in it
#: (``{source}`` / ``{target}``); :func:`step_queue` turns that into the region's queue for one run.
CELERY_QUEUE_TAG = "dagster-celery/queue"
QUEUE_SOURCE = "{source}"
QUEUE_TARGET = "{target}"

#: a tag's value when there is no source (a placement); run-key formats live in spotshift.runkeys
NONE = runkeys.NONE


def move_tags(job: str, trigger: str, from_location: str, to_location: str) -> dict[str, str]:
    """Tags of a run that moves ``job`` (migration_job)."""
    return {
        TAG_JOB: job,
        TAG_TRIGGER: trigger,
        TAG_FROM: from_location or NONE,
        TAG_TO: to_location,
    }


def recovery_tags(job: str, location: str, notice_id: str) -> dict[str, str]:
    """Tags of a preemption recovery run."""
    return {TAG_JOB: job, TAG_TRIGGER: "preemption", TAG_FROM: location, TAG_NOTICE: notice_id}


def rollback_tags(failed_tags: dict[str, str], failed_run_id: str) -> dict[str, str]:
    """Tags of the rollback of a failed run: its job, source and target, plus what it undoes."""
    keep = {k: v for k, v in failed_tags.items() if k in (TAG_JOB, TAG_FROM, TAG_TO)}
    return {**keep, TAG_TRIGGER: "rollback", TAG_ROLLS_BACK: failed_run_id}


def move_run_config(plan: dict[str, Any], **options: Any) -> dict[str, Any]:
    """Run config of ``migration_job``: the plan's fields (``MovePlan.to_dict()``) and the
    validation options (``shadow_steps``, ``max_loss_diff``, ``perturb_learning_rate``)."""
    return {"ops": {PLAN_MOVE_OP: {"config": {**plan, **options}}}}


def recovery_run_config(
    job: str, location: str, notice_id: str, *, noticed_at: str = "", step: int = 0
) -> dict[str, Any]:
    """Run config of ``preemption_recovery_job`` for one notice (what the trainer wrote)."""
    config = {
        "job": job,
        "location": location,
        "notice_id": notice_id,
        "noticed_at": noticed_at,
        "step": step,
    }
    return {"ops": {PLAN_RECOVERY_OP: {"config": config}}}


def rollback_run_config(job: str, *, failed_run_id: str = "", reason: str = "") -> dict[str, Any]:
    """Run config of ``rollback_job``: undo the move of ``job`` that run ``failed_run_id`` made (the
    plan comes from the move ledger; an empty id rolls back the job's last recorded move)."""
    config = {"job": job, "failed_run_id": failed_run_id, "reason": reason[:1000]}
    return {"ops": {ROLL_BACK_OP: {"config": config}}}


def step_queue(queue_tag: str, run_id: str, run_tags: dict[str, str]) -> str:
    """The Celery queue of one step of a move run: a ``{source}`` / ``{target}`` queue tag becomes
    the queue of that side's region (``provider/region``), any other tag value is a queue name.

    The sides come from the move's plan in the move ledger once this run's plan step recorded it
    (a recovery learns its target only then), else from the run's ``spotshift/from`` and
    ``spotshift/to`` tags. A ``{source}`` step of a move without a source (a first placement)
    runs in the target. ConfigError when the run names neither side.
    """
    if queue_tag not in (QUEUE_SOURCE, QUEUE_TARGET):
        return queue_tag
    job = run_tags.get(TAG_JOB, "")
    recorded = ledger.load_move(job) if job else None
    if recorded is not None and recorded.get("run_id") == run_id:
        source, target = recorded["plan"].get("from_location", ""), recorded["plan"].get("to_location", "")
    else:
        source, target = run_tags.get(TAG_FROM, ""), run_tags.get(TAG_TO, "")
    source, target = ("" if v == NONE else v for v in (source, target))
    location = source if queue_tag == QUEUE_SOURCE and source else target
    if not location:
        raise ConfigError(f"run {run_id} of {job or '?'}: no {queue_tag[1:-1]} location to route a step to")
    return region_of(location)
