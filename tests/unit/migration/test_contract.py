"""The orchestration contract: run keys from external ids, few plain tags, run config the ops read."""

from __future__ import annotations

from pathlib import Path

import pytest

from spotshift.errors import ConfigError
from spotshift.migration import contract
from spotshift.migration.plan import MovePlan
from spotshift.migration.state import MoveState, ShadowOptions, load, save

PLAN = MovePlan(
    job="tiny",
    trigger="price",
    from_location="aws/us-east-1",
    to_location="azure/eastus",
    market="spot",
    instance_type="p4d.24xlarge",
    price_usd_hour=4.0,
    snapshot_id="snap-2",
    run_key=contract.move_run_key("tiny", "aws/us-east-1", "azure/eastus", "snap-2"),
)


def test_run_keys_are_built_from_external_ids() -> None:
    assert PLAN.run_key == "tiny:aws/us-east-1->azure/eastus:snap-2"
    assert contract.move_run_key("tiny", "", "aws/us-east-1", "snap-1") == "tiny:-->aws/us-east-1:snap-1"
    assert contract.placement_run_key("tiny:-->aws/us-east-1:snap-1", 3) == "tiny:-->aws/us-east-1:snap-1:v3"
    assert contract.recovery_run_key("tiny", "aws-123") == "tiny:aws-123"
    assert contract.rollback_run_key("run-1") == "rollback:run-1"


def test_runs_carry_few_plain_tags() -> None:
    tags = PLAN.tags()
    assert tags == {
        "spotshift/job": "tiny",
        "spotshift/trigger": "price",
        "spotshift/from": "aws/us-east-1",
        "spotshift/to": "azure/eastus",
    }
    rollback = contract.rollback_tags({**tags, "dagster/run_key": PLAN.run_key}, "run-1")
    assert rollback == {
        "spotshift/job": "tiny",
        "spotshift/from": "aws/us-east-1",
        "spotshift/to": "azure/eastus",
        "spotshift/trigger": "rollback",
        "spotshift/rolls_back": "run-1",
    }
    for value in [*tags.values(), *rollback.values()]:
        assert "{" not in value  # no JSON blob in a tag


def test_run_config_names_the_ops_config() -> None:
    config = contract.move_run_config(PLAN.to_dict(), shadow_steps=6)["ops"][contract.PLAN_MOVE_OP]["config"]
    assert MovePlan.from_dict({k: v for k, v in config.items() if k != "shadow_steps"}) == PLAN
    recovery = contract.recovery_run_config("tiny", "aws/us-east-1", "n1", step=40)
    assert recovery["ops"][contract.PLAN_RECOVERY_OP]["config"]["notice_id"] == "n1"
    rollback = contract.rollback_run_config("tiny", failed_run_id="r1", reason="x" * 5000)
    assert len(rollback["ops"][contract.ROLL_BACK_OP]["config"]["reason"]) == 1000


def test_move_state_round_trips_through_the_ledger(spotshift_home: Path) -> None:
    state = MoveState(
        PLAN, "run-1", "2025-03-03T01:00:00+00:00", ShadowOptions(shadow_steps=6), bytes_moved=7
    )
    save(state)
    assert load("tiny") == state
    assert load("other") is None
    (spotshift_home / "moves" / "tiny.json").write_text("{not json")
    with pytest.raises(ConfigError, match="move ledger .*tiny.json"):
        load("tiny")


def test_a_step_goes_to_the_queue_of_the_region_of_its_side(spotshift_home: Path) -> None:
    tags = {**PLAN.tags(), "spotshift/to": "azure/eastus"}
    assert contract.step_queue("{source}", "run-1", tags) == "aws/us-east-1"
    assert contract.step_queue("{target}", "run-1", tags) == "azure/eastus"
    assert contract.step_queue("gpu-pool", "run-1", tags) == "gpu-pool"  # a plain queue name stays
    # a recovery names no target in its tags: the plan its plan step recorded does (zone dropped)
    recovery = MovePlan(
        job="tiny", trigger="preemption", from_location="aws/us-east-1", to_location="gcp/us-central1/us-central1-a",
        market="spot", instance_type="a2-highgpu-8g", price_usd_hour=9.0, notice_id="n-1",
    )  # fmt: skip
    save(MoveState(plan=recovery, run_id="run-2", started_at="2025-03-03T00:00:00+00:00"))
    notice = contract.recovery_tags("tiny", "aws/us-east-1", "n-1")
    assert contract.step_queue("{target}", "run-2", notice) == "gcp/us-central1"
    placement = {**PLAN.tags(), "spotshift/from": contract.NONE}
    assert contract.step_queue("{source}", "run-4", placement) == "azure/eastus"  # no source: the target
    with pytest.raises(ConfigError, match="no target location"):  # another run's plan is not this run's
        contract.step_queue("{target}", "run-3", notice)
