"""Run-key formats of the runs that move a job, shared by the deciding side and the move contract.

A run key is built from the external identity of what a sensor reacts to, never from the clock.
:class:`spotshift.placement.decision.Decision` names the run it asks for and
:mod:`spotshift.migration.contract` requests it; placement must not import the move lifecycle, so
the formats live here, below both.

* a price move or a placement: ``<job>:<from or ->-><to>:<quote snapshot id>`` (a placement of a
  job that is not running appends ``:v<placement state version>``);
* a preemption recovery: ``<job>:<notice id>``;
* a rollback: ``rollback:<failed run id>``.
"""

from __future__ import annotations

#: the value of an empty part (a placement has no source)
NONE = "-"


def move_run_key(job: str, from_location: str, to_location: str, snapshot_id: str) -> str:
    """``<job>:<from>-><to>:<quote snapshot id>`` (``-`` for an empty part)."""
    return f"{job}:{from_location or NONE}->{to_location or NONE}:{snapshot_id or NONE}"


def placement_run_key(move_key: str, state_version: int) -> str:
    """A placement's run key: the same snapshot can see a job preempted and placed more than once."""
    return f"{move_key}:v{state_version}"


def recovery_run_key(job: str, notice_id: str) -> str:
    """``<job>:<notice id>``: one recovery per notice."""
    return f"{job}:{notice_id}"


def rollback_run_key(failed_run_id: str) -> str:
    """``rollback:<failed run id>``: one rollback per failed run."""
    return f"rollback:{failed_run_id}"
