"""The batched sensor tick at scale (issue 17 item 5): :func:`spotshift.migration.plan.tick`.

* on ~300 jobs under team budgets, the batched tick (one read of the declarations and states,
  vectorised shortlist, the team cap) decides what the per-job path
  (:func:`spotshift.placement.inputs.decide_for_job`, which applies the cap) decides, on a first
  tick and on a second one where some jobs' inputs changed and the others are skipped; when the
  cap picks the cheapest candidate instead of the best-ranked one, the shortlist holds it;
* a job is skipped while its inputs are unchanged and re-decided as soon as one of them changes:
  the prices of its candidate quotes, its placement state, its declaration; a job with a deadline
  every tick, any job at least every 15 minutes of virtual time.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

from spotshift import registry, warehouse
from spotshift.budgets import Budget, set_budget, team_tally
from spotshift.jobs import TrainingJob, import_jobs, load_jobs
from spotshift.migration.plan import tick
from spotshift.placement import state
from spotshift.placement.batch import decide_all
from spotshift.placement.inputs import decide_for_job
from tests.unit.placement.builders import make_job, make_quote
from tests.unit.placement.test_batch import GB, GPUS, LOCATIONS, NOW, _same


class Alive:
    """Every trainer alive (running jobs are decided for), none stopping, no facts to collect."""

    def __init__(self, workdir: Path):
        self.info = SimpleNamespace(alive=True, workdir=str(workdir))

    def status(self, name: str) -> SimpleNamespace:
        return self.info

    def stopping(self, name: str) -> bool:
        return False


def _quotes(rng: random.Random, n: int, *, l4_factor: float = 1.0) -> list:
    # anchors first (a GPU no job asks for): the first quote of each location and the first spot
    # quote, which every decision may read, stay the same when the L4 prices change
    out = [make_quote(loc, 5.0, gpu_model="V100", gpu_count=2, instance_type="anchor") for loc in LOCATIONS]
    for i in range(n):
        model, _ = rng.choice(GPUS)
        count = rng.choice([1, 8])
        price = round(rng.uniform(0.5, 40.0), 2) * (l4_factor if model == "L4" else 1.0)
        out.append(
            make_quote(
                rng.choice(LOCATIONS), price, market=rng.choice(["spot", "spot", "on_demand"]),
                instance_type=f"it-{model}-{count}-{i % 7}", gpu_model=model, gpu_count=count,
                topology_score=rng.choice([5.0, 9.0]), zone=rng.choice(["", "a", "b"]),
            )
        )  # fmt: skip
    return out


def _snapshot(con, quotes: list, snapshot_id: str, polled_at: datetime) -> None:
    rows = [
        {**q.to_dict(), "snapshot_id": snapshot_id, "polled_at": polled_at, "observed_at": q.observed_at}
        for q in quotes
    ]
    warehouse.append_rows(con, "main.gpu_quotes", rows)


def _fleet(rng: random.Random, quotes: list, n_jobs: int) -> list:
    registry.upsert("datasets", {"name": "corpus", "location": LOCATIONS[0]})
    # tight caps: the team's running jobs commit most of them, so new spend is gated
    set_budget(Budget(name="team-a", monthly_usd=1_500_000.0))
    set_budget(Budget(name="team-b", monthly_usd=9_000.0))
    jobs = []
    for i in range(n_jobs):
        model, wanted = rng.choice(GPUS)
        jobs.append(
            make_job(
                name=f"job-{i}", gpu_model=wanted, gpu_count=rng.choice([1, 8]),
                min_topology_score=rng.choice([0.0, 7.0]), spot_allowed=rng.random() > 0.15,
                max_usd_per_hour=rng.choice([None, None, 20.0]),
                allowed_locations=rng.choice([["*"], ["gcp/*", "aws/*"], ["azure/*"]]),
                work_hours=100.0, deadline_hours=rng.choice([None, None, None, 130.0]),
                submitted_at=(NOW - timedelta(hours=rng.choice([0, 10, 30]))).isoformat(),
                team=rng.choice([None, "team-a", "team-b", "team-b"]),
            )
        )  # fmt: skip
    import_jobs(jobs)
    checkpoints = []
    for i, job in enumerate(jobs):
        fits = [q for q in quotes if q.gpu_count == job.gpu_count and q.gpu_model.startswith(job.gpu_model)]
        if fits and rng.random() < 0.6:
            q = rng.choice(fits)
            state.record_placement(
                job.name, location=q.location, market=q.market, instance_type=q.instance_type,
                zone=q.zone, price_usd_hour=q.price_usd_hour, now=NOW - timedelta(hours=3),
            )  # fmt: skip
            loc = rng.choice(LOCATIONS)
            checkpoints.append({"checkpoint_id": f"c-{i}", "job": job.name, "step": rng.randrange(100, 9000), "location": loc, "bytes": 30 * GB, "created_at": NOW - timedelta(minutes=40)})  # fmt: skip
    with warehouse.connect() as con:
        warehouse.append_rows(con, "raw.checkpoints", checkpoints)
    return jobs


def _check_same(con, decisions: list, now: datetime) -> None:
    for d in decisions:
        full = decide_for_job(con, d.job, now=now)
        diff = {k: v for k, v in _same(full, d).items() if v[0] != v[1]}
        assert diff == {}, (d.job, diff, full.reasons, d.reasons)


def test_batched_tick_decides_what_the_per_job_path_decides_under_budgets(
    spotshift_home: Path, tmp_path: Path
) -> None:
    rng = random.Random(7)
    quotes = _quotes(rng, 700)
    with warehouse.connect() as con:
        _snapshot(con, quotes, "s1", NOW - timedelta(minutes=1))
    jobs = _fleet(rng, quotes, 300)
    with warehouse.connect() as con:  # team-a: room for 250 USD of new spend this month
        used = team_tally(con, Budget(name="team-a", monthly_usd=1e12), NOW).total
    set_budget(Budget(name="team-a", monthly_usd=float(used) + 250.0))
    backend = Alive(tmp_path / "no-trainer")
    with warehouse.connect() as con:
        first = tick(con, backend, now=NOW)
        assert first.skipped == 0 and len(first.decisions) == 300
        _check_same(con, first.decisions, NOW)
        gated = [d for d in first.decisions if any(r.startswith("budget:") for r in d.reasons)]
        assert len(gated) >= 5, len(gated)  # the caps were exercised
        instead = [d for d in gated if any("within the limit instead" in r for r in d.reasons)]
        assert instead, "no decision took the cheapest candidate within a limit"
        assert {"team-a", "team-b"} <= set(first.budget_statuses)
        # change some inputs: L4 prices (a new snapshot), states, declarations
        later = NOW + timedelta(minutes=5)
        rng2 = random.Random(7)
        _snapshot(con, _quotes(rng2, 700, l4_factor=0.5), "s2", later - timedelta(minutes=1))
    moved = [j.name for j in jobs[:300:10]]
    for name in moved:
        state.record_placement(name, location=LOCATIONS[3], market="on_demand", instance_type="x", price_usd_hour=3.0, now=later)  # fmt: skip
    redeclared = jobs[5:300:25]
    import_jobs(
        [TrainingJob.from_dict({**j.to_dict(), "max_usd_per_hour": 33.0}) for j in redeclared], replace=True
    )
    previous = {j: (dg, NOW.timestamp()) for j, dg in first.digests.items()}
    with warehouse.connect() as con:
        second = tick(con, backend, now=later, previous=previous)
        _check_same(con, second.decisions, later)
    decided = {d.job for d in second.decisions}
    declared = {j.name: j for j in load_jobs()}
    l4 = {n for n, j in declared.items() if j.gpu_model == "L4"}
    # a moved job changes its team's running commitments: every member's budget input changes
    teams = {declared[n].team for n in moved} - {None}
    deadline = {n for n, j in declared.items() if j.deadline_hours}
    must = (
        l4
        | set(moved)
        | {j.name for j in redeclared}
        | deadline
        | {n for n, j in declared.items() if j.team in teams}
    )
    assert decided == must, sorted(must ^ decided)[:10]
    assert second.skipped == 300 - len(decided) and second.skipped >= 20, second.skipped


def test_a_job_is_skipped_until_an_input_of_its_decision_changes(
    spotshift_home: Path, tmp_path: Path
) -> None:
    rng = random.Random(11)
    quotes = _quotes(rng, 300)
    with warehouse.connect() as con:
        _snapshot(con, quotes, "s1", NOW - timedelta(minutes=1))
    registry.upsert("datasets", {"name": "corpus", "location": LOCATIONS[0]})
    names = ["a100", "l4", "placed", "redeclared", "deadline"]
    import_jobs(
        [
            make_job(name="a100", gpu_model="A100", min_topology_score=0.0),
            make_job(name="l4", gpu_model="L4", gpu_count=1, min_topology_score=0.0),
            make_job(name="placed", gpu_model="H100", min_topology_score=0.0),
            make_job(name="redeclared", gpu_model="H100", min_topology_score=0.0),
            make_job(name="deadline", gpu_model="H100", min_topology_score=0.0, deadline_hours=400.0, submitted_at=NOW.isoformat()),
        ]
    )  # fmt: skip
    backend = Alive(tmp_path / "no-trainer")

    def run(at: datetime, previous: dict) -> tuple[list[str], dict]:
        with warehouse.connect() as con:
            r = tick(con, backend, now=at, previous=previous)
        return sorted(d.job for d in r.decisions), {j: (dg, at.timestamp()) for j, dg in r.digests.items()}

    decided, prev = run(NOW, {})
    assert decided == sorted(names)
    t = NOW + timedelta(minutes=1)
    decided, _ = run(t, prev)
    assert decided == ["deadline"]  # nothing changed: only the deadline-bound job
    # the same quotes in a new snapshot: nothing this job reads changed
    with warehouse.connect() as con:
        _snapshot(con, quotes, "s2", t)
    assert run(t, prev)[0] == ["deadline"]
    # a new snapshot where only the L4 prices moved: only the L4 job is re-decided
    with warehouse.connect() as con:
        _snapshot(con, _quotes(random.Random(11), 300, l4_factor=0.7), "s3", t + timedelta(seconds=1))
    assert run(t, prev)[0] == ["deadline", "l4"]
    state.record_placement("placed", location=LOCATIONS[2], market="on_demand", instance_type="x", price_usd_hour=9.0, now=t)  # fmt: skip
    job = next(j for j in load_jobs() if j.name == "redeclared")
    import_jobs([TrainingJob.from_dict({**job.to_dict(), "work_hours": 150.0})], replace=True)
    assert run(t, prev)[0] == ["deadline", "l4", "placed", "redeclared"]
    # 15 virtual minutes after its last decision every job is re-decided
    assert run(NOW + timedelta(minutes=16), prev)[0] == sorted(names)


def test_the_cap_picks_the_cheapest_quote_even_when_it_ranks_below_the_best(spotshift_home: Path) -> None:
    # the best-ranked quote (fast network) is over the team's limit; the cheaper one, ranked below
    # it by its effective GPU-hour, fits: the batched shortlist must still hold it
    quotes = [
        make_quote("gcp/us-central1", 12.0, market="on_demand", instance_type="fast", net_gbps=400, storage_gbps=16),
        make_quote("gcp/us-central1", 10.0, market="on_demand", instance_type="slow", net_gbps=10, storage_gbps=0.5),
    ]  # fmt: skip
    with warehouse.connect() as con:
        _snapshot(con, quotes, "s1", NOW - timedelta(minutes=1))
    registry.upsert("datasets", {"name": "corpus", "location": LOCATIONS[0]})
    set_budget(Budget(name="team-a", monthly_usd=1_100.0))
    import_jobs([make_job(name="capped", min_topology_score=0.0, work_hours=100.0, team="team-a")])
    with warehouse.connect() as con:
        (batched,) = decide_all(con, ["capped"], now=NOW).decisions
        full = decide_for_job(con, "capped", now=NOW)
    assert full.target.quote.instance_type == "slow", full.reasons
    assert any("within the limit instead" in r for r in full.reasons)
    assert {k: v for k, v in _same(full, batched).items() if v[0] != v[1]} == {}
