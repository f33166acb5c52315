"""What a move knows as it goes (:class:`MoveState`) and where its steps act (:class:`MoveEnv`).

A :class:`MoveState` is what one step hands the next (the plan, when it started, the dataset root
the replica must match, bytes and egress so far, the checkpoint the move starts from, the
probation's result). :meth:`MoveState.after` folds a step's typed result into it and saves it to
the move ledger (:mod:`spotshift.migration.ledger`), so a rollback and a restarted run read it back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from spotshift import warehouse
from spotshift.checkpoint.keys import open_key_provider
from spotshift.clock import virtual_now
from spotshift.errors import SpotshiftError
from spotshift.migration import ledger
from spotshift.migration.plan import MovePlan
from spotshift.placement.state import set_status
from spotshift.sync.store_url import open_store
from spotshift.training.backend import open_backend
from spotshift.training.runs import store_url_for
from spotshift.training.shadow import MAX_LOSS_DIFF


class MoveFailed(SpotshiftError):
    """A step's blocking check failed (replica root, shadow thresholds): the move must roll back."""

    exit_code = 1


def _no_log(message: str) -> None:
    del message


@dataclass
class MoveEnv:
    """Where the steps act: compute backend, region stores, checkpoint keys, warehouse, run id."""

    backend: Any
    store_for: Callable[[str], Any]
    key_provider: Callable[[], Any]
    key_spec: str | None = None
    database: Any = None
    run_id: str = ""
    log: Callable[[str], None] = _no_log

    def record(self, table: str, rows: list[dict[str, Any]]) -> int:
        """Record fact rows (:func:`spotshift.warehouse.record_facts`); rows written now."""
        return warehouse.record_facts({table: rows}, database=self.database).rows(table)


def local_env(*, run_id: str, log: Callable[[str], None] | None = None) -> MoveEnv:
    """The embedded default: local trainer processes, stores under ``$SPOTSHIFT_HOME``, the key
    provider of ``$SPOTSHIFT_KEY_PROVIDER`` (else the local key file), the default warehouse."""
    return MoveEnv(
        backend=open_backend("local"),
        store_for=lambda location: open_store(store_url_for(location)),
        key_provider=lambda: open_key_provider(None),
        run_id=run_id,
        log=log or _no_log,
    )


@dataclass(frozen=True)
class ShadowOptions:
    """How a price move validates its target."""

    shadow_steps: int = 20
    """K: steps the probation run and both shadow sides take from the drained checkpoint."""
    max_loss_diff: float = MAX_LOSS_DIFF
    perturb_learning_rate: float = 0.0
    """> 0: the target trains with this learning rate (a deliberately failing validation)."""

    def perturb(self) -> dict[str, Any] | None:
        return {"learning_rate": self.perturb_learning_rate} if self.perturb_learning_rate > 0 else None


@dataclass
class MoveState:
    """What a move knows so far (replaces the dict the ops used to pass along)."""

    plan: MovePlan
    run_id: str
    started_at: str
    shadow: ShadowOptions = field(default_factory=ShadowOptions)
    dataset: str = ""
    dataset_root: str = ""
    bytes_moved: int = 0
    egress_usd: float = 0.0
    from_checkpoint: str = ""
    drained_at_wall: float | None = None
    probation: dict[str, Any] | None = None
    status: str = "moving"  # moving | cut_over | rolled_back
    compat: dict[str, Any] | None = None  # the pre-move compatibility check (spotshift.migration.compat)

    def after(self, result: Any) -> MoveState:
        """This state with a step's result folded in."""
        return result.apply(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the move ledger)."""
        out = asdict(self)
        out["plan"] = self.plan.to_dict()
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> MoveState:
        """Inverse of :meth:`to_dict`."""
        fields = dict(raw)
        fields["plan"] = MovePlan.from_dict(fields["plan"])
        fields["shadow"] = ShadowOptions(**fields.get("shadow") or {})
        return cls(**fields)


def save(state: MoveState) -> MoveState:
    """Write ``state`` to the move ledger (the job's in-flight move) and return it."""
    ledger.save_move(state.plan.job, state.to_dict())
    return state


def load(job: str) -> MoveState | None:
    """The job's last recorded move, or None."""
    raw = ledger.load_move(job)
    return MoveState.from_dict(raw) if raw is not None else None


def begin(
    env: MoveEnv,
    plan: MovePlan,
    shadow: ShadowOptions | None = None,
    *,
    compat: dict[str, Any] | None = None,
) -> MoveState:
    """Start a move: the job is marked ``migrating`` (the price sensor leaves it alone) and the
    move is recorded in the ledger. A restarted run of the same plan keeps what the first found.
    ``compat``: the pre-move compatibility check (:func:`spotshift.migration.run.begin_move` runs
    it first, so a refused move never gets here)."""
    before = load(plan.job)
    set_status(plan.job, "migrating", now=virtual_now())
    src = plan.from_location or "(not running)"
    env.log(
        f"{plan.trigger} move of {plan.job}: {src} -> {plan.to_location} ({plan.market} {plan.instance_type})"
    )
    if before is not None and before.plan == plan and before.status == "moving":
        return save(
            replace(before, run_id=env.run_id, shadow=shadow or before.shadow, compat=compat or before.compat)
        )
    return save(
        MoveState(
            plan=plan,
            run_id=env.run_id,
            started_at=virtual_now().isoformat(),
            shadow=shadow or ShadowOptions(),
            compat=compat,
        )
    )
