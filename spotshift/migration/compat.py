"""The move's compatibility gate: check the target's runtime against the matrix before any byte moves.

:func:`check_move` runs before :func:`~spotshift.migration.state.begin` (``spotshift move``,
``plan_move`` and ``plan_recovery`` alike, through :func:`~spotshift.migration.run.begin_move`): it
reads the runtime that wrote the checkpoint the move will carry (the newest in the source: its
metadata's ``versions``), the target's runtime (:func:`~spotshift.checkpoint.compat.runtime_for`) and
the matrix (:mod:`spotshift.checkpoint.compat`):

* same runtime, or a proven pair: go;
* a known-bad pair: :class:`~spotshift.checkpoint.compat.IncompatibleCheckpoint`, nothing started,
  nothing recorded in the move ledger, not a byte sent;
* an unproven pair: go, and the move's probation is the probe — a ``probing`` fact now, then
  :func:`record_probe` writes ``proven`` when the probation matched the shadow comparison, or
  ``known_bad`` when the probe failed in the target (it did not resume or run, or its shadow
  comparison blocked without a deliberate perturbation). A move without a probation (a placement,
  a preemption recovery: no time to probe) goes untested and proves nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from spotshift import warehouse
from spotshift.checkpoint import compat
from spotshift.checkpoint.format import open_checkpoint
from spotshift.clock import virtual_now
from spotshift.errors import ConfigError, NotFoundError
from spotshift.migration.plan import MovePlan
from spotshift.migration.state import MoveEnv, MoveState
from spotshift.training.runs import current_location


@dataclass(frozen=True)
class CompatibilityCheck:
    """The pre-move check of one move (kept in :class:`MoveState`, JSON-ready)."""

    verdict: str  # same | proven | unproven | no_checkpoint
    probe: bool  # the probation probes the pair
    reason: str
    checkpoint_id: str = ""
    source_location: str = ""
    source: dict[str, str] | None = None  # compat.Runtime fields
    target: dict[str, str] | None = None
    devices: str = ""
    dtypes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def runtimes(self) -> tuple[compat.Runtime, compat.Runtime]:
        assert self.source is not None and self.target is not None
        return compat.Runtime(**self.source), compat.Runtime(**self.target)


def _newest_checkpoint(env: MoveEnv, plan: MovePlan) -> tuple[str, Any]:
    """``(source location, StoredCheckpoint)`` of what the move will carry; ``("", None)`` when the
    job never checkpointed."""
    source = plan.from_location
    if not source:
        try:
            source = current_location(plan.job, env.database)
        except ConfigError:
            return "", None
    try:
        return source, open_checkpoint(env.store_for(source), plan.job)
    except NotFoundError:
        return source, None


def check_move(env: MoveEnv, plan: MovePlan) -> CompatibilityCheck:
    """The matrix's verdict on moving ``plan.job``'s newest checkpoint to ``plan.to_location``;
    :class:`~spotshift.checkpoint.compat.IncompatibleCheckpoint` (one line) for a known-bad pair."""
    source_location, ck = _newest_checkpoint(env, plan)
    if ck is None:
        return CompatibilityCheck("no_checkpoint", False, f"{plan.job} has no checkpoint to carry")
    declared = compat.declared_runtimes()
    src = compat.checkpoint_runtime(ck.meta, compat.runtime_for(source_location, declared))
    tgt = compat.runtime_for(plan.to_location, declared)
    with warehouse.connect(env.database) as con:
        said = compat.verdict(compat.load_matrix(con), src, tgt)
    if not said.allowed:
        raise compat.IncompatibleCheckpoint(
            f"move {plan.job} to {plan.to_location} refused: checkpoint {ck.checkpoint_id}: {said.reason}"
        )
    versions = ck.meta.get("versions") or {}
    probe, reason = said.verdict == compat.UNPROVEN and plan.validated, said.reason
    if said.verdict == compat.UNPROVEN and not probe:
        reason = f"{src.key} -> {tgt.key} never tried, and a {plan.trigger} move has no probation: untested"
    check = CompatibilityCheck(
        verdict=said.verdict,
        probe=probe,
        reason=reason,
        checkpoint_id=ck.checkpoint_id,
        source_location=source_location,
        source=src.to_dict(),
        target=tgt.to_dict(),
        devices=str(versions.get("devices") or ""),
        dtypes=str(versions.get("dtypes") or ""),
    )
    env.log(f"checkpoint compatibility of {plan.job} -> {plan.to_location}: {check.verdict} ({check.reason})")
    if check.probe:
        _record(
            env, plan, check, compat.PROBING, f"unproven pair: the probation of move {env.run_id} probes it"
        )
    return check


def _record(env: MoveEnv, plan: MovePlan, check: CompatibilityCheck, verdict: str, reason: str) -> None:
    src, tgt = check.runtimes()
    env.record(
        compat.TABLE,
        [
            compat.compat_fact(
                run_id=env.run_id,
                job=plan.job,
                checkpoint_id=check.checkpoint_id,
                source_location=check.source_location,
                target_location=plan.to_location,
                source=src,
                target=tgt,
                verdict=verdict,
                reason=reason,
                recorded_at=virtual_now(),
                devices=check.devices,
                dtypes=check.dtypes,
            )
        ],
    )


def record_probe(env: MoveEnv, state: MoveState, *, passed: bool, reason: str) -> str | None:
    """The probe's outcome as a matrix fact (``proven`` / ``known_bad``); returns the verdict written,
    None when the move was no probe, or when a failure says nothing about versions (a deliberately
    perturbed target)."""
    raw = state.compat
    if not raw or not raw.get("probe"):
        return None
    if not passed and state.shadow.perturb() is not None:
        return None
    check = CompatibilityCheck(**raw)
    verdict = compat.PROVEN if passed else compat.KNOWN_BAD
    _record(env, state.plan, check, verdict, reason)
    env.log(f"checkpoint compatibility {check.runtimes()[0].key} -> {check.runtimes()[1].key}: {verdict}")
    return verdict
