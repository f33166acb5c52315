"""The fixture generator writes realistic, deterministic facts for every raw table."""

from __future__ import annotations

from spotshift.warehouse import connect, first_row
from spotshift.warehouse_schema import RAW_TABLES
from tests.fixtures_costs import FIXTURE_START, generate_facts, write_scaled_usage


def test_generate_facts_covers_every_raw_table_and_is_deterministic() -> None:
    facts = generate_facts(seed=7)
    assert set(facts) == set(RAW_TABLES)
    assert generate_facts(seed=7) == facts
    assert generate_facts(seed=8)["compute_usage"] != facts["compute_usage"]


def test_fixture_has_the_situations_the_marts_must_handle() -> None:
    facts = generate_facts(seed=7)
    usage = facts["compute_usage"]
    assert any(u["ended_in_preemption"] for u in usage)
    assert any(u["market"] == "on_demand" for u in usage)
    assert {u["provider"] for u in usage} >= {"aws", "gcp"}
    # intervals cross a month boundary (FOCUS billing periods)
    assert {u["started_at"].month for u in usage} == {3, 4}
    assert any(t["transfer_amplification"] > 3.0 for t in facts["transfers"])
    assert any(t["method"] in ("cdc_delta", "tensor_delta") for t in facts["transfers"])
    assert {m["trigger"] for m in facts["migrations"]} == {"price", "preemption"}
    assert any(m["status"] == "rolled_back" for m in facts["migrations"])
    assert any(not v["passed"] for v in facts["shadow_validations"])
    assert {c["kind"] for c in facts["checkpoints"]} == {"periodic", "emergency", "final"}
    assert all(p["recovered_at"] > p["noticed_at"] for p in facts["preemptions"])
    assert facts["inference_usage"] and all(w["tokens"] > 0 for w in facts["inference_usage"])
    # every interval is costed at its price and lies after the fixture start
    for u in usage:
        hours = (u["ended_at"] - u["started_at"]).total_seconds() / 3600
        assert abs(u["usd"] - u["price_usd_hour"] * hours) < 1e-6  # timestamps keep microseconds
        assert u["started_at"] >= FIXTURE_START


def test_scaled_usage_writes_the_requested_rows(tmp_path) -> None:
    with connect(tmp_path / "w.duckdb") as con:
        counts = write_scaled_usage(con, 20_000, jobs=20)
        assert counts["compute_usage"] == 20_000
        assert counts["checkpoints"] == 10_000
        bad = first_row(
            con,
            "SELECT count(*) FROM raw.compute_usage WHERE ended_at <= started_at OR usd < 0 OR job IS NULL",
        )[0]
        overlaps = first_row(
            con,
            """SELECT count(*) FROM (SELECT started_at, lag(ended_at) OVER (PARTITION BY job ORDER BY started_at) AS prev
               FROM raw.compute_usage) WHERE started_at < prev""",
        )[0]
    assert bad == 0 and overlaps == 0
