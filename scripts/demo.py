"""``make demo``: spotshift end to end on the embedded defaults, one function per stage.

1. ``home``      create ``SPOTSHIFT_HOME`` (Dagster instance, warehouse, one local store per region)
2. ``market``    a multi-cloud market (AWS, GCP, Azure; weekly on-demand and spot prices): the
                 generated one, or ``SPOTSHIFT_PRICES=FILE``; the job starts late in the week before
                 the cheapest A100 region changes, so the economics have a real decision to make
3. ``data``      a small text corpus, declared as a dataset and fingerprinted (``dataset_fingerprints``)
4. ``job``       a training job (8x A100-40GB, NVLink, spot allowed, deadline) declared
5. ``prices``    ``price_poll_job``: ``raw_price_quotes`` -> blocking GX checks -> ``gpu_quotes``
6. ``lifecycle`` a stepped virtual clock runs weeks of market in minutes: the demo advances it one
                 training step (the GPU hours a step stands for) at a time and waits for the trainer
                 to take that step; every few virtual hours, and at once after an event (a notice,
                 new prices, a failed run, the trainer's exit), it ticks ``price_change_sensor``, ``preemption_sensor`` and
                 ``migration_failure_sensor`` through the sensor daemon's tick function and the runs
                 they request (``migration_job``, ``preemption_recovery_job``, ``rollback_job``) are
                 launched through the code location, as the daemon launches them; the preemption
                 injector turns generated availability traces into real provider-format notices to
                 the trainer processes; one deliberately perturbed migration shows a blocked shadow
                 validation and its rollback
7. ``inference`` the inference act (``scripts/demo_inference.py``): endpoint ``chat`` serving the
                 job's model from three AWS regions for users in us-east, eu-west and ap-northeast;
                 the autoscaler over two virtual days of a daily demand curve (spot where
                 spot < 0.6 x reserved, reserved committed where not, decisions recorded); three
                 real replicas behind the router under load, the spot one preempted mid-load with
                 zero failed requests
8. ``cutover``   the cutover act (``scripts/demo_cutover.py``): under constant load, ``chat`` moved to
                 its cheapest location twice: a target serving an early checkpoint is caught in the
                 shadow phase and rolled back automatically; a good one promotes to 100 %; replicas
                 launched and drained by the cutover's follower; zero failed requests
9. ``costs``     ``cost_report_job`` (dbt build of dbt_costs, then ``cost_report``) and the summary:
                 spotshift vs always-on-demand vs stay-on-first-spot, GB moved, recovery times,
                 deadline met

Virtual time advances by events, never by wall seconds, so the summary is the same on any machine
and under any load. It stands still while a migration, recovery or rollback run executes and moves
on a nominal changeover afterwards (``PlacementParams.changeover_hours``): process start-up on a
2-core laptop is not what a cloud changeover costs, and the economics already charge that
changeover. The clock is left stopped when the demo ends (:class:`spotshift.clock.ClockOwner`).
``--small`` runs a shorter job (the end-to-end test uses it). Every run has the ``spotshift`` code
location's origin (``scripts/demo_daemon.py``), so afterwards ``make ui`` shows the runs under their
jobs, the sensors' ticks and cursors, and every materialization and check.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: The demo's market, read by the stages below and by tests/unit/simulate/test_demo_market.py: the
#: generated multi-cloud price history of seed MARKET_SEED and the availability traces of seed
#: TRACE_SEED. In it the job's first spot region (azure/eastus, spot capacity 46 % of the time)
#: loses capacity often, so staying there pays for preemptions that moving avoids: the value of
#: moving is visible, and the test checks the simulator agrees (spotshift beats stay-on-first-spot).
MARKET_SEED = 0
TRACE_SEED = 7

JOB = "llm-finetune"
DATASET = "corpus"
DATA_LOCATION = "aws/us-east-1"
GPU_MODEL, GPU_COUNT = "A100-40GB", 8
SENSORS = ["preemption_sensor", "price_change_sensor", "migration_failure_sensor"]


@dataclass(frozen=True)
class Settings:
    """Size of the demo. Work and deadline are instance-hours of the 8-GPU job."""

    total_steps: int = 720
    work_hours: float = 144.0
    deadline_hours: float = 240.0
    checkpoint_every_steps: int = 30
    price_every_hours: float = 1.0  # virtual hours between price_change_sensor ticks
    preemption_every_hours: float = 6.0  # between preemption_sensor ticks (a notice ticks it at once)
    max_preemptions: int = 2  # notices delivered (the traces ask for more; see README)
    shadow_steps: int = 12
    corpus_mib: float = 2.0
    seed: int = 7

    @property
    def step_hours(self) -> float:
        """Virtual hours one training step stands for: the clock's step."""
        return self.work_hours / self.total_steps


SMALL = Settings(
    total_steps=240,
    work_hours=96.0,
    deadline_hours=200.0,
    checkpoint_every_steps=20,
    max_preemptions=1,
    shadow_steps=8,
    corpus_mib=0.5,
)


def banner(title: str) -> None:
    """A visible stage header."""
    print(f"\n== {title}", flush=True)


# ---------------------------------------------------------------------------------------------
def stage_home() -> Path:
    """Create ``SPOTSHIFT_HOME`` (Dagster instance config, stores, run dir) and point DAGSTER_HOME into it."""
    from spotshift.home import dagster_home, init_home

    home = init_home()
    os.environ.setdefault("DAGSTER_HOME", str(dagster_home()))
    banner("home")
    print(f"SPOTSHIFT_HOME {home}\nDAGSTER_HOME   {os.environ['DAGSTER_HOME']}")
    return home


@dataclass
class Market:
    """The price history the replay feed serves, and the week the job starts in."""

    frame: Any
    origin: str
    polls: list[datetime]
    start: datetime
    why: str


def stage_market(home: Path, *, need_providers: int = 2) -> Market:
    """A multi-cloud price history, and a start week chosen from the data (see module doc)."""
    import polars as pl

    from spotshift.pricing.feeds.replay import resolve_history
    from spotshift.pricing.synthetic import describe, synthetic_history

    banner("market")
    if os.environ.get("SPOTSHIFT_PRICES"):
        history = resolve_history()
        frame, origin = history.frame, history.origin
    else:
        frame = synthetic_history(seed=MARKET_SEED)
        path = home / "market" / "synthetic_gpu_prices.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.write_csv(path)
        os.environ["SPOTSHIFT_PRICES"] = str(path)
        origin = f"{describe()} — SYNTHETIC, written to {path}"
    providers = sorted(frame["provider"].unique().to_list())
    print(f"{origin}\n{frame.height} rows, providers {', '.join(providers)}")
    if len(providers) < need_providers:
        raise SystemExit(
            f"demo: the training lifecycle needs a market of {need_providers} providers or more; "
            f"SPOTSHIFT_PRICES names a {len(providers)}-provider history (try --prices-only)"
        )
    # rank by the effective GPU-hour placement uses (slow network and storage priced in, DESIGN §3)
    from spotshift.pricing.catalog import load_catalog

    catalog = load_catalog()
    factors = {(e.provider, e.instance_type): e.effective_factor for e in catalog}
    a100 = frame.filter(
        (pl.col("gpu_model") == GPU_MODEL)
        & (pl.col("gpu_count") == GPU_COUNT)
        & pl.col("spot_hour").is_not_null()
    )
    rows = [
        (
            r["observed_at"],
            f"{r['provider']}/{r['region']}",
            r["spot_hour"] * factors.get((r["provider"], r["instance_type"]), 99.0),
        )
        for r in a100.iter_rows(named=True)
    ]
    best: dict[datetime, tuple[str, float]] = {}
    for week, location, eff in rows:
        if week not in best or eff < best[week][1]:
            best[week] = (location, eff)
    weeks = sorted(best)
    polls = sorted(frame["observed_at"].unique().to_list())
    if need_providers < 2 or not weeks:  # price discovery only: the newest prices
        start = polls[-1] + timedelta(hours=1)
        print(f"virtual time starts after the newest prices, {start:%Y-%m-%d %H:%M} UTC")
        return Market(frame, origin, polls, start, "newest prices")
    start_week, why = weeks[0], "first week of the market"
    for prev, nxt in zip(weeks[2:], weeks[3:], strict=False):
        (a_loc, a_eff), (b_loc, b_eff) = best[prev], best[nxt]
        if a_loc != b_loc and b_eff < 0.93 * a_eff:
            start_week = prev
            why = (
                f"the week before the cheapest {GPU_COUNT}x {GPU_MODEL} spot moves from {a_loc} "
                f"(${a_eff:.2f} per effective GPU-hour) to {b_loc} (${b_eff:.2f})"
            )
            break
    # late in that week, so the job is running when the new prices arrive
    start = start_week + timedelta(days=4, hours=1)
    print(f"job starts {start:%Y-%m-%d %H:%M} UTC: {why}")
    return Market(frame, origin, polls, start, why)


def stage_data(home: Path, settings: Settings) -> None:
    """Write a small deterministic text corpus, declare it as a dataset and fingerprint it through Dagster."""
    from spotshift.sync.datasets import Dataset, add_dataset

    banner("data: dataset_fingerprints")
    corpus = home / "data" / DATASET
    corpus.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(settings.seed)
    words = [
        "spot",
        "price",
        "region",
        "market",
        "checkpoint",
        "gradient",
        "token",
        "shard",
        "replica",
        "egress",
        "preemption",
        "notice",
        "delta",
        "chunk",
        "manifest",
        "merkle",
        "root",
        "cutover",
        "rollback",
        "shadow",
        "loss",
        "budget",
        "deadline",
    ]
    per_file = int(settings.corpus_mib * 2**20 / 4)
    for i in range(4):
        text = " ".join(rnd.choice(words) for _ in range(per_file // 7))
        (corpus / f"part-{i}.txt").write_text(text[:per_file] + "\n")
    add_dataset(
        Dataset(
            name=DATASET,
            source=str(corpus),
            location=DATA_LOCATION,
            min_chunk=16384,
            avg_chunk=65536,
            max_chunk=262144,
        ),
        replace=True,
    )
    Runs.get().instance.add_dynamic_partitions("datasets", [DATASET])
    run = materialize("dataset_fingerprints", partition=DATASET)
    mats = [e for e in run_events(run.run_id) if e.event_type_value == "ASSET_MATERIALIZATION"]
    meta = mats[-1].event_specific_data.materialization.metadata
    print(
        f"{DATASET}: {meta['files'].value} files, {meta['bytes'].value} bytes, root {meta['root'].value[:16]}… "
        f"in {DATA_LOCATION}'s store"
    )


def stage_job(market: Market, settings: Settings) -> Any:
    """Declare the training job (submitted at the market start, deadline after it)."""
    from spotshift.jobs import TrainingJob, add_job

    banner("job")
    job = TrainingJob(
        name=JOB,
        dataset=DATASET,
        total_steps=settings.total_steps,
        work_hours=settings.work_hours,
        checkpoint_every_steps=settings.checkpoint_every_steps,
        gpu_model=GPU_MODEL,
        gpu_count=GPU_COUNT,
        min_topology_score=7.0,
        spot_allowed=True,
        max_usd_per_hour=60.0,
        allowed_locations=["aws/*", "gcp/*", "azure/*"],
        submitted_at=market.start.isoformat(),
        deadline_hours=settings.deadline_hours,
        seed=settings.seed,
    )
    add_job(job, replace=True)
    Runs.get().instance.add_dynamic_partitions("jobs", [JOB])
    print(
        f"{JOB}: {job.total_steps} steps = {job.work_hours:g} h of {GPU_COUNT}x {GPU_MODEL} work, "
        f"deadline {job.deadline_at:%Y-%m-%d %H:%M} ({job.deadline_hours:g} h), spot allowed, "
        f"checkpoint every {job.checkpoint_every_steps} steps"
    )
    return job


def stage_clock(market: Market, settings: Settings) -> Any:
    """Own the shared clock: stepped, at the job's start, trainers paced on it (stopped on exit)."""
    from spotshift.clock import ClockOwner, VirtualClock

    banner("clock")
    owner = ClockOwner(VirtualClock.stepped_at(market.start, pace_trainers=True))
    print(
        f"virtual clock at {market.start:%Y-%m-%d %H:%M} UTC, stepped by events (not by wall seconds): "
        f"one step = {settings.step_hours * 60:.0f} virtual minutes of GPU work, price_change_sensor "
        f"ticks every {settings.price_every_hours:g} virtual hours, preemption_sensor every "
        f"{settings.preemption_every_hours:g}, both at once after a notice, new prices, a failed run or the "
        "trainer's exit"
    )
    return owner


# ---------------------------------------------------------------------------------------------
class Runs:
    """The demo's one :class:`demo_daemon.Daemon` (code location loaded once, sensors started)."""

    _self: Any = None

    @classmethod
    def get(cls) -> Any:
        if cls._self is None:
            from demo_daemon import Daemon

            from spotshift.home import spotshift_home

            cls._self = Daemon(spotshift_home() / "logs" / "demo-dagster.log", SENSORS)
        return cls._self

    @classmethod
    def close(cls) -> None:
        if cls._self is not None:
            cls._self.close()
            cls._self = None


def run_events(run_id: str) -> list[Any]:
    """The run's materializations, check evaluations and step failures, in order."""
    import dagster as dg

    kinds = {
        dg.DagsterEventType.ASSET_MATERIALIZATION,
        dg.DagsterEventType.ASSET_CHECK_EVALUATION,
        dg.DagsterEventType.STEP_FAILURE,
    }
    logs = Runs.get().instance.all_logs(run_id, of_type=kinds)
    return [e.dagster_event for e in logs if e.dagster_event is not None]


def materialize(asset: str, *, partition: str) -> Any:
    """Materialize one partition of ``asset`` through the code location; stop the demo if it fails."""
    run = Runs.get().launch_assets([asset], partition=partition, tags={"spotshift/demo": "setup"})
    if not run.is_success:
        raise SystemExit(f"demo: materializing {asset}[{partition}] failed (run {run.run_id}); see `make ui`")
    return run


@dataclass
class Lifecycle:
    """State of the lifecycle loop and what it saw."""

    settings: Settings
    market: Market
    job: Any
    polled: set[datetime] = field(default_factory=set)
    price_moves: list[dict[str, Any]] = field(default_factory=list)
    recoveries: list[dict[str, Any]] = field(default_factory=list)
    rollbacks: list[dict[str, Any]] = field(default_factory=list)
    perturbed_done: bool = False
    finished_at: datetime | None = None
    next_tick: dict[str, datetime] = field(default_factory=dict)


def now() -> datetime:
    from spotshift.clock import virtual_now

    return virtual_now()


def advance(hours: float) -> None:
    """Move the stepped clock ``hours`` on, then wait until the live trainer has taken the steps due."""
    from spotshift.clock import load_clock
    from spotshift.training.backend import open_backend
    from spotshift.training.pacing import wait_for_trainers

    load_clock().advance(hours * 3600.0).save()
    wait_for_trainers(open_backend("local"))


def poll_prices(life: Lifecycle) -> bool:
    """Run ``price_poll_job`` when the market has a snapshot the warehouse has not seen; then
    ``placement_plan`` for the job, so the UI explains the decisions on the new prices."""
    due = [w for w in life.market.polls if w <= now() and w not in life.polled]
    if not due:
        return False
    life.polled.update(due)
    run = Runs.get().launch("price_poll_job", {}, {"spotshift/demo": "poll"})
    mats = {
        e.asset_key.to_user_string()
        for e in run_events(run.run_id)
        if e.event_type_value == "ASSET_MATERIALIZATION"
    }
    status = "validated" if "gpu_quotes" in mats else "BLOCKED by a quality check"
    print(f"{now():%Y-%m-%d %H:%M}  prices    snapshot of {max(due):%Y-%m-%d} {status}")
    if "gpu_quotes" in mats:
        materialize("placement_plan", partition=JOB)
    return True


def report_run(run: Any, label: str) -> None:
    """Print one run a sensor (or the demo) launched: its outcome and the chain of assets it ran."""
    chain: list[str] = []
    failures = []
    for e in run_events(run.run_id):
        if e.event_type_value == "ASSET_MATERIALIZATION":
            name = e.asset_key.to_user_string()
            if not chain or chain[-1] != name:
                chain.append(name)
        elif e.event_type_value == "ASSET_CHECK_EVALUATION" and not e.event_specific_data.passed:
            chain.append(f"[{e.event_specific_data.check_name} FAILED]")
        elif e.event_type_value == "STEP_FAILURE":
            error = e.event_specific_data.error
            message = (
                error.cause.message if error and error.cause else error.message if error else ""
            ).strip()
            failures.append(f"{'':19s}{e.step_key} failed: {message[:400]}")
    stats = Runs.get().instance.get_run_stats(run.run_id)
    wall = (stats.end_time or 0) - (stats.start_time or stats.end_time or 0)
    outcome = "ok" if run.is_success else "FAILED"
    print(
        f"{now():%Y-%m-%d %H:%M}  {label:9s} {run.tags.get('dagster/run_key', run.run_id)}: {outcome} "
        f"in {wall:.1f}s wall\n{'':19s}{' -> '.join(chain) or '(no materialization)'}"
    )
    for line in failures:
        print(line)


def execute(life: Lifecycle, run_ids: list[str], label: str) -> list[Any]:
    """Execute requested moves: the changeover passes on the clock first (the job is live in its new
    place at the end of it), then the runs; a failed one is rolled back the same way."""
    from spotshift.placement.params import PlacementParams

    if not run_ids:
        return []
    advance(PlacementParams().changeover_hours)
    runs = Runs.get().wait(run_ids)
    for run in runs:
        report_run(run, label)
    if any(not r.is_success for r in runs):
        for rollback in execute(life, Runs.get().tick("migration_failure_sensor"), "rollback"):
            life.rollbacks.append(
                {"run_key": rollback.tags.get("dagster/run_key"), "ok": rollback.is_success}
            )
    return runs


def due(life: Lifecycle, sensor: str, every_hours: float, force: bool) -> bool:
    """Whether ``sensor`` ticks now: forced by an event, or ``every_hours`` of virtual time after its last tick."""
    if not force and now() < life.next_tick.get(sensor, now()):
        return False
    life.next_tick[sensor] = now() + timedelta(hours=every_hours)
    return True


def handle_sensors(life: Lifecycle, *, force: bool = False) -> None:
    """Tick the sensors on their virtual-time cadence, or at once after an event (``force``)."""
    from spotshift.migration import contract

    daemon, settings = Runs.get(), life.settings
    if due(life, "preemption_sensor", settings.preemption_every_hours, force):
        for run in execute(life, daemon.tick("preemption_sensor"), "recovery"):
            life.recoveries.append({"run_key": run.tags.get("dagster/run_key"), "ok": run.is_success})
    if not due(life, "price_change_sensor", settings.price_every_hours, force):
        return
    for run_id in daemon.tick("price_change_sensor"):
        trigger = daemon.instance.get_run_by_id(run_id).tags.get(contract.TAG_TRIGGER, "price")
        (run,) = execute(life, [run_id], "placement" if trigger == "place" else "migration")
        if trigger == "price":
            life.price_moves.append({"run_key": run.tags.get("dagster/run_key"), "ok": run.is_success})


def perturbed_move(life: Lifecycle) -> None:
    """Once, move the job with a perturbed learning rate on the target: the shadow check must block it."""
    from spotshift.migration import contract
    from spotshift.migration.plan import MovePlan
    from spotshift.placement.inputs import decide_for_job
    from spotshift.placement.state import load_state
    from spotshift.warehouse import connect

    state = load_state(JOB)
    if life.perturbed_done or state.status != "running" or not state.location:
        return
    with connect() as con:
        decision = decide_for_job(con, JOB, now=now())
    other = next((c for c in decision.candidates if c.eligible and c.location != state.location), None)
    if other is None:
        return
    life.perturbed_done = True
    q = other.quote
    plan = MovePlan(
        job=JOB,
        trigger="price",
        from_location=state.location,
        to_location=q.location,
        market=q.market,
        instance_type=q.instance_type,
        price_usd_hour=q.price_usd_hour,
        zone=q.zone,
        gpu_model=q.gpu_model,
        gpu_count=q.gpu_count,
        snapshot_id=decision.snapshot_id,
        run_key=contract.move_run_key(JOB, state.location, q.location, "demo-perturbed-lr"),
    )
    print(
        f"{now():%Y-%m-%d %H:%M}  demo      a deliberately broken move: the target trains with 20x the learning rate"
    )
    config = contract.move_run_config(
        plan.to_dict(),
        shadow_steps=life.settings.shadow_steps,
        perturb_learning_rate=life.job.learning_rate * 20,
    )
    tags = {**plan.tags(), "spotshift/demo": "perturbed", "dagster/run_key": plan.run_key}
    execute(life, [Runs.get().submit(contract.MIGRATION_JOB, config, tags)], "migration")


def deliver_notices(life: Lifecycle, injector: Any, backend: Any) -> bool:
    """Deliver the notices due now; wait until each warned trainer has checkpointed and exited."""
    from spotshift.training.runs import wait_for_exit

    delivered = len(injector.injections)
    injector.tick(now(), deliver=delivered < life.settings.max_preemptions)
    for inj in injector.injections[delivered:]:
        print(
            f"{now():%Y-%m-%d %H:%M}  notice    {inj.location} reclaims its spot capacity "
            f"({inj.provider_notice}): trainer pid {inj.pid} warned in its provider's format"
        )
        wait_for_exit(backend, JOB, location=inj.location, timeout_s=300.0)
    return len(injector.injections) > delivered


def stage_lifecycle(market: Market, job: Any, settings: Settings) -> Lifecycle:
    """Run the job to completion through sensors, runs, trainers and injected preemptions."""
    from spotshift.placement.state import load_state
    from spotshift.simulate.injector import PreemptionInjector
    from spotshift.simulate.traces import generate_traces
    from spotshift.training.backend import open_backend

    banner("lifecycle: sensors -> migration / recovery / rollback runs (virtual time, UTC)")
    life = Lifecycle(settings, market, job, polled={w for w in market.polls if w <= now()})
    locations = sorted(
        {f"{p}/{r}" for p, r in market.frame.select("provider", "region").unique().iter_rows()}
    )
    traces = generate_traces(locations, hours=settings.deadline_hours * 2, seed=TRACE_SEED)
    backend = open_backend("local")
    deadline = job.deadline_at
    Runs.get().tick("migration_failure_sensor")  # a run-status sensor's first tick sets its cursor
    with PreemptionInjector(traces, origin=market.start, backend=backend) as injector:
        while True:
            event = poll_prices(life)
            event = deliver_notices(life, injector, backend) or event
            info = backend.status(JOB)
            event = event or load_state(JOB).status == "running" and not (info and info.alive)
            handle_sensors(life, force=event)
            state = load_state(JOB)
            if state.status == "finished":
                life.finished_at = now()
                break
            if (
                not life.perturbed_done
                and state.status == "running"
                and (any(m["ok"] for m in life.price_moves) or _progress() >= 0.6 * settings.total_steps)
            ):
                perturbed_move(life)
            if now() > deadline + timedelta(hours=settings.deadline_hours):
                print("demo: the job is far past its deadline; stopping")
                break
            advance(settings.step_hours)
    save_enforced_availability(traces, market.start, injector.injections, settings.max_preemptions)
    stop_trainers()
    print(
        f"{now():%Y-%m-%d %H:%M}  finished  {JOB} at step {_progress()} "
        f"({'before' if life.finished_at and life.finished_at <= deadline else 'AFTER'} the deadline "
        f"{deadline:%Y-%m-%d %H:%M})"
    )
    return life


def stop_trainers() -> None:
    """Stop every trainer still alive (with a checkpoint): none outlives the demo, whatever ends it."""
    from spotshift.training.backend import open_backend

    backend = open_backend("local")
    for info in backend.list():
        if info.alive:
            backend.stop(info.name, reason="demo over", timeout_s=60)


def save_enforced_availability(
    traces: dict[str, Any], origin: datetime, injections: list[Any], cap: int
) -> None:
    """Keep the availability the job actually met in ``$SPOTSHIFT_HOME/traces`` for the cost
    baselines: the traces up to the last notice delivered when the cap was reached (the injector
    ignores capacity losses after it), capacity everywhere from then on."""
    from spotshift.simulate.traces import available_from, save_availability

    if len(injections) >= cap > 0:
        hours = (injections[cap - 1].virtual_at - origin).total_seconds() / 3600.0
        traces = {loc: available_from(t, hours) for loc, t in traces.items()}
    save_availability(traces, origin)


def _progress() -> int:
    from spotshift.warehouse import connect, first_row

    with connect() as con:
        row = first_row(con, "SELECT max(step) FROM raw.checkpoints WHERE job = ?", [JOB])
    return int(row[0] or 0) if row else 0


# ---------------------------------------------------------------------------------------------
def stage_inference(market: Market) -> Any:
    """The inference act (``scripts/demo_inference.py``) on the job's committed model."""
    from scripts import demo_inference

    banner("inference: endpoint chat in three regions, a daily curve, a spot preemption under load")
    act = demo_inference.run_act(JOB, market.start)
    demo_inference.print_act(act)
    if act.load.get("errors") != 0 or act.load.get("ok") != act.load.get("requests"):
        raise SystemExit(f"demo: requests failed during the spot preemption: {act.load}")
    return act


def stage_cutover(inference: Any) -> Any:
    """The cutover act (``scripts/demo_cutover.py``) on the inference act's endpoint and locations."""
    from scripts import demo_cutover
    from spotshift.serving.control import location_quotes_now
    from spotshift.serving.endpoints import get_endpoint
    from spotshift.warehouse import connect

    banner(
        "cutover: chat moved to its cheapest region under load; a wrong target rolled back, a good one promoted"
    )
    with connect(read_only=True) as con:
        quotes, _ = location_quotes_now(con, get_endpoint(demo_cutover.ENDPOINT))
    act = demo_cutover.run_act(JOB, inference.locations, {q.location: q for q in quotes})
    demo_cutover.print_act(act)
    phases = [o["phase"] for o in act.outcomes]
    if phases != ["rolled_back", "promoted"] or act.load.get("errors") != 0:
        raise SystemExit(f"demo: the cutovers ended {phases} with load {act.load}")
    return act


def stage_cost_report(life: Lifecycle | None, inference: Any = None, cutover: Any = None) -> None:
    """Run ``cost_report_job`` (dbt build of dbt_costs, then ``cost_report``) and print the report."""
    from spotshift.costs.marts import fetch_dicts, open_marts
    from spotshift.costs.report import format_text, read_report, reports_dir

    banner("costs: dbt_costs (dbt build) -> cost_report")
    run = Runs.get().launch("cost_report_job", {}, {"spotshift/demo": "costs"})
    print(f"run {run.run_id}: {'success' if run.is_success else 'FAILED'}; report in {reports_dir()}")
    if not run.is_success:
        report_run(run, "costs")
        raise SystemExit("demo: the cost report failed; see the run in `make ui`")
    with open_marts() as con:
        print(format_text(read_report(con, os.environ["SPOTSHIFT_WAREHOUSE"])), end="")
        if life is None:
            return
        savings = fetch_dicts(con, "SELECT * FROM mart_savings WHERE job = ?", [JOB])
        migrations = fetch_dicts(con, "SELECT * FROM fct_migrations WHERE job = ?", [JOB])
        preemptions = fetch_dicts(con, "SELECT * FROM fct_preemptions WHERE job = ?", [JOB])
        per_mtok = fetch_dicts(
            con,
            "SELECT value FROM mart_cost_metrics WHERE scope_kind = 'fleet' AND scope = 'inference' "
            "AND metric = 'cost_per_million_tokens'",
        )
    if inference is not None:  # measured on wall-clock replica time: in the report, not the summary
        value = per_mtok[0]["value"] if per_mtok else None
        print(
            "inference cost per million tokens (served traffic of the act, replica time measured): "
            + ("-" if value is None else f"${value:,.2f}")
        )
    print_summary(life, savings[0] if savings else {}, migrations, preemptions)
    if inference is not None:
        print_inference_summary(inference, cutover)


def print_summary(
    life: Lifecycle,
    savings: dict[str, Any],
    migrations: list[dict[str, Any]],
    preemptions: list[dict[str, Any]],
) -> None:
    """The demo's closing table."""

    def usd(v: Any) -> str:
        return "-" if v is None else f"${v:,.2f}"

    moved_gb = sum((m.get("bytes_moved") or 0) for m in migrations) / 1e9
    recoveries = [p["recovery_s"] for p in preemptions if p.get("recovery_s") is not None]
    price_ok = sum(1 for m in life.price_moves if m["ok"])
    deadline = life.job.deadline_at
    met = life.finished_at is not None and life.finished_at <= deadline
    banner(f"summary: {JOB}")
    rows = [
        ("spotshift (actual)", usd(savings.get("actual_usd"))),
        ("baseline: always on-demand, same work", usd(savings.get("on_demand_usd"))),
        (
            "baseline: stay on the first spot region",
            usd(savings.get("stay_first_spot_usd")) + f"  ({savings.get('stay_first_spot_basis') or '-'})",
        ),
        (
            "bound: first spot region never reclaimed",
            usd(savings.get("first_spot_bound_usd")) + "  (a lower bound, not a baseline)",
        ),
        ("saving vs on-demand", usd(savings.get("saving_vs_on_demand_usd"))),
        ("saving vs staying on the first spot region", _verdict(savings)),
        ("price-driven migrations (cut over)", str(price_ok)),
        ("preemption recoveries", f"{sum(1 for r in life.recoveries if r['ok'])} of {len(life.recoveries)}"),
        (
            "recovery time, notice to resumed (virtual)",
            ", ".join(f"{s / 60:.0f} min" for s in recoveries) or "-",
        ),
        ("rolled back (blocked shadow validation)", str(sum(1 for r in life.rollbacks if r["ok"]))),
        ("GB moved (data + checkpoints)", f"{moved_gb:.4f}"),
        (
            "deadline met",
            f"{'yes' if met else 'NO'} (finished {life.finished_at:%Y-%m-%d %H:%M}, "
            f"deadline {deadline:%Y-%m-%d %H:%M})"
            if life.finished_at
            else "NO (not finished)",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def print_inference_summary(act: Any, cutover: Any = None) -> None:
    """The inference and cutover acts' closing lines (same two-column layout as the summary;
    deterministic: the measured cost per million tokens and request counts are printed above)."""
    load = act.load
    saving = 1 - act.day_usd / act.day_on_demand_usd if act.day_on_demand_usd else 0.0
    rows = [
        ("inference: replicas", ", ".join(f"{loc} ({m})" for loc, m in act.serving)),
        (
            "inference: failed requests",
            f"{load.get('errors')} of {load.get('requests')} ({act.preempted or 'no replica'} preempted mid-load)",
        ),
        (
            "inference: autoscaled day vs on-demand",
            f"${act.day_usd:,.2f} vs ${act.day_on_demand_usd:,.2f} ({saving:.0%} cheaper), "
            f"{act.slo_attainment:.3%} within the SLO",
        ),
    ]
    for i, o in enumerate(cutover.outcomes if cutover is not None else [], 1):
        how = f"{o['criterion']}" if o["phase"] == "rolled_back" else " ".join(o["stages"])
        rows.append((f"cutover {i}: {o['model']}", f"{o['phase']} at {o['stage']} ({how})"))
    if cutover is not None:
        rows.append(("cutover: failed requests", str(cutover.load.get("errors"))))
        rows.append(
            ("cutover: replicas at most", f"{cutover.peak} (steady {cutover.steady}, cap {cutover.cap})")
        )
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def _verdict(savings: dict[str, Any]) -> str:
    """The saving against staying put, said plainly when there is none."""
    saved = savings.get("saving_vs_stay_first_spot_usd")
    if saved is None:
        return "- (no stay-on-first-spot baseline)"
    if saved >= 0:
        return f"${saved:,.2f} ({100 * (savings.get('saving_vs_stay_first_spot') or 0):.1f} %)"
    return f"none: spotshift cost ${-saved:,.2f} more than staying would have"


def main(argv: list[str] | None = None) -> int:
    """Run every stage in order."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a shorter job (the end-to-end test)")
    parser.add_argument("--prices-only", action="store_true", help="stop after price discovery")
    args = parser.parse_args(argv)
    for k, v in (
        ("DAGSTER_DISABLE_TELEMETRY", "true"),
        ("DO_NOT_TRACK", "1"),
        ("GX_ANALYTICS_ENABLED", "false"),
    ):
        os.environ.setdefault(k, v)
    settings = SMALL if args.small else Settings()
    t0 = time.monotonic()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # stop the clock and the code server on the way out
    home = stage_home()
    market = stage_market(home, need_providers=1 if args.prices_only else 2)
    try:
        with stage_clock(market, settings):
            stage_prices_first()
            life = inference = cutover = None
            if not args.prices_only:
                stage_data(home, settings)
                job = stage_job(market, settings)
                life = stage_lifecycle(market, job, settings)
                inference = stage_inference(market)
                cutover = stage_cutover(inference)
            stage_cost_report(life, inference, cutover)
    finally:
        stop_trainers()
        Runs.close()
    print(
        f"\ndemo took {time.monotonic() - t0:.0f}s. next: `make ui` (every run, materialization and check "
        "above is in the instance), `spotshift report`, `spotshift focus export costs.csv`, `spotshift simulate`"
    )
    return 0


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def stage_prices_first() -> None:
    """The first ``price_poll_job`` and the cheapest effective GPU-hours it found."""
    import polars as pl

    from spotshift.pricing.snapshots import cheapest_per_model, cheapest_table, latest_quotes
    from spotshift.warehouse import connect

    banner("prices: raw_price_quotes -> checks -> gpu_quotes")
    run = Runs.get().launch("price_poll_job", {}, {"spotshift/demo": "poll"})
    for event in run_events(run.run_id):
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            ev = event.event_specific_data
            print(f"  check {ev.check_name:30s} {'passed' if ev.passed else 'FAILED'}")
    if not run.is_success:
        raise SystemExit("demo: the price poll failed; see the run in `make ui`")
    with connect(read_only=True) as con:
        quotes = latest_quotes(con)
    print(
        f"cheapest effective GPU-hours for distributed training ({quotes.height} validated quotes, "
        "topology score >= 7: NVLink multi-GPU)"
    )
    print(cheapest_table(cheapest_per_model(quotes.filter(pl.col("topology_score") >= 7))))


if __name__ == "__main__":
    sys.exit(main())
