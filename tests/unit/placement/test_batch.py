"""Decisions for thousands of jobs per tick (issue 17 item 5): :mod:`spotshift.placement.batch`.

* the batched, vectorised path decides exactly what the per-job path decides over the whole
  snapshot (action, target, best candidate, move terms, slack), for jobs covering every rule:
  deadlines (safety net), caps, allowed locations, on-demand only, running / preempted / new,
  cooldown, unfit locations, preempted spot capacity, checkpoint locality;
* a job whose inputs did not change is skipped, and re-decided once its checkpoint changes;
* ``spotshift jobs import`` declares a list at once (all or none) and ``spotshift placement
  decide-all --json`` prints ``{"jobs", "seconds", "moves"}``.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spotshift import registry, warehouse
from spotshift.cli import main
from spotshift.jobs import add_job, load_jobs
from spotshift.placement import state
from spotshift.placement.batch import decide_all, record_decisions
from spotshift.placement.inputs import decide_for_job
from tests.unit.placement.builders import make_job, make_quote

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
GB = 10**9
LOCATIONS = [
    "gcp/us-central1", "gcp/us-east1", "gcp/europe-west4", "gcp/asia-east1",
    "aws/us-east-1", "aws/us-west-2", "aws/eu-west-1", "aws/ap-northeast-1",
    "azure/eastus", "azure/westus2", "azure/westeurope", "azure/japaneast",
]  # fmt: skip
GPUS = [("A100-40GB", "A100"), ("H100-80GB", "H100"), ("L4", "L4")]


def _seed(con, rng: random.Random, n_quotes: int) -> list:
    quotes = []
    for i in range(n_quotes):
        model, _ = rng.choice(GPUS)
        count = rng.choice([1, 8])
        quotes.append(
            make_quote(
                rng.choice(LOCATIONS),
                round(rng.uniform(0.5, 40.0), 2),
                market=rng.choice(["spot", "spot", "on_demand"]),
                instance_type=f"it-{model}-{count}-{i % 7}",
                gpu_model=model,
                gpu_count=count,
                topology_score=rng.choice([5.0, 9.0]),
                zone=rng.choice(["", "a", "b"]),
            )
        )
    rows = [
        {
            **q.to_dict(),
            "snapshot_id": "snap",
            "polled_at": NOW - timedelta(minutes=1),
            "observed_at": q.observed_at,
        }
        for q in quotes
    ]
    warehouse.append_rows(con, "main.gpu_quotes", rows)
    warehouse.append_rows(
        con,
        "raw.transfers",
        [
            {"transfer_id": "d1", "kind": "dataset", "entity": "corpus", "src_location": LOCATIONS[0], "dst_location": LOCATIONS[4], "root": "r1", "bytes_full": 80 * GB, "bytes_changed": 80 * GB, "started_at": NOW - timedelta(days=2)},
            {"transfer_id": "d2", "kind": "dataset", "entity": "corpus", "src_location": LOCATIONS[0], "dst_location": LOCATIONS[8], "root": "r2", "bytes_full": 100 * GB, "bytes_changed": 20 * GB, "started_at": NOW - timedelta(days=1)},
        ],
    )  # fmt: skip
    warehouse.append_rows(
        con,
        "raw.preemptions",
        [
            {"notice_id": "n1", "job": "x", "location": LOCATIONS[1], "noticed_at": NOW - timedelta(minutes=10)},
            {"notice_id": "n2", "job": "x", "location": LOCATIONS[5], "noticed_at": NOW - timedelta(days=2), "recovered_at": NOW - timedelta(days=2) + timedelta(hours=2)},
        ],
    )  # fmt: skip
    warehouse.append_rows(
        con,
        "raw.compute_usage",
        [{"usage_id": "u1", "job": "x", "provider": "aws", "region": "us-west-2", "market": "spot", "started_at": NOW - timedelta(days=4), "ended_at": NOW - timedelta(days=3)}],
    )  # fmt: skip
    return quotes


def _declare(rng: random.Random, quotes: list, n_jobs: int) -> None:
    registry.upsert("datasets", {"name": "corpus", "location": LOCATIONS[0]})
    checkpoints, moves = [], []
    for i in range(n_jobs):
        model, wanted = rng.choice(GPUS)
        deadline = rng.choice([None, None, 105.0, 130.0, 400.0])
        job = make_job(
            name=f"job-{i}",
            gpu_model=wanted,
            gpu_count=rng.choice([1, 8]),
            min_topology_score=rng.choice([0.0, 7.0]),
            spot_allowed=rng.random() > 0.15,
            max_usd_per_hour=rng.choice([None, None, 20.0]),
            allowed_locations=rng.choice([["*"], ["gcp/*", "aws/*"], ["azure/*"]]),
            work_hours=100.0,
            deadline_hours=deadline,
            submitted_at=(NOW - timedelta(hours=rng.choice([0, 10, 30]))).isoformat(),
        )
        add_job(job)
        fits = [q for q in quotes if q.gpu_count == job.gpu_count and q.gpu_model.startswith(wanted)]
        kind = rng.choice(["new", "running", "running", "preempted", "cooldown"])
        if kind != "new" and fits:
            q = rng.choice(fits)
            state.record_placement(
                job.name, location=q.location, market=q.market, instance_type=q.instance_type,
                zone=q.zone, price_usd_hour=rng.choice([q.price_usd_hour, None]),
                now=NOW - timedelta(hours=3), status="preempted" if kind == "preempted" else "running",
            )  # fmt: skip
            if kind == "cooldown":
                state.mark_unfit(
                    job.name, rng.choice(LOCATIONS), until=NOW + timedelta(hours=2), reason="rolled back",
                    now=NOW - timedelta(hours=1),
                )  # fmt: skip
                state.update_state(
                    job.name,
                    lambda st: setattr(st, "cooldown_until", (NOW + timedelta(hours=1)).isoformat()),
                    now=NOW - timedelta(hours=1),
                )
            if rng.random() < 0.7:
                loc = rng.choice(LOCATIONS)
                checkpoints.append({"checkpoint_id": f"c-{i}", "job": job.name, "step": rng.randrange(100, 9000), "location": loc, "bytes": 30 * GB, "created_at": NOW - timedelta(minutes=40)})  # fmt: skip
                checkpoints.append({"checkpoint_id": f"c0-{i}", "job": job.name, "step": 50, "location": rng.choice(LOCATIONS), "bytes": 30 * GB, "created_at": NOW - timedelta(hours=9)})  # fmt: skip
                moves.append({"transfer_id": f"m-{i}", "kind": "checkpoint", "entity": job.name, "method": "tensor_delta", "src_location": loc, "dst_location": rng.choice(LOCATIONS), "root": rng.choice([f"c-{i}", f"c0-{i}"]), "bytes_full": 30 * GB, "bytes_sent": 9 * GB, "started_at": NOW - timedelta(minutes=30)})  # fmt: skip
    with warehouse.connect() as con:
        warehouse.append_rows(con, "raw.checkpoints", checkpoints)
        warehouse.append_rows(con, "raw.transfers", moves)


def _same(a, b) -> dict:
    def key(c):
        return None if c is None else (c.key, c.quote.zone, round(c.expected_gpu_hour_usd, 12))

    return {
        "action": (a.action, b.action),
        "target": (key(a.target), key(b.target)),
        "best": (key(a.best), key(b.best)),
        "terms": (a.terms.to_dict() if a.terms else None, b.terms.to_dict() if b.terms else None),
        "slack": (a.deadline_slack_hours, b.deadline_slack_hours),
        "remaining": (a.remaining_hours, b.remaining_hours),
        "overhead": (a.overhead_hours, b.overhead_hours),
    }


def test_batched_decisions_equal_the_full_snapshot_decisions(spotshift_home: Path) -> None:
    rng = random.Random(1)
    with warehouse.connect() as con:
        quotes = _seed(con, rng, 800)
    _declare(rng, quotes, 45)
    names = [j.name for j in load_jobs()]
    with warehouse.connect() as con:
        full = {n: decide_for_job(con, n, now=NOW) for n in names}
        batch = decide_all(con, names, now=NOW)
    assert batch.skipped == 0 and len(batch.decisions) == len(names)
    actions = set()
    for d in batch.decisions:
        diff = {k: v for k, v in _same(full[d.job], d).items() if v[0] != v[1]}
        assert diff == {}, (d.job, diff, full[d.job].reasons, d.reasons)
        actions.add(d.action)
        assert len(d.candidates) < len(full[d.job].candidates)  # a shortlist, not the snapshot
    assert {"place", "stay", "move", "queue"} <= actions | {"queue"}, actions  # the rules were exercised
    assert len(actions) >= 3, actions


def test_unchanged_jobs_are_skipped_until_their_inputs_change(spotshift_home: Path) -> None:
    rng = random.Random(3)
    with warehouse.connect() as con:
        quotes = _seed(con, rng, 200)
    registry.upsert("datasets", {"name": "corpus", "location": LOCATIONS[0]})
    for i in range(3):
        add_job(make_job(name=f"j{i}", gpu_model="A100", gpu_count=8, min_topology_score=0.0))
    names = ["j0", "j1", "j2"]
    with warehouse.connect() as con:
        first = decide_all(con, names, now=NOW)
        assert record_decisions(con, first.decisions) == 3
        previous = {n: (first.digests[n], NOW.timestamp()) for n in names}
        again = decide_all(con, names, now=NOW + timedelta(minutes=1), previous=previous)
        assert (len(again.decisions), again.skipped) == (0, 3)
        warehouse.append_rows(
            con,
            "raw.checkpoints",
            [{"checkpoint_id": "new", "job": "j1", "step": 10, "location": LOCATIONS[2], "bytes": GB, "created_at": NOW}],
        )  # fmt: skip
        changed = decide_all(con, names, now=NOW + timedelta(minutes=2), previous=previous)
        assert [d.job for d in changed.decisions] == ["j1"] and changed.skipped == 2
        late = decide_all(con, names, now=NOW + timedelta(hours=1), previous=previous)
        assert len(late.decisions) == 3  # re-checked once the recheck interval passed
    assert quotes


def test_jobs_import_and_decide_all_cli(
    spotshift_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(4)
    with warehouse.connect() as con:
        _seed(con, rng, 300)
    registry.upsert("datasets", {"name": "corpus", "location": LOCATIONS[0]})
    jobs = [
        {"name": f"bulk-{i}", "dataset": "corpus", "total_steps": 1000, "work_hours": 10.0, "gpu_model": "A100", "gpu_count": 8}
        for i in range(40)
    ]  # fmt: skip
    f = tmp_path / "jobs.json"
    f.write_text(json.dumps(jobs))
    assert main(["jobs", "import", str(f), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["imported"] == 40
    assert len(load_jobs()) == 40
    # all or none: one bad item declares nothing, one line, exit 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "- {name: ok-1, dataset: corpus, total_steps: 10, work_hours: 1}\n- {name: Bad!, dataset: corpus}\n"
    )
    assert main(["jobs", "import", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "item 1" in err[0], err
    assert main(["jobs", "import", str(f)]) == 2  # already declared
    assert "already declared" in capsys.readouterr().err
    assert len(load_jobs()) == 40
    assert main(["placement", "decide-all", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["jobs"] == 40 and out["moves"] == 40 and out["seconds"] > 0, out  # 40 new jobs: placed
    with warehouse.connect() as con:
        assert con.execute("SELECT count(*) FROM raw.decisions").fetchone()[0] == 40
