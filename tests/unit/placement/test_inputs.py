"""Decision inputs assembled from the warehouse and the placement state, and recorded decisions."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spotshift import registry, warehouse
from spotshift.errors import NotFoundError
from spotshift.jobs import add_job
from spotshift.placement import state
from spotshift.placement.batch import decide_all
from spotshift.placement.inputs import assemble_inputs, decide_for_job, record_decision
from tests.unit.placement.builders import make_job, make_quote

GB = 10**9
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
CENTRAL, EAST = "gcp/us-central1", "gcp/us-east1"


def quote_row(q, snapshot: str, polled_at: datetime) -> dict:
    return {**q.to_dict(), "snapshot_id": snapshot, "polled_at": polled_at, "observed_at": q.observed_at}


def seed_warehouse(con) -> None:
    old = [make_quote(CENTRAL, 20.0), make_quote(EAST, 20.0)]
    new = [make_quote(CENTRAL, 10.0), make_quote(EAST, 6.0), make_quote(CENTRAL, 30.0, market="on_demand")]
    warehouse.append_rows(
        con, "main.gpu_quotes", [quote_row(q, "snap-old", NOW - timedelta(hours=1)) for q in old]
    )
    warehouse.append_rows(
        con, "main.gpu_quotes", [quote_row(q, "snap-new", NOW - timedelta(minutes=1)) for q in new]
    )
    warehouse.append_rows(
        con,
        "raw.checkpoints",
        [
            {
                "checkpoint_id": "c1",
                "job": "llm-ft",
                "step": 1000,
                "location": EAST,
                "bytes": 40 * GB,
                "created_at": NOW - timedelta(hours=5),
            },
            {
                "checkpoint_id": "c2",
                "job": "llm-ft",
                "step": 4000,
                "location": CENTRAL,
                "bytes": 50 * GB,
                "created_at": NOW - timedelta(minutes=30),
            },
        ],
    )
    warehouse.append_rows(
        con,
        "raw.transfers",
        [
            # dataset v1 went central -> east, then v2 was fingerprinted and synced central -> europe
            {"transfer_id": "t1", "kind": "dataset", "entity": "corpus", "src_location": CENTRAL, "dst_location": EAST, "root": "r1", "bytes_full": 90 * GB, "bytes_changed": 90 * GB, "started_at": NOW - timedelta(days=2)},
            {"transfer_id": "t2", "kind": "dataset", "entity": "corpus", "src_location": CENTRAL, "dst_location": "gcp/europe-west4", "root": "r2", "bytes_full": 100 * GB, "bytes_changed": 20 * GB, "started_at": NOW - timedelta(days=1)},
            # an older checkpoint went to east with a tensor delta that sent 30 % of it
            {"transfer_id": "t3", "kind": "checkpoint", "entity": "llm-ft", "method": "tensor_delta", "src_location": CENTRAL, "dst_location": EAST, "root": "c1", "bytes_full": 40 * GB, "bytes_sent": 12 * GB, "started_at": NOW - timedelta(hours=4)},
        ],
    )  # fmt: skip
    warehouse.append_rows(
        con,
        "raw.preemptions",
        [
            {"notice_id": "n1", "job": "llm-ft", "location": EAST, "noticed_at": NOW - timedelta(minutes=20)},
            {"notice_id": "n2", "job": "llm-ft", "location": EAST, "noticed_at": NOW - timedelta(days=3), "recovered_at": NOW - timedelta(days=3) + timedelta(hours=1)},
        ],
    )  # fmt: skip
    warehouse.append_rows(
        con,
        "raw.compute_usage",
        [{"usage_id": "u1", "job": "llm-ft", "provider": "gcp", "region": "us-east1", "market": "spot", "started_at": NOW - timedelta(days=4), "ended_at": NOW - timedelta(days=3)}],
    )  # fmt: skip


@pytest.fixture
def wh(spotshift_home: Path):
    job = make_job(
        total_steps=10_000,
        work_hours=100.0,
        submitted_at=(NOW - timedelta(hours=10)).isoformat(),
        deadline_hours=300.0,
    )
    registry.upsert("datasets", {"name": "corpus", "location": CENTRAL})
    add_job(job)
    state.record_placement(
        "llm-ft",
        location=CENTRAL,
        market="spot",
        instance_type="a2-highgpu-8g",
        now=NOW - timedelta(hours=2),
        price_usd_hour=10.0,
    )
    with warehouse.connect() as con:
        seed_warehouse(con)
        yield con


def test_inputs_come_from_warehouse_and_state(wh) -> None:
    inp = assemble_inputs(wh, "llm-ft", now=NOW)
    assert inp.snapshot_id == "snap-new" and len(inp.quotes) == 3
    assert inp.current is not None and inp.current.location == CENTRAL and inp.current_running
    # last checkpoint at step 4000 of 10000 (60 h left), written 30 min ago while running
    assert inp.checkpoint_age_hours == pytest.approx(0.5)
    assert inp.remaining_hours == pytest.approx(60.0 - 0.5)
    f = inp.footprint
    assert f.dataset_bytes == 100 * GB and f.checkpoint_bytes == 50 * GB
    assert f.dataset_present[CENTRAL] == 100 * GB and f.dataset_present["gcp/europe-west4"] == 100 * GB
    assert f.dataset_present[EAST] == 80 * GB  # stale v1 replica: all but the 20 GB that changed
    assert f.checkpoint_present[CENTRAL] == 50 * GB
    assert f.checkpoint_present[EAST] == pytest.approx(35 * GB)  # older checkpoint: deltas resend 30 %
    assert inp.no_spot == {
        EAST: f"no spot capacity (preempted) at {(NOW - timedelta(minutes=20)).isoformat()}"
    }
    # replayed on 10-minute ticks: the 24 h run plus the tick before the unexplained fresh notice
    assert inp.risks[EAST].observed_preemptions == 2
    assert inp.risks[EAST].observed_hours == pytest.approx(24.0, abs=2 / 6)
    assert inp.risks[CENTRAL].observed_preemptions == 0


def test_decide_for_job_and_record_once(wh) -> None:
    d = decide_for_job(wh, "llm-ft", now=NOW)
    # us-east1 spot is far cheaper but was preempted 20 minutes ago: stay
    assert d.action == "stay" and d.snapshot_id == "snap-new"
    assert record_decision(wh, d) is True
    assert record_decision(wh, d) is False  # same decision id: idempotent
    row = wh.execute("select action, current_location, reasons from raw.decisions").fetchall()
    assert len(row) == 1 and row[0][0] == "stay" and row[0][1] == CENTRAL
    assert json.loads(row[0][2]) == list(d.reasons)
    n, chosen = wh.execute(
        "select count(*), count(*) filter (where chosen) from main.placement_candidates where decision_id = ?",
        [d.decision_id],
    ).fetchone()
    assert (n, chosen) == (3, 1)
    # three hours later the outage has passed and moving pays
    later = decide_for_job(wh, "llm-ft", now=NOW + timedelta(hours=3))
    assert later.action == "move" and later.target_location == EAST
    assert later.run_key() == "llm-ft:gcp/us-central1->gcp/us-east1:snap-new"


def test_no_snapshot_is_a_clear_error(spotshift_home: Path) -> None:
    registry.upsert("datasets", {"name": "corpus", "location": CENTRAL})
    add_job(make_job())
    with warehouse.connect() as con, pytest.raises(NotFoundError, match="run `spotshift quotes poll` first"):
        assemble_inputs(con, "llm-ft", now=NOW)
    # a poll happened but its snapshot failed the checks: say so, not "poll first"
    with warehouse.connect() as con:
        con.execute(
            "INSERT INTO raw.price_quotes (snapshot_id, polled_at) VALUES ('q-stale', TIMESTAMP '2025-03-01')"
        )
        with pytest.raises(NotFoundError, match="q-stale .* failed its quality checks"):
            assemble_inputs(con, "llm-ft", now=NOW)


def test_unpriced_usage_is_priced_at_ingest_from_the_quote_in_force(wh, tmp_path: Path) -> None:
    from spotshift.facts import FactLog, ingest_facts

    wh.close()
    base = {"job": "llm-ft", "provider": "gcp", "region": "us-east1", "steps": 50, "run_id": "cli:train"}
    log = FactLog(tmp_path)
    for usage_id, start in (
        ("after-snap-new", NOW),  # snap-new (spot 6.0 in us-east1) is in force
        ("during-snap-old", NOW - timedelta(minutes=30)),  # snap-old (spot 20.0) was in force
        ("before-any-poll", NOW - timedelta(hours=5)),  # nothing was in force: stays unpriced
    ):
        log.append(
            "raw.compute_usage",
            {**base, "usage_id": usage_id, "started_at": start.isoformat(), "ended_at": (start + timedelta(minutes=1)).isoformat()},
        )  # fmt: skip
    log.append("raw.compute_usage", {**base, "usage_id": "elsewhere", "region": "nowhere-1", "started_at": NOW.isoformat(), "ended_at": NOW.isoformat()})  # fmt: skip
    assert ingest_facts(tmp_path) == {"raw.compute_usage": 4}
    with warehouse.connect() as con:
        rows = {
            r[0]: r[1:]
            for r in con.execute(
                "SELECT usage_id, instance_type, market, price_usd_hour, usd FROM raw.compute_usage "
                "WHERE run_id = 'cli:train'"
            ).fetchall()
        }
    hours_per_step = 100.0 / 10_000
    assert rows["after-snap-new"] == ("a2-highgpu-8g", "spot", 6.0, pytest.approx(6.0 * 50 * hours_per_step))
    assert rows["during-snap-old"] == (
        "a2-highgpu-8g",
        "spot",
        20.0,
        pytest.approx(20.0 * 50 * hours_per_step),
    )
    assert rows["before-any-poll"] == (None, None, None, None)
    assert rows["elsewhere"] == (None, None, None, None)


WEST = "gcp/us-west1"


def _seed_history(con, *, together: bool) -> None:
    """Ten days of spot runs in east, central and west; five east notices, each followed by a
    central one — 10 minutes later (``together``) or 12 hours later — five west notices 6 hours after
    east's, and a fresh east notice."""
    start = NOW - timedelta(days=10)
    usage = [
        {
            "usage_id": f"u-{loc}",
            "job": "other",
            "provider": loc.split("/")[0],
            "region": loc.split("/")[1],
            "market": "spot",
            "started_at": start,
            "ended_at": NOW,
        }  # fmt: skip
        for loc in (EAST, CENTRAL, WEST)
    ]
    warehouse.append_rows(con, "raw.compute_usage", usage)
    notices = []
    for k in range(5):
        t = start + timedelta(days=1 + 1.5 * k)
        follow = t + (timedelta(minutes=10) if together else timedelta(hours=12))
        notices.append({"notice_id": f"e{k}", "job": "other", "location": EAST, "noticed_at": t, "recovered_at": t + timedelta(minutes=30)})  # fmt: skip
        notices.append({"notice_id": f"c{k}", "job": "other", "location": CENTRAL, "noticed_at": follow, "recovered_at": follow + timedelta(minutes=30)})  # fmt: skip
        west = t + timedelta(hours=6)  # as often as central, never near east
        notices.append({"notice_id": f"w{k}", "job": "other", "location": WEST, "noticed_at": west, "recovered_at": west + timedelta(minutes=30)})  # fmt: skip
    notices.append({"notice_id": "e-now", "job": "other", "location": EAST, "noticed_at": NOW - timedelta(minutes=5)})  # fmt: skip
    warehouse.append_rows(con, "raw.preemptions", notices)
    quotes = [make_quote(CENTRAL, 9.9), make_quote(WEST, 10.0), make_quote(CENTRAL, 30.0, market="on_demand")]
    warehouse.append_rows(
        con, "main.gpu_quotes", [quote_row(q, "snap", NOW - timedelta(minutes=1)) for q in quotes]
    )


@pytest.mark.parametrize("together", [True, False])
def test_sensor_decision_uses_learned_co_interruptions(spotshift_home: Path, together: bool) -> None:
    """The same notice counts per location, only their timing differs: when central has always
    followed east within minutes, east's fresh notice predicts central's interruption and the new job
    goes to west; when they were independent, central (cheaper) wins."""
    registry.upsert("datasets", {"name": "corpus", "location": CENTRAL})
    add_job(
        make_job(work_hours=10.0, submitted_at=(NOW - timedelta(hours=1)).isoformat(), deadline_hours=40.0)
    )
    with warehouse.connect() as con:
        _seed_history(con, together=together)
        inp = assemble_inputs(con, "llm-ft", now=NOW)
        d = decide_for_job(con, "llm-ft", now=NOW)
        # the sensor's batched tick decides the same
        (batched,) = decide_all(con, ["llm-ft"], now=NOW).decisions
    assert (batched.action, batched.target_location) == (d.action, d.target_location)
    c, e = inp.risks[CENTRAL], inp.risks[EAST]
    assert (c.observed_preemptions, e.observed_preemptions, inp.risks[WEST].observed_preemptions) == (5, 6, 5)
    if together:
        assert c.near_term_preemptions > 0.1 and c.near_term_hours == pytest.approx(1.0)
        assert d.action == "place" and d.target_location == WEST
    else:
        assert c.near_term_preemptions == 0.0
        assert d.action == "place" and d.target_location == CENTRAL
