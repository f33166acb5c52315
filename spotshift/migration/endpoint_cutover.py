"""The move lifecycle for an inference endpoint: a gradual cutover as ordered steps.

A training job moves whole (one trainer at a time, validated by the shadow comparison of
:mod:`spotshift.migration.cutover`); an endpoint moves by traffic share. These are the steps the
command line (``spotshift cutover ...``) and Dagster (``cutover_job``, ``cutover_rollback_job``)
take; the decisions themselves are :mod:`spotshift.serving.cutover`, the measuring is the router's
(:mod:`spotshift.serving.cutover_traffic`).

* :func:`start` — plan a cutover: the target's cost per million tokens from its price, the source
  locations and steady-state replica count from the live registry, the first stage's weights.
* :func:`check` — what time alone changes: a stage whose hold passed (with a passing window)
  advances, a promoted cutover past its failback window is decommissioned; stage rows recorded.
* :func:`rollback` / :func:`failback` — 100 % on the source in one step, the reason recorded.
* :func:`scale_replicas` — the endpoint's replicas follow the plan of the current phase and stage
  (:func:`spotshift.serving.cutover_replicas.follow`: target launched, source drained to its floor,
  or back), through the replica launcher. ``cutover_job`` and ``cutover_rollback_job`` take it after
  every change; the command line after each verb.

Every step writes the state under its lock (temp + rename) and records the new ``raw.cutovers``
rows; each is idempotent.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from spotshift.checkpoint.catalog import parse_checkpoint_path
from spotshift.clock import virtual_now
from spotshift.errors import ConfigError, check_range
from spotshift.home import spotshift_home
from spotshift.pricing.regions import check_location
from spotshift.registry import locked
from spotshift.serving import cutover as co
from spotshift.serving import replica_api as api
from spotshift.serving.cutover_facts import record_stage_rows
from spotshift.serving.cutover_replicas import DEFAULT_STOP_TIMEOUT_S
from spotshift.serving.endpoints import check_model_ref, declared_model
from spotshift.serving.launcher import ReplicaLauncher
from spotshift.serving.serve import replica_price_usd_hour


@dataclass(frozen=True)
class StartOptions:
    """What ``cutover start`` takes (defaults: the seeds' figures)."""

    to_location: str
    market: str = "spot"
    model: str = ""
    shadow: str = co.DEFAULT_SHADOW
    stages: str = co.DEFAULT_STAGES
    interval_s: float = co.DEFAULT_INTERVAL_S
    thresholds: co.Thresholds = co.Thresholds()
    usd_per_hour: float | None = None
    capacity_tokens_s: float = 2400.0
    steady_replicas: int | None = None
    source_floor: int = co.DEFAULT_SOURCE_FLOOR
    failback_s: float = co.DEFAULT_FAILBACK_DAYS * 86400.0


def usd_per_mtok(usd_per_hour: float, capacity_tokens_s: float) -> float:
    """Cost per million tokens of a replica at capacity (:attr:`ReplicaView.cost_per_million_tokens`)."""
    return usd_per_hour / (capacity_tokens_s * 3600.0) * 1e6


def start(endpoint: str, opts: StartOptions, *, record: bool = True) -> co.CutoverState:
    """Begin a cutover of ``endpoint`` to ``opts.to_location``; ConfigError (one line) when one is in
    progress, the target is where the endpoint already serves (unless ``opts.model`` is a new checkpoint:
    then the replicas serving the old one there are the source), or there is no source to move from."""
    api.check_endpoint_name(endpoint)
    to = check_location(opts.to_location, "--to")
    if opts.market not in api.MARKETS:
        raise ConfigError(f"--market {opts.market!r} is not one of {', '.join(api.MARKETS)}")
    check_range(opts.capacity_tokens_s, "--capacity-tokens-s", low=0, high=1e9)
    shadow = co.parse_stages(opts.shadow, "shadow", "--shadow")
    live = co.parse_stages(opts.stages, "live", "--stages")
    live_replicas = api.live_replicas(endpoint)
    # a new checkpoint (--model) where the endpoint already serves: what it serves there is the source
    kept = sorted({r.checkpoint for r in live_replicas if r.location == to}) if opts.model else []
    if opts.model:
        check_model_ref(opts.model)  # what the target serves, and the endpoint declares once promoted
    _check_new_checkpoint(opts.model, kept)
    sources = [r for r in live_replicas if co.side_of(to, kept, r.location, r.checkpoint) == "source"]
    if any(r.location == to for r in live_replicas) and not sources:
        raise ConfigError(
            f"endpoint {endpoint!r} already serves from {to}: nothing to cut over "
            "(--model CHECKPOINT moves it to a new checkpoint there)"
        )
    steady = opts.steady_replicas if opts.steady_replicas is not None else len(sources)
    if steady < 1:
        raise ConfigError(
            f"endpoint {endpoint!r} has no live replica to move from: start its replicas (spotshift serve) "
            "or pass --steady-replicas"
        )
    price = opts.usd_per_hour
    if price is None:
        price = replica_price_usd_hour(to, opts.market)
    check_range(price, "--usd-per-hour", low=0, high=1e6, low_inclusive=True)
    src_cost = (
        sum(usd_per_mtok(r.price_usd_per_hour, opts.capacity_tokens_s) for r in sources) / len(sources)
        if sources
        else None
    )
    now = virtual_now()
    with locked(co.state_path(endpoint)):
        before = co.load_state(endpoint)
        if before is not None and before.active:
            raise ConfigError(
                f"endpoint {endpoint!r} has a cutover in progress ({before.cutover_id}, {before.phase} "
                f"{before.current.label if before.current else ''}): roll it back first"
            )
        if before is not None and before.phase == "promoted":
            before = co.decommission_if_due(before, now)
            if before.phase == "promoted":
                raise ConfigError(
                    f"endpoint {endpoint!r} is in the failback window of {before.cutover_id} until "
                    f"{before.failback_until}: fail back or wait"
                )
        st = co.start_state(
            endpoint,
            to_location=to,
            market=opts.market,
            model=opts.model,
            source_locations=sorted({r.location for r in sources}) or ["(unknown)"],
            shadow=shadow,
            live=live,
            thresholds=opts.thresholds,
            interval_s=opts.interval_s,
            plan_usd_per_mtok=usd_per_mtok(float(price), opts.capacity_tokens_s),
            source_usd_per_mtok=src_cost,
            steady_replicas=int(steady),
            source_floor=opts.source_floor,
            failback_s=opts.failback_s,
            now=now,
            source_mix=source_mix(sources),
            target_usd_per_hour=float(price),
            source_checkpoints=kept,
            source_model=declared_model(endpoint),
        )
        co.save_state(st)
    if record:
        record_rows(st)
    return st


def _check_new_checkpoint(model: str, kept: list[str]) -> None:
    """ConfigError when ``--model`` names by id a checkpoint the target location already serves."""
    if not kept or "/checkpoints/" not in model:
        return
    _, _, checkpoint_id = parse_checkpoint_path(model)
    if checkpoint_id in kept:
        raise ConfigError(f"--model {model!r}: the endpoint already serves checkpoint {checkpoint_id} there")


def check(endpoint: str, *, record: bool = True) -> co.CutoverState:
    """Advance on the clock (hold passed after a passing window; failback window over)."""
    now = virtual_now()

    def change(st: co.CutoverState) -> co.CutoverState | None:
        new = co.decommission_if_due(co.advance_if_due(st, now), now)
        return None if new is st else new

    st = co.update_state(endpoint, change)
    if record:
        record_rows(st)
    return st


def rollback(endpoint: str, reason: str = "rollback requested", *, record: bool = True) -> co.CutoverState:
    """Target weight 0 at once (a cutover in progress); a promoted one fails back. Idempotent."""
    now = virtual_now()

    def change(st: co.CutoverState) -> co.CutoverState | None:
        if st.active:
            return co.roll_back(st, now, reason)
        if st.phase == "promoted":
            return co.failback(st, now)
        return None

    st = co.update_state(endpoint, change)
    if record:
        record_rows(st)
    return st


def failback(endpoint: str, *, record: bool = True) -> co.CutoverState:
    """100 % back on the source in one step within the failback window (ConfigError after it)."""
    now = virtual_now()

    def change(st: co.CutoverState) -> co.CutoverState | None:
        if st.phase in ("failed_back", "rolled_back"):
            return None
        return co.failback(st, now)

    st = co.update_state(endpoint, change)
    if record:
        record_rows(st)
    return st


def source_mix(sources: list[api.ReplicaRecord]) -> list[dict[str, Any]]:
    """The source's replicas per (location, market) with their price: where it scales back to."""
    counts = Counter((r.location, r.market) for r in sources)
    price = {(r.location, r.market): r.price_usd_per_hour for r in sources}
    return [
        {"location": loc, "market": m, "usd_per_hour": float(price[(loc, m)]), "count": n}
        for (loc, m), n in sorted(counts.items())
    ]


def scale_replicas(
    endpoint: str, launcher: ReplicaLauncher, *, stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S
) -> co.FollowStep:
    """The endpoint's replicas follow its cutover's plan now (one pass of
    :func:`spotshift.serving.cutover_replicas.follow`); NotFoundError without a cutover."""
    return co.follow(co.require_state(endpoint), launcher, stop_timeout_s=stop_timeout_s)


def record_rows(state: co.CutoverState, *, con: Any = None) -> int:
    """Record the state's stage rows in ``raw.cutovers`` (already recorded ones are skipped)."""
    return record_stage_rows(list(state.stage_rows), con=con)


# --- the orchestration contract of the cutover jobs (no Dagster here) ---------------------------

CUTOVER_JOB = "cutover_job"
CUTOVER_ROLLBACK_JOB = "cutover_rollback_job"
TAG_ENDPOINT = "spotshift/endpoint"
TAG_CUTOVER = "spotshift/cutover"
TAG_STAGE = "spotshift/stage"
ADVANCE_OP = "advance_cutover"
VALIDATE_OP = "validate_cutover_stage"
ROLLBACK_OP = "roll_back_cutover"


def stage_run_key(endpoint: str, cutover_id: str, stage: str) -> str:
    """``<endpoint>:<cutover id>:<stage>``: one ``cutover_job`` run per finished stage."""
    return f"{endpoint}:{cutover_id}:{stage}"


def stage_tags(state: co.CutoverState, stage: str) -> dict[str, str]:
    return {
        TAG_ENDPOINT: state.endpoint,
        TAG_CUTOVER: state.cutover_id,
        TAG_STAGE: stage,
        "spotshift/to": state.to_location,
        "spotshift/trigger": "cutover",
    }


def stage_run_config(endpoint: str, cutover_id: str, stage: str) -> dict[str, Any]:
    """Run config of ``cutover_job``: both ops name the endpoint, the cutover and the stage."""
    config = {"config": {"endpoint": endpoint, "cutover_id": cutover_id, "stage": stage}}
    return {"ops": {ADVANCE_OP: config, VALIDATE_OP: config}}


def rollback_run_key(failed_run_id: str) -> str:
    return f"cutover-rollback:{failed_run_id}"


def rollback_run_config(endpoint: str, reason: str) -> dict[str, Any]:
    return {"ops": {ROLLBACK_OP: {"config": {"endpoint": endpoint, "reason": reason[:500]}}}}


def finished_stages(state: co.CutoverState) -> list[str]:
    """Labels of the stages that ended (passed, rolled back, promoted, ...), in order, once each."""
    out: list[str] = []
    for row in state.stage_rows:
        if row["stage"] not in out and row["status"] in ("passed", "rolled_back", "promoted"):
            out.append(row["stage"])
    return out


def cutover_endpoints() -> list[str]:
    """Endpoints with a cutover state file under ``$SPOTSHIFT_HOME/serving``."""
    root = spotshift_home() / "serving"
    if not root.is_dir():
        return []
    return sorted(p.parent.name for p in root.glob(f"*/{co.STATE_FILE}"))
