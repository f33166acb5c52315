"""``make demo``: spotshift end to end on the embedded defaults, one function per stage.

1. ``home``      create ``SPOTSHIFT_HOME`` (Dagster instance, warehouse, one local store per region)
2. ``market``    a multi-cloud market (AWS, GCP, Azure; weekly on-demand and spot prices): the
                 generated one, or ``SPOTSHIFT_PRICES=FILE``; the job starts late in the week before
                 the cheapest A100 region changes, so the economics have a real decision to make
3. ``data``      a small text corpus, declared as a dataset and fingerprinted (``dataset_fingerprints``)
4. ``job``       a training job (8x A100-40GB, NVLink, spot allowed, deadline) declared
5. ``prices``    ``price_poll_job``: ``raw_price_quotes`` -> blocking GX checks -> ``gpu_quotes``
6. ``lifecycle`` the shared virtual clock runs weeks of market in minutes; every loop the demo
                 evaluates ``price_change_sensor``, ``preemption_sensor`` and
                 ``migration_failure_sensor`` against the Dagster instance and executes the runs they
                 request (``migration_job``, ``preemption_recovery_job``, ``rollback_job``); the
                 preemption injector turns generated availability traces into real provider-format
                 notices to the trainer processes; one deliberately perturbed migration shows a
                 blocked shadow validation and its rollback
7. ``costs``     ``cost_report_job`` (dbt build of dbt_costs, then ``cost_report``) and the summary:
                 spotshift vs always-on-demand vs stay-on-first-spot, GB moved, recovery times,
                 deadline met

Virtual time stops while a migration, recovery or rollback run executes (the job is not training
then) and resumes a nominal changeover later (``PlacementParams.changeover_hours``): process
start-up on a 2-core laptop is not what a cloud changeover costs, and the economics already
charge that changeover. Recovery times are reported both ways. ``--small`` runs a shorter job
(the end-to-end test uses it). Afterwards ``make ui`` shows every run, materialization and check.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
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
# expected failures (the blocked shadow validation) are reported by the demo itself; `make ui` has the logs
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@dataclass(frozen=True)
class Settings:
    """Size of the demo. Work and deadline are instance-hours of the 8-GPU job."""

    total_steps: int = 720
    work_hours: float = 144.0
    deadline_hours: float = 240.0
    checkpoint_every_steps: int = 30
    wall_seconds: float = 150.0  # wall time of the job's work if nothing interrupted it
    max_preemptions: int = 2  # notices delivered (the traces ask for more; see README)
    shadow_steps: int = 12
    corpus_mib: float = 2.0
    seed: int = 7

    @property
    def speed(self) -> float:
        """Virtual seconds per wall second."""
        return self.work_hours * 3600.0 / self.wall_seconds


SMALL = Settings(
    total_steps=240,
    work_hours=96.0,
    deadline_hours=200.0,
    checkpoint_every_steps=20,
    wall_seconds=60.0,
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
    run = Runs.get()
    run.instance.add_dynamic_partitions("datasets", [DATASET])
    result = run.materialize("dataset_fingerprints", partition=DATASET)
    meta = result.asset_materializations_for_node("dataset_fingerprints")[-1].metadata
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


def stage_clock(market: Market, settings: Settings) -> None:
    """Start the shared virtual clock at the job's start, paced trainers."""
    from spotshift.clock import VirtualClock

    banner("clock")
    VirtualClock.starting(market.start, settings.speed, pace_trainers=True).save()
    print(
        f"virtual clock at {market.start:%Y-%m-%d %H:%M} UTC, x{settings.speed:,.0f} "
        f"({settings.speed / 3600:.2f} virtual hours per second); trainers take one step per "
        f"{settings.work_hours / settings.total_steps * 60:.0f} virtual minutes of GPU work"
    )


# ---------------------------------------------------------------------------------------------
class Runs:
    """Executes jobs and sensors of ``definitions.py`` against the persistent Dagster instance."""

    _self: Runs | None = None

    def __init__(self) -> None:
        import dagster as dg

        import definitions

        self.dg = dg
        self.defs = definitions.defs
        self.repo = self.defs.get_repository_def()
        self.instance = dg.DagsterInstance.get()
        self.cursors: dict[str, str | None] = {}

    @classmethod
    def get(cls) -> Runs:
        if cls._self is None:
            cls._self = Runs()
        return cls._self

    def materialize(self, asset: str, *, partition: str | None = None) -> Any:
        job = self.defs.resolve_implicit_global_asset_job_def()
        result = job.execute_in_process(
            instance=self.instance,
            run_config=QUIET,
            partition_key=partition,
            asset_selection=[self.dg.AssetKey(asset)],
            raise_on_error=False,
        )
        if not result.success:
            raise SystemExit(f"demo: materializing {asset} failed; see the run in `make ui`")
        return result

    def execute(self, job_name: str, run_config: dict[str, Any], tags: dict[str, str]) -> Any:
        job = self.defs.resolve_job_def(job_name)
        config = {**QUIET, **run_config}
        return job.execute_in_process(
            instance=self.instance, run_config=config, tags=tags, raise_on_error=False
        )

    def sensor(self, name: str) -> list[Any]:
        """Evaluate sensor ``name`` once; returns its run requests (cursor kept between calls)."""
        sensor = self.repo.get_sensor_def(name)
        ctx = self.dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursors.get(name),
            definitions=self.defs,
            resources=self.defs.resources,
        )
        data = sensor.evaluate_tick(ctx)
        if data.cursor is not None:
            self.cursors[name] = data.cursor
        return list(data.run_requests or [])

    def failure_sensor(self, run_id: str) -> list[Any]:
        """Evaluate ``migration_failure_sensor`` for a failed run."""
        dg = self.dg
        run = self.instance.get_run_by_id(run_id)
        records = self.instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
        event = records[-1].event_log_entry.dagster_event
        ctx = dg.build_run_status_sensor_context(
            sensor_name="migration_failure_sensor",
            dagster_event=event,
            dagster_instance=self.instance,
            dagster_run=run,
            repository_def=self.repo,
        ).for_run_failure()
        out = self.repo.get_sensor_def("migration_failure_sensor")(ctx)
        return [out] if isinstance(out, dg.RunRequest) else []


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
    failed_runs: list[str] = field(default_factory=list)
    perturbed_done: bool = False
    finished_at: datetime | None = None


def now() -> datetime:
    from spotshift.clock import virtual_now

    return virtual_now()


@contextlib.contextmanager
def clock_paused(settings: Settings) -> Any:
    """Stop virtual time while a control-plane run executes; resume a nominal changeover later."""
    from spotshift.clock import load_clock
    from spotshift.placement.params import PlacementParams

    load_clock().paused().save()
    try:
        yield
    finally:
        load_clock().resumed(skip_seconds=PlacementParams().changeover_hours * 3600).save()


def poll_prices(life: Lifecycle) -> None:
    """Run ``price_poll_job`` when the market has a snapshot the warehouse has not seen."""
    due = [w for w in life.market.polls if w <= now() and w not in life.polled]
    if not due:
        return
    life.polled.update(due)
    result = Runs.get().execute("price_poll_job", {}, {"spotshift/demo": "poll"})
    mats = {
        e.asset_key.to_user_string()
        for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION"
    }
    status = "validated" if "gpu_quotes" in mats else "BLOCKED by a quality check"
    print(f"{now():%Y-%m-%d %H:%M}  prices    snapshot of {max(due):%Y-%m-%d} {status}")


def run_request(life: Lifecycle, job_name: str, request: Any, label: str) -> Any:
    """Execute one run a sensor requested, with virtual time paused; print the chain it ran."""
    tags = {**request.tags, "dagster/run_key": request.run_key or ""}
    t0 = time.monotonic()
    with clock_paused(life.settings):
        result = Runs.get().execute(job_name, request.run_config, tags)
    wall = time.monotonic() - t0
    chain = []
    for e in result.all_events:
        if e.event_type_value == "ASSET_MATERIALIZATION":
            name = e.asset_key.to_user_string()
            if not chain or chain[-1] != name:
                chain.append(name)
        elif e.event_type_value == "ASSET_CHECK_EVALUATION" and not e.event_specific_data.passed:
            chain.append(f"[{e.event_specific_data.check_name} FAILED]")
    outcome = "ok" if result.success else "FAILED"
    print(
        f"{now():%Y-%m-%d %H:%M}  {label:9s} {request.run_key}: {outcome} in {wall:.1f}s wall\n"
        f"{'':19s}{' -> '.join(chain) or '(no materialization)'}"
    )
    if not result.success:
        life.failed_runs.append(result.run_id)
        for e in result.all_events:
            if e.event_type_value == "STEP_FAILURE":
                error = e.event_specific_data.error
                message = (
                    error.cause.message if error and error.cause else error.message if error else ""
                ).strip()
                print(f"{'':19s}{e.step_key} failed: {message[:400]}")
    return result


def handle_sensors(life: Lifecycle) -> None:
    """Evaluate the three sensors and execute what they request, in the order a daemon would."""
    from spotshift.migration import contract

    runs = Runs.get()
    for request in runs.sensor("preemption_sensor"):
        result = run_request(life, contract.RECOVERY_JOB, request, "recovery")
        life.recoveries.append({"run_key": request.run_key, "ok": result.success, "run_id": result.run_id})
    for request in runs.sensor("price_change_sensor"):
        trigger = request.tags.get(contract.TAG_TRIGGER, "price")
        result = run_request(
            life, contract.MIGRATION_JOB, request, "placement" if trigger == "place" else "migration"
        )
        if trigger == "price":
            life.price_moves.append({"run_key": request.run_key, "ok": result.success})
    while life.failed_runs:
        for request in runs.failure_sensor(life.failed_runs.pop(0)):
            result = run_request(life, contract.ROLLBACK_JOB, request, "rollback")
            life.rollbacks.append({"run_key": request.run_key, "ok": result.success})


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
    request = Runs.get().dg.RunRequest(
        run_key=plan.run_key,
        tags={**plan.tags(), "spotshift/demo": "perturbed"},
        run_config=contract.move_run_config(
            plan.to_dict(),
            shadow_steps=life.settings.shadow_steps,
            perturb_learning_rate=life.job.learning_rate * 20,
        ),
    )
    run_request(life, contract.MIGRATION_JOB, request, "migration")


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
    with PreemptionInjector(traces, origin=market.start, backend=backend) as injector:
        while True:
            poll_prices(life)
            delivered = len(injector.injections)
            injector.tick(now(), deliver=delivered < settings.max_preemptions)
            for inj in injector.injections[delivered:]:
                print(
                    f"{now():%Y-%m-%d %H:%M}  notice    {inj.location} reclaims its spot capacity "
                    f"({inj.provider_notice}): trainer pid {inj.pid} warned in its provider's format"
                )
            handle_sensors(life)
            state = load_state(JOB)
            if state.status == "finished":
                life.finished_at = now()
                break
            progress = _progress()
            if (
                not life.perturbed_done
                and state.status == "running"
                and (any(m["ok"] for m in life.price_moves) or progress >= 0.6 * settings.total_steps)
            ):
                perturbed_move(life)
            if now() > deadline + timedelta(hours=settings.deadline_hours):
                print("demo: the job is far past its deadline; stopping")
                break
            time.sleep(0.5)
    save_enforced_availability(traces, market.start, injector.injections, settings.max_preemptions)
    for info in backend.list():
        if info.alive:
            backend.stop(info.name, reason="demo over", timeout_s=60)
    print(
        f"{now():%Y-%m-%d %H:%M}  finished  {JOB} at step {_progress()} "
        f"({'before' if life.finished_at and life.finished_at <= deadline else 'AFTER'} the deadline "
        f"{deadline:%Y-%m-%d %H:%M})"
    )
    return life


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
def stage_cost_report(life: Lifecycle | None) -> None:
    """Run ``cost_report_job`` (dbt build of dbt_costs, then ``cost_report``) and print the report."""
    from spotshift.costs.marts import fetch_dicts, open_marts
    from spotshift.costs.report import format_text, read_report, reports_dir

    banner("costs: dbt_costs (dbt build) -> cost_report")
    dbt_log = io.StringIO()  # dagster-dbt echoes dbt's log to stdout (a run's compute log)
    with contextlib.redirect_stdout(dbt_log):
        result = Runs.get().execute("cost_report_job", {}, {"spotshift/demo": "costs"})
    print(f"run {result.run_id}: {'success' if result.success else 'FAILED'}; report in {reports_dir()}")
    if not result.success:
        print("\n".join(dbt_log.getvalue().splitlines()[-30:]))
        raise SystemExit("demo: the cost report failed; see the run in `make ui`")
    with open_marts() as con:
        print(format_text(read_report(con, os.environ["SPOTSHIFT_WAREHOUSE"])), end="")
        if life is None:
            return
        savings = fetch_dicts(con, "SELECT * FROM mart_savings WHERE job = ?", [JOB])
        migrations = fetch_dicts(con, "SELECT * FROM fct_migrations WHERE job = ?", [JOB])
        preemptions = fetch_dicts(con, "SELECT * FROM fct_preemptions WHERE job = ?", [JOB])
    print_summary(life, savings[0] if savings else {}, migrations, preemptions)


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
    home = stage_home()
    market = stage_market(home, need_providers=1 if args.prices_only else 2)
    stage_clock(market, settings)
    stage_prices_first()
    life = None
    if not args.prices_only:
        stage_data(home, settings)
        job = stage_job(market, settings)
        life = stage_lifecycle(market, job, settings)
    stage_cost_report(life)
    print(
        f"\ndemo took {time.monotonic() - t0:.0f}s. next: `make ui` (every run, materialization and check "
        "above is in the instance), `spotshift report`, `spotshift focus export costs.csv`, `spotshift simulate`"
    )
    return 0


def stage_prices_first() -> None:
    """The first ``price_poll_job`` and the cheapest effective GPU-hours it found."""
    import polars as pl

    from spotshift.pricing.snapshots import cheapest_per_model, cheapest_table, latest_quotes
    from spotshift.warehouse import connect

    banner("prices: raw_price_quotes -> checks -> gpu_quotes")
    result = Runs.get().execute("price_poll_job", {}, {"spotshift/demo": "poll"})
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            ev = event.event_specific_data
            print(f"  check {ev.check_name:30s} {'passed' if ev.passed else 'FAILED'}")
    if not result.success:
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
