"""Fixture warehouses: realistic raw facts for tests and benchmarks (test data, not library code).

:func:`generate_facts` simulates a few training jobs on a small multi-cloud spot market and returns
rows for every table of :data:`spotshift.warehouse_schema.RAW_TABLES`: spot intervals (some ending in a
preemption, with or without an emergency checkpoint), on-demand intervals, periodic checkpoints,
price quotes every 6 hours, placement decisions, price- and preemption-triggered migrations with
their dataset and checkpoint transfers (one job with full copies whose amplification trips the 3.0
alert), shadow validations (one failing, rolled back) and inference serving windows. The timeline
starts on 30 March so intervals cross a month boundary (FOCUS billing periods).

:func:`write_fixture_warehouse` writes them through :func:`spotshift.warehouse.append_rows`.
:func:`write_scaled_usage` writes millions of rows with DuckDB SQL for the benchmark.
Everything is deterministic for a given seed.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from spotshift.checkpoint import compat
from spotshift.pricing.egress import egress_usd_per_gb
from spotshift.pricing.quote import effective_gpu_hour_usd
from spotshift.sync.transfer import TransferStats
from spotshift.warehouse import append_rows, connect, first_row
from spotshift.warehouse_tables import ensure_schema

#: the first virtual instant of the fixture timeline (naive UTC)
FIXTURE_START = datetime(2024, 3, 30, 0, 0, 0)

#: preemption warning per provider (DESIGN §3), seconds
_WARNING_S = {"aws": 120.0, "gcp": 30.0, "azure": 30.0}
_NOTICE_KIND = {"aws": "aws_imds", "gcp": "gcp_metadata", "azure": "azure_scheduled_events"}


@dataclass(frozen=True)
class FixtureLocation:
    """One place the fixture market quotes: an 8-GPU A100 instance type and its prices."""

    provider: str
    region: str
    instance_type: str
    on_demand_usd_hour: float
    spot_ratio: float  # mean spot price / on-demand price
    phase: float  # where in its daily cycle the spot price starts

    @property
    def location(self) -> str:
        return f"{self.provider}/{self.region}"


#: On-demand list prices of 8x A100-40GB instances (2024 list prices: p4d.24xlarge $32.77,
#: a2-highgpu-8g $29.39, ND96asr_v4 $27.20); spot ratios in the 0.3-0.45 range providers show.
FIXTURE_LOCATIONS: tuple[FixtureLocation, ...] = (
    FixtureLocation("aws", "us-east-1", "p4d.24xlarge", 32.77, 0.42, 0.0),
    FixtureLocation("gcp", "us-central1", "a2-highgpu-8g", 29.39, 0.36, 1.7),
    FixtureLocation("azure", "eastus", "Standard_ND96asr_v4", 27.20, 0.40, 3.9),
    FixtureLocation("gcp", "europe-west4", "a2-highgpu-8g", 30.86, 0.33, 5.1),
)

_GPU_MODEL = "A100-40GB"
_GPU_COUNT = 8
_QUOTE_EVERY = timedelta(hours=6)


@dataclass(frozen=True)
class FixtureJob:
    """A training job of the fixture: how much work, where it may run, how it pays."""

    name: str
    dataset: str
    work_hours: float
    start_offset_h: float
    spot: bool = True
    full_copies: bool = False  # moves data with full copies (no delta sync): amplification alert
    dataset_gb: float = 800.0
    checkpoint_gb: float = 140.0


FIXTURE_JOBS: tuple[FixtureJob, ...] = (
    FixtureJob("llama-7b-ft", "web-corpus", work_hours=70.0, start_offset_h=0.0),
    FixtureJob(
        "resnet-152",
        "imagenet",
        work_hours=40.0,
        start_offset_h=30.0,
        full_copies=True,
        dataset_gb=150.0,
        checkpoint_gb=2.0,
    ),
    FixtureJob("bert-eval", "glue", work_hours=8.0, start_offset_h=60.0, spot=False, dataset_gb=20.0),
)


def spot_price(loc: FixtureLocation, at: datetime, seed: int) -> float:
    """The fixture market's spot price of ``loc`` in the 6-hour poll window containing ``at``."""
    window = int((at - FIXTURE_START).total_seconds() // _QUOTE_EVERY.total_seconds())
    noise = _unit(f"{seed}:{loc.location}:{window}") - 0.5
    cycle = math.sin(loc.phase + window * 2 * math.pi / 9.0)
    return round(loc.on_demand_usd_hour * loc.spot_ratio * (1.0 + 0.3 * cycle + 0.12 * noise), 4)


def _unit(key: str) -> float:
    """A deterministic number in [0, 1) from a string."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2**64


def _id(*parts: object) -> str:
    return hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=10).hexdigest()


def _quote_time(at: datetime) -> datetime:
    """Start of the 6-hour poll window containing ``at`` (when that price was polled)."""
    n = (at - FIXTURE_START) // _QUOTE_EVERY
    return FIXTURE_START + n * _QUOTE_EVERY


class _Sim:
    """Accumulates the rows of one fixture run."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.rows: dict[str, list[dict[str, Any]]] = {}

    def add(self, table: str, **row: Any) -> None:
        self.rows.setdefault(table, []).append(row)

    def cheapest(self, at: datetime, exclude: str | None = None) -> FixtureLocation:
        options = [loc for loc in FIXTURE_LOCATIONS if loc.location != exclude]
        return min(options, key=lambda loc: spot_price(loc, at, self.seed))

    def transfer(
        self, job: FixtureJob, kind: str, src: str, dst: str, at: datetime, run_id: str, full: bool
    ) -> tuple[int, float]:
        size_gb = job.dataset_gb if kind == "dataset" else job.checkpoint_gb
        bytes_full = int(size_gb * 1e9)
        # delta sync sends what changed plus manifests; a full copy sends everything
        changed_frac = (
            0.02 + 0.06 * self.rng.random() if kind == "dataset" else 0.15 + 0.2 * self.rng.random()
        )
        bytes_changed = int(bytes_full * changed_frac)
        bytes_sent = bytes_full if full else int(bytes_changed * (1.02 + 0.05 * self.rng.random()))
        chunks_total = max(1, bytes_full // (8 * 2**20))
        stats = TransferStats(
            dataset=job.dataset if kind == "dataset" else job.name,
            root=_id("root", run_id, kind),
            kind=kind,
            method="full" if full else ("cdc_delta" if kind == "dataset" else "tensor_delta"),
            src_location=src,
            dst_location=dst,
            started_at=at,
            seconds=round(bytes_sent / 1.25e9, 3),  # 10 Gbit/s
            bytes_scanned=bytes_full,
            bytes_changed=bytes_changed,
            bytes_full=bytes_full,
            chunks_total=chunks_total,
            chunks_sent=max(1, int(chunks_total * bytes_sent / bytes_full)),
            bytes_sent=bytes_sent,
            transfer_id=_id("transfer", run_id, kind),
        )
        stats.price()
        self.add("transfers", **stats.to_row(run_id))
        egress = stats.egress_usd
        return bytes_sent, egress


def _simulate_job(sim: _Sim, job: FixtureJob) -> None:
    rng = sim.rng
    t = FIXTURE_START + timedelta(hours=job.start_offset_h)
    loc = sim.cheapest(t)
    market = "spot" if job.spot else "on_demand"
    done_h = 0.0
    step_per_h = 1000
    tokens_per_step = 500_000
    k = 0
    last_ckpt_h = 0.0  # work hours captured by the newest checkpoint
    while done_h < job.work_hours - 1e-9:
        k += 1
        price = spot_price(loc, t, sim.seed) if market == "spot" else loc.on_demand_usd_hour
        length_h = min(rng.uniform(1.4, 3.1), job.work_hours - done_h)
        final = done_h + length_h >= job.work_hours - 1e-9
        preempted = market == "spot" and not final and rng.random() < 0.25
        end = t + timedelta(hours=length_h)
        run_id = f"run-{job.name}-{k}"
        # periodic checkpoints every 30 minutes of the interval
        n_periodic = int(length_h / 0.5)
        for i in range(1, n_periodic + 1):
            at = t + timedelta(hours=0.5 * i)
            if at >= end:
                break
            _checkpoint(sim, job, loc, at, done_h + 0.5 * i, "periodic", step_per_h, tokens_per_step)
            last_ckpt_h = done_h + 0.5 * i
        kept_h = length_h
        if preempted:
            warning = _WARNING_S[loc.provider]
            noticed = end - timedelta(seconds=warning)
            emergency_ok = rng.random() < 0.7
            committed = None
            if emergency_ok:
                committed = noticed + timedelta(seconds=warning * 0.6)
                kept_h = (committed - t).total_seconds() / 3600
                _checkpoint(
                    sim, job, loc, committed, done_h + kept_h, "emergency", step_per_h, tokens_per_step
                )
                last_ckpt_h = done_h + kept_h
            else:
                kept_h = max(0.0, last_ckpt_h - done_h)
        else:
            noticed = committed = None
        sim.add(
            "compute_usage",
            usage_id=_id("usage", job.name, k),
            job=job.name,
            provider=loc.provider,
            region=loc.region,
            instance_type=loc.instance_type,
            gpu_model=_GPU_MODEL,
            market=market,
            started_at=t,
            ended_at=end,
            gpu_count=_GPU_COUNT,
            price_usd_hour=price,
            list_price_usd_hour=loc.on_demand_usd_hour,
            usd=price * length_h,
            ended_in_preemption=preempted,
            steps=int(length_h * step_per_h),
            tokens=int(length_h * step_per_h) * tokens_per_step,
            run_id=run_id,
        )
        done_h += kept_h
        if final:
            _checkpoint(sim, job, loc, end, job.work_hours, "final", step_per_h, tokens_per_step)
            break
        if preempted:
            # recover on the cheapest other spot location (what a spot-resilient launcher does)
            resume = end + timedelta(minutes=rng.uniform(4, 12))
            target = sim.cheapest(resume, exclude=loc.location)
            sim.add(
                "preemptions",
                notice_id=_id("notice", job.name, k),
                job=job.name,
                location=loc.location,
                notice_kind=_NOTICE_KIND[loc.provider],
                noticed_at=noticed,
                deadline_at=end,
                checkpoint_committed_at=committed,
                recovered_at=resume,
                recovery_s=(resume - noticed).total_seconds(),
                step=int(last_ckpt_h * step_per_h),
            )
            _migrate(sim, job, loc, target, end, resume, "preemption", "cut_over", f"recover-{job.name}-{k}")
            loc, t = target, resume
            continue
        # price check at the end of the interval: move when another place is >= 15 % cheaper
        best = sim.cheapest(end)
        current_price = spot_price(loc, end, sim.seed) if market == "spot" else loc.on_demand_usd_hour
        best_price = spot_price(best, end, sim.seed)
        remaining = job.work_hours - done_h
        move = market == "spot" and best.location != loc.location and best_price < 0.85 * current_price
        sim.add(
            "decisions",
            decision_id=_id("decision", job.name, k),
            decided_at=end,
            job=job.name,
            snapshot_id=_id("snapshot", _quote_time(end)),
            action="move" if move else "stay",
            current_location=loc.location,
            best_location=best.location,
            current_usd_hour=current_price,
            best_usd_hour=best_price,
            remaining_hours=remaining,
            expected_savings_usd=max(0.0, (current_price - best_price) * remaining),
            move_cost_usd=(job.dataset_gb * 0.05 + job.checkpoint_gb)
            * egress_usd_per_gb(loc.location, best.location),
            margin_usd=25.0,
            deadline_slack_hours=48.0,
            reasons='["spot price gap"]' if move else '["savings below margin"]',
        )
        if move:
            resume = end + timedelta(minutes=rng.uniform(8, 20))
            # every fourth price move fails shadow validation and is rolled back
            rolled_back = k % 4 == 0
            mig_run = f"migrate-{job.name}-{k}"
            _migrate(
                sim,
                job,
                loc,
                best,
                end,
                resume,
                "price",
                "rolled_back" if rolled_back else "cut_over",
                mig_run,
                expected=(current_price - best_price) * remaining,
            )
            if not rolled_back:
                loc = best
            t = resume
        else:
            t = end


def _checkpoint(
    sim: _Sim,
    job: FixtureJob,
    loc: FixtureLocation,
    at: datetime,
    work_h: float,
    kind: str,
    step_per_h: int,
    tokens_per_step: int,
) -> None:
    step = int(round(work_h * step_per_h))
    serialize_s = 4.0 + 2 * sim.rng.random()
    upload_s = job.checkpoint_gb / 1.25
    sim.add(
        "checkpoints",
        checkpoint_id=_id("ckpt", job.name, step, at),
        job=job.name,
        step=step,
        tokens=step * tokens_per_step,
        kind=kind,
        location=loc.location,
        url=f"file:///stores/{loc.location}/checkpoints/{job.name}/{step}",
        bytes=int(job.checkpoint_gb * 1e9),
        created_at=at,
        serialize_s=serialize_s,
        encrypt_s=0.4,
        upload_s=upload_s,
        total_s=serialize_s + 0.4 + upload_s,
    )


def _migrate(
    sim: _Sim,
    job: FixtureJob,
    src: FixtureLocation,
    dst: FixtureLocation,
    start: datetime,
    end: datetime,
    trigger: str,
    status: str,
    run_id: str,
    expected: float | None = None,
) -> None:
    moved = 0
    egress = 0.0
    for kind in ("dataset", "checkpoint"):
        b, e = sim.transfer(job, kind, src.location, dst.location, start, run_id, job.full_copies)
        moved += b
        egress += e
    if trigger == "price":
        passed = status == "cut_over"
        sim.add(
            "shadow_validations",
            validation_id=_id("shadow", run_id),
            job=job.name,
            source_location=src.location,
            target_location=dst.location,
            checkpoint_id=_id("ckpt-shadow", run_id),
            steps=50,
            max_loss_diff=0.002 if passed else 0.031,
            max_grad_norm_rel_diff=0.01 if passed else 0.2,
            max_activation_rel_diff=0.004 if passed else 0.05,
            checkpoint_bytes_equal=passed,
            passed=passed,
            reasons="[]" if passed else '["loss divergence 0.031 > 0.01"]',
            validated_at=end - timedelta(minutes=1),
        )
    sim.add(
        "migrations",
        migration_id=_id("migration", run_id),
        job=job.name,
        trigger=trigger,
        from_location=src.location,
        to_location=dst.location,
        started_at=start,
        ended_at=end,
        status=status,
        downtime_s=(end - start).total_seconds(),
        bytes_moved=moved,
        egress_usd=egress,
        expected_savings_usd=expected,
        run_id=run_id,
    )


def _quotes(sim: _Sim, until: datetime) -> None:
    at = FIXTURE_START - _QUOTE_EVERY
    while at <= until:
        snapshot = _id("snapshot", at)
        for loc in FIXTURE_LOCATIONS:
            spot = spot_price(loc, at, sim.seed)
            for market, price in (("spot", spot), ("on_demand", loc.on_demand_usd_hour)):
                for zone, bump in (("a", 0.0), ("b", 0.03)):
                    p = round(price * (1 + bump), 4)
                    sim.add(
                        "price_quotes",
                        snapshot_id=snapshot,
                        polled_at=at,
                        provider=loc.provider,
                        region=loc.region,
                        zone=f"{loc.region}-{zone}",
                        instance_type=loc.instance_type,
                        gpu_model=_GPU_MODEL,
                        gpu_count=_GPU_COUNT,
                        market=market,
                        price_usd_hour=p,
                        effective_gpu_hour_usd=effective_gpu_hour_usd(p, _GPU_COUNT, 400.0, 16.0),
                        net_gbps=400.0,
                        storage_gbps=16.0,
                        topology_score=9.0,
                        observed_at=at,
                        source="synthetic",
                    )
        at += _QUOTE_EVERY


def _inference(sim: _Sim) -> None:
    # two serving regions, 48 hourly windows; reserved capacity in one, spot in the other
    for location, market, usd_hour, slo_ms in (
        ("gcp/us-central1", "reserved", 2 * 18.5, 250.0),
        ("aws/us-east-1", "spot", 2 * 13.8, 250.0),
    ):
        for h in range(48):
            start = FIXTURE_START + timedelta(days=1, hours=h)
            requests = int(40_000 + 30_000 * _unit(f"req:{location}:{h}"))
            p99 = 180 + 110 * _unit(f"p99:{location}:{h}")
            over = p99 > slo_ms
            sim.add(
                "inference_usage",
                window_start=start,
                window_end=start + timedelta(hours=1),
                location=location,
                market=market,
                requests=requests,
                tokens=requests * 620,
                slo_ms=slo_ms,
                p99_ms=round(p99, 1),
                slo_violations=int(requests * 0.012) if over else int(requests * 0.0005),
                usd=usd_hour,
                usd_per_violation=0.002,
            )


def _scaling(sim: _Sim) -> None:
    """The autoscaler's decisions over the serving windows, made by the real decision function on
    the fixture market (one endpoint, users in us-east, demand of the inference windows)."""
    from datetime import UTC

    from spotshift.serving.autoscale import decide_scaling
    from spotshift.serving.scaling_types import LocationQuote, ReplicaState, ScalingInputs
    from spotshift.serving.slo import ServingProfile

    demand_by_hour: dict[datetime, float] = {}
    for w in sim.rows.get("inference_usage", []):
        demand_by_hour[w["window_start"]] = demand_by_hour.get(w["window_start"], 0.0) + w["tokens"] / 3600.0
    profile = ServingProfile(capacity_tokens_s=2400.0)
    memory = None
    replicas: list[ReplicaState] = []
    for at in sorted(demand_by_hour):
        tokens_s = demand_by_hour[at]
        quotes = [
            LocationQuote(loc.location, loc.on_demand_usd_hour, spot_price(loc, at, sim.seed))
            for loc in FIXTURE_LOCATIONS
        ]
        decision = decide_scaling(
            ScalingInputs(
                endpoint="chat",
                now=at.replace(tzinfo=UTC),
                profile=profile,
                demand_tokens_s={"us-east": tokens_s},
                forecast_tokens_s={"us-east": tokens_s * 1.05},
                replicas=replicas,
                quotes=quotes,
                snapshot_id=f"fixture-{sim.seed}-{_quote_time(at).isoformat()}",
            ),
            memory,
        )
        memory = decision.memory
        replicas = [
            ReplicaState(f"{loc}:{market}:{i}", loc, market, "ready")
            for loc, market, n in decision.planned
            for i in range(n)
        ]
        sim.add("scaling_decisions", **decision.to_row())


def generate_facts(
    seed: int = 7, jobs: tuple[FixtureJob, ...] = FIXTURE_JOBS
) -> dict[str, list[dict[str, Any]]]:
    """Rows for every raw table (keys are table names of ``RAW_TABLES``), deterministic for ``seed``."""
    sim = _Sim(seed)
    for job in jobs:
        _simulate_job(sim, job)
    last = max(r["ended_at"] for r in sim.rows["compute_usage"])
    _quotes(sim, last + timedelta(days=1))
    _inference(sim)
    _scaling(sim)
    _baselines(sim)
    _budget_and_invoice(sim)
    _cutover_and_pool(sim)
    _compatibility(sim)
    return sim.rows


CUTOVER_T0 = datetime(2024, 5, 2, 0, 0, tzinfo=UTC)


def cutover_rows(t0: datetime = CUTOVER_T0) -> list[dict[str, Any]]:
    """raw.cutovers rows as the cutover library writes them: endpoint chat promoted to aws/us-east-1
    (live 25 % for 1 h, then 100 %), endpoint chat2 rolled back at live-25 by a 4x slower target."""
    from spotshift.serving import cutover as co

    def window(tgt_ms: float) -> Any:
        w = co.Window(0.0, 1.0)
        for i in range(40):
            w.source.add(50.0 + i % 3, True, 100, 0.35)  # source: 0.35 USD per million tokens
            w.target.add(tgt_ms + i % 3, True, 100, 0.21)  # target: 0.21
        w.mirrored = w.agreed = 10
        return w

    rows: list[dict[str, Any]] = []
    for endpoint, tgt_ms in (("chat", 50.0), ("chat2", 200.0)):
        st = co.start_state(
            endpoint,
            to_location="aws/us-east-1",
            market="spot",
            model="",
            source_locations=["gcp/us-central1"],
            shadow=(),
            live=co.parse_stages("25:1h,100:0", "live", "--stages"),
            thresholds=co.Thresholds(),
            interval_s=60.0,
            plan_usd_per_mtok=0.21,
            source_usd_per_mtok=0.35,
            steady_replicas=4,
            source_floor=1,
            failback_s=7 * 86400.0,
            now=t0,
        )
        st = co.decide(st, window(tgt_ms), t0 + timedelta(minutes=1))
        st = co.decide(st, window(tgt_ms), t0 + timedelta(hours=1, minutes=1))
        rows += [{**r, "cutover_id": f"co-fixture-{endpoint}"} for r in st.stage_rows]  # deterministic ids
    return rows


def _cutover_and_pool(sim: _Sim) -> None:
    """Two endpoint cutovers, one promoted and one rolled back (``raw.cutovers``,
    :func:`cutover_rows`), and a private pool's burst of one job and its return
    (``raw.pool_events``, dated after the fixture's last interval)."""
    last = max(u["ended_at"] for u in sim.rows["compute_usage"])
    for row in cutover_rows():
        sim.add("cutovers", **row)
    job = sim.rows["compute_usage"][0]["job"]
    common = {"pool": "dgx", "job": job, "gpus": None, "hours": None, "cost_usd": None}
    sim.add(
        "pool_events", event_id="dgx:0", location="onprem/lab", event_at=last, event="submitted",
        **{**common, "gpus": 8}, wait_hours=None, cost_pool_usd=None, cost_cloud_usd=None,
        egress_usd=None, reason=None, run_key=None,
    )  # fmt: skip
    sim.add(
        "pool_events", event_id="dgx:1", location="aws/us-east-1", event_at=last + timedelta(hours=1),
        event="burst", **common, wait_hours=1.0, cost_pool_usd=180.0, cost_cloud_usd=150.0,
        egress_usd=4.0, reason="queue wait breaks the deadline", run_key=f"{job}:onprem/lab->aws/us-east-1:pool-dgx@1",
    )  # fmt: skip
    sim.add(
        "pool_events", event_id="dgx:2", location="onprem/lab", event_at=last + timedelta(hours=10),
        event="repatriated", **{**common, "hours": 9.0, "cost_usd": 180.0}, wait_hours=None,
        cost_pool_usd=40.0, cost_cloud_usd=60.0, egress_usd=2.0, reason="the pool has room",
        run_key=f"{job}:aws/us-east-1->onprem/lab:pool-dgx@2",
    )  # fmt: skip


def _compatibility(sim: _Sim) -> None:
    """``raw.checkpoint_compatibility``: one probe proven (local CPU runtime -> a declared CUDA image)
    and one known bad (the CUDA image -> an older torch), as the move lifecycle records them."""
    last = max(u["ended_at"] for u in sim.rows["compute_usage"])
    job = sim.rows["compute_usage"][0]["job"]
    cpu = compat.Runtime("2.13.0+cpu", "3.11", declared_by="checkpoint")
    cuda = compat.Runtime(
        "2.13.0", "3.11", "12.4", "2.21.5", declared_by="gcp", image="pytorch:2.13-cuda12.4"
    )
    old = compat.Runtime("2.9.1", "3.10", "12.1", "2.18.1", declared_by="azure", image="pytorch:2.9-cuda12.1")
    probes = (
        ("probe-1", cpu, cuda, "aws/us-east-1", "gcp/us-central1", compat.PROVEN, "probation matched the shadow"),
        ("probe-2", cuda, old, "gcp/us-central1", "azure/eastus", compat.KNOWN_BAD, "probation failed: no load"),
    )  # fmt: skip
    probing = "unproven pair: the probation probes it"
    moves = [m for p in probes for m in ((*p[:5], compat.PROBING, probing), p)]
    for i, (run, src, tgt, src_loc, tgt_loc, verdict, reason) in enumerate(moves):
        sim.rows.setdefault("checkpoint_compatibility", []).append(
            compat.compat_fact(
                run_id=_id("run", run), job=job, checkpoint_id=f"s{1000 * (i // 2 + 1):010d}-{_id('ck', run)[:16]}",
                source_location=src_loc, target_location=tgt_loc, source=src, target=tgt, verdict=verdict,
                reason=reason, recorded_at=last + timedelta(hours=2 + i), devices="cpu", dtypes="float32,int64",
            )
        )  # fmt: skip


def _budget_and_invoice(sim: _Sim) -> None:
    """A soft budget alert of the fixture's team and one reconciliation against an invoice that
    bills every interval 1 % above spotshift's estimate (``raw.budget_alerts``, ``raw.reconciliations``)."""
    usage = sorted(sim.rows.get("compute_usage", []), key=lambda u: (u["started_at"], u["usage_id"]))
    estimated = sum(u["usd"] for u in usage)
    hours = sum((u["ended_at"] - u["started_at"]).total_seconds() / 3600 for u in usage)
    last = max(u["ended_at"] for u in usage)
    sim.add(
        "budget_alerts",
        team="ml",
        month=last.strftime("%Y-%m"),
        level="alert",
        raised_at=last,
        spent_usd=estimated,
        threshold_usd=0.8 * estimated * 1.1,
        monthly_usd=estimated * 1.1,
    )
    billed = estimated * 1.01
    sim.add(
        "reconciliations",
        reconcile_id=_id("reconcile", "fixture"),
        reconciled_at=last + timedelta(days=2),
        export_file="fixture-invoice.csv",
        export_sha256=_id("invoice", "fixture"),
        billed_rows=len(usage) + 3,
        matched_rows=len(usage),
        unmatched_billed_rows=3,
        unmatched_estimate_rows=0,
        billed_usd=billed,
        estimated_usd=estimated,
        matched_hours=hours,
        error_usd_per_hour=(estimated - billed) / hours if hours else None,
        mean_abs_error_pct=100 * (billed - estimated) / billed if billed else None,
        within_goal_share=1.0,
        detail="{}",
    )


def _baselines(sim: _Sim) -> None:
    """A simulated stay-on-first-spot row per job that ran on spot (``raw.job_baselines``), as
    :mod:`spotshift.costs.baselines` writes it: each preemption the job met at its first location
    adds a tenth to the never-preempted cost (a fixture's figure, not a simulation)."""
    usage = sorted(sim.rows.get("compute_usage", []), key=lambda u: (u["started_at"], u["usage_id"]))
    first: dict[str, dict[str, Any]] = {}
    for u in usage:
        if u["market"] == "spot":
            first.setdefault(u["job"], u)
    for job, u in sorted(first.items()):
        location = f"{u['provider']}/{u['region']}"
        hit = sum(1 for p in sim.rows.get("preemptions", []) if p["job"] == job and p["location"] == location)
        bound = sum(x["usd"] for x in usage if x["job"] == job)
        factor = 1.0 + 0.1 * hit
        sim.add(
            "job_baselines",
            job=job,
            baseline="stay_first_spot",
            location=location,
            instance_type=u["instance_type"],
            availability=f"fixture trace {location.replace('/', '_')}.json",
            inputs_digest=_id("baseline", job),
            computed_at=u["started_at"],
            work_hours=sum(
                (x["ended_at"] - x["started_at"]).total_seconds() / 3600 for x in usage if x["job"] == job
            ),
            deadline_hours=None,
            preemptions=hit,
            on_demand_hours=0.0,
            compute_usd=bound * factor,
            bound_compute_usd=bound,
            preemption_factor=factor,
            deadline_met=True,
        )


def write_facts(con: Any, facts: Mapping[str, list[Mapping[str, Any]]]) -> dict[str, int]:
    """Append ``facts`` (table name -> rows) to schema ``raw`` of an open connection; returns row counts."""
    ensure_schema(con)
    return {table: append_rows(con, f"raw.{table}", rows) for table, rows in facts.items()}


def write_fixture_warehouse(path: str | Path, seed: int = 7) -> dict[str, int]:
    """Create (or extend) the DuckDB warehouse at ``path`` with :func:`generate_facts` rows."""
    with connect(path) as con:
        return write_facts(con, generate_facts(seed))


def write_scaled_usage(
    con: Any, usage_rows: int, *, jobs: int = 2000, seed: int = 11, start_row: int = 0
) -> dict[str, int]:
    """Write ``usage_rows`` compute intervals (and proportional checkpoints, preemptions, transfers,
    migrations and 6-hourly quotes) for ``jobs`` jobs, generated inside DuckDB: the benchmark's input.

    Each job runs consecutive 0.5-3 h intervals over the four fixture locations; 85 % are spot, a
    third of those end in a preemption; every second interval commits a checkpoint halfway through.
    ``start_row`` > 0 writes a later batch (the benchmark's "next day"): ids continue from it, each
    job's intervals start after its last one in the warehouse, quotes after the last poll.
    Returns the row count of each table afterwards.
    """
    ensure_schema(con)
    per_job = max(1, usage_rows // jobs)
    locs = ", ".join(
        f"({i}, '{loc.provider}', '{loc.region}', '{loc.instance_type}', {loc.on_demand_usd_hour}, {loc.spot_ratio})"
        for i, loc in enumerate(FIXTURE_LOCATIONS)
    )
    n_locs = len(FIXTURE_LOCATIONS)
    start = FIXTURE_START.isoformat(sep=" ")
    con.execute("SET preserve_insertion_order = false")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _scaled AS
        WITH locs(idx, provider, region, instance_type, od, ratio) AS (VALUES {locs}),
        offsets AS (
            -- a later batch: each job continues 10 minutes after its last interval
            SELECT cast(substr(job, 5) AS bigint) AS job_no, max(ended_at) + INTERVAL 10 MINUTE AS after
            FROM raw.compute_usage
            WHERE {start_row} > 0 AND job LIKE 'job-%'
            GROUP BY job
        ),
        base AS (
            SELECT
                n + {start_row} AS i,
                n // {per_job} AS job_no,
                n % {per_job} AS k,
                (hash(n + {start_row}, {seed}) % 1000000) / 1e6 AS u1,
                (hash(n + {start_row}, {seed} + 1) % 1000000) / 1e6 AS u2,
                (hash(n + {start_row}, {seed} + 2) % 1000000) / 1e6 AS u3
            FROM range({per_job * jobs}) t(n)
        ),
        timed AS (
            SELECT
                *,
                0.5 + 2.5 * u1 AS hours,
                coalesce(o.after, timestamp '{start}' + to_seconds(cast(job_no * 97 AS bigint) * 60))
                + to_microseconds(cast(3.6e9 * (sum(0.5 + 2.5 * u1) OVER (PARTITION BY job_no ORDER BY k)
                                   - (0.5 + 2.5 * u1)) AS bigint)) AS started_at,
                (job_no + k // 7) % {n_locs} AS loc_idx
            FROM base
            LEFT JOIN offsets o USING (job_no)
        )
        SELECT
            t.*,
            t.started_at + to_microseconds(cast(t.hours * 3.6e9 AS bigint)) AS ended_at,
            l.provider, l.region, l.instance_type, l.od,
            CASE WHEN t.u2 < 0.85 THEN 'spot' ELSE 'on_demand' END AS market,
            CASE WHEN t.u2 < 0.85 THEN l.od * l.ratio * (0.8 + 0.4 * t.u3) ELSE l.od END AS price
        FROM timed t JOIN locs l ON l.idx = t.loc_idx
    """)
    con.execute(f"""
        INSERT INTO raw.compute_usage
        SELECT
            'u' || i, 'job-' || job_no, provider, region, instance_type, '{_GPU_MODEL}', market,
            started_at, ended_at, {_GPU_COUNT}, price, od, price * hours,
            market = 'spot' AND u2 < 0.28, cast(hours * 1000 AS bigint), cast(hours * 1000 AS bigint) * 500000,
            'run-' || job_no
        FROM _scaled
    """)
    con.execute(f"""
        INSERT INTO raw.checkpoints
        SELECT
            'c' || i, 'job-' || job_no, k * 1000, k * 1000 * 500000, 'periodic',
            provider || '/' || region, NULL, {int(140e9)},
            started_at + to_microseconds(cast(hours * 1.8e9 AS bigint)), 5.0, 0.4, 112.0, 117.4
        FROM _scaled WHERE k % 2 = 0
    """)
    con.execute("""
        INSERT INTO raw.preemptions
        SELECT
            'n' || i, 'job-' || job_no, provider || '/' || region, 'sigterm',
            ended_at - INTERVAL 30 SECOND, ended_at, NULL, ended_at + INTERVAL 6 MINUTE, 390.0, k * 1000,
            NULL, NULL
        FROM _scaled WHERE market = 'spot' AND u2 < 0.28
    """)
    con.execute("""
        INSERT INTO raw.transfers
        SELECT
            't' || i, 'checkpoint', 'job-' || job_no, 'tensor_delta',
            provider || '/' || region, 'gcp/us-central1', ended_at, 30.0,
            140000000000, cast(3e10 * (0.5 + u3) AS bigint), 140000000000, 16000, 4000,
            cast(3.2e10 * (0.5 + u3) AS bigint), 0.02, 0.64 * (0.5 + u3), 32.0 / 30.0, 'r' || i, 'run-' || job_no
        FROM _scaled WHERE k % 7 = 6
    """)
    con.execute("""
        INSERT INTO raw.migrations
        SELECT
            'm' || i, 'job-' || job_no, 'price', provider || '/' || region, 'gcp/us-central1',
            ended_at, ended_at + INTERVAL 10 MINUTE, 'cut_over', 600.0, cast(3.2e10 * (0.5 + u3) AS bigint),
            0.64 * (0.5 + u3), 50.0, 'mig-' || i
        FROM _scaled WHERE k % 49 = 48
    """)
    bounds = first_row(con, "SELECT min(started_at), max(ended_at) FROM _scaled")
    last_poll = first_row(con, "SELECT max(polled_at) FROM raw.price_quotes")[0] if start_row else None
    quotes = []
    at = last_poll + _QUOTE_EVERY if last_poll else _quote_time(bounds[0]) - _QUOTE_EVERY
    sim = _Sim(seed)
    while at <= bounds[1]:
        for loc in FIXTURE_LOCATIONS:
            for market, price in (("spot", spot_price(loc, at, seed)), ("on_demand", loc.on_demand_usd_hour)):
                quotes.append(
                    {
                        "snapshot_id": _id("snapshot", at),
                        "polled_at": at,
                        "provider": loc.provider,
                        "region": loc.region,
                        "zone": "",
                        "instance_type": loc.instance_type,
                        "gpu_model": _GPU_MODEL,
                        "gpu_count": _GPU_COUNT,
                        "market": market,
                        "price_usd_hour": price,
                        "observed_at": at,
                        "source": "synthetic",
                    }
                )
        at += _QUOTE_EVERY
    sim.rows["price_quotes"] = quotes
    counts = write_facts(con, sim.rows)
    con.execute("DROP TABLE _scaled")
    for table in ("compute_usage", "checkpoints", "preemptions", "transfers", "migrations"):
        counts[table] = first_row(con, f"SELECT count(*) FROM raw.{table}")[0]
    return counts
