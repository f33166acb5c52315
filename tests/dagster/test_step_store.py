"""The move jobs' step results in a store every worker reaches (issue 17: workers in several regions
need not share ``$DAGSTER_HOME/storage``): a real placement chain of the code location hands its
``MoveState`` from step to step through S3 (moto over HTTP), and a damaged result is refused before
it is unpickled."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.types.dagster_type import resolve_dagster_type

from definitions import defs
from ops.step_store import MAGIC, StepStoreIOManager, move_io_manager, pack, step_key, unpack
from spotshift.cli import main
from spotshift.errors import ConfigError, IntegrityError
from spotshift.migration import contract
from spotshift.migration.plan import MovePlan
from spotshift.migration.state import MoveState
from spotshift.sync.store import LocalChunkStore
from spotshift.sync.store_url import open_store
from spotshift.training.backend import open_backend
from spotshift.workers.settings import STEP_STORE_ENV, load_settings
from tests.migration_support import AWS, JOB, declare_world, live_trainers, stop_all

ANY = resolve_dagster_type(object)
PLACE = MovePlan(
    job=JOB, trigger="place", to_location=AWS, market="spot", instance_type="p4d.24xlarge",
    price_usd_hour=10.0, gpu_model="A100-40GB", gpu_count=8, snapshot_id="snap-1",
    run_key=f"{JOB}:-->{AWS}:snap-1",
)  # fmt: skip


@pytest.mark.slow
def test_a_placement_chain_hands_its_state_through_the_step_store(
    spotshift_home: Path, s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"s3://{s3_env}/steps"
    monkeypatch.setenv(STEP_STORE_ENV, url)
    monkeypatch.setenv("SPOTSHIFT_WAREHOUSE", str(spotshift_home / "warehouse.duckdb"))
    declare_world(spotshift_home)
    backend = open_backend("local")
    try:
        job = defs.resolve_job_def(contract.MIGRATION_JOB)
        result = job.execute_in_process(
            run_config=contract.move_run_config(PLACE.to_dict()),
            instance=dg.DagsterInstance.ephemeral(),
            tags={**PLACE.tags(), "dagster/run_key": PLACE.run_key},
        )
        assert result.success
        (live,) = live_trainers(backend)
        assert live.location == AWS
    finally:
        stop_all(backend)
    store = open_store(url)
    keys = sorted(store.list_keys(f"steps/{result.run_id}/"))
    ran = [e.step_key for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    assert keys == sorted(step_key([result.run_id, s, "result"]) for s in ran) and len(keys) >= 4
    planned = unpack(store.get_bytes(step_key([result.run_id, contract.PLAN_MOVE_OP, "result"])), "t")
    assert isinstance(planned, MoveState) and planned.plan.run_key == PLACE.run_key


def test_a_damaged_step_result_is_refused_before_it_is_unpickled(tmp_path: Path) -> None:
    store = LocalChunkStore(tmp_path / "steps")
    manager = StepStoreIOManager(store)
    out = dg.build_output_context(run_id="r1", step_key="plan_move", name="result", dagster_type=ANY)
    value = {"plan": dataclasses.asdict(PLACE)}
    manager.handle_output(out, value)
    key = step_key(["r1", "plan_move", "result"])
    assert store.get_bytes(key) == pack(value)

    def load() -> object:
        return manager.load_input(dg.build_input_context(upstream_output=out, dagster_type=ANY))

    assert load() == value
    blob = bytearray(store.get_bytes(key))
    blob[-3] ^= 1  # one bit of the pickle
    store.put_bytes(key, bytes(blob))
    with pytest.raises(
        IntegrityError, match=r"^step result steps/r1/plan_move/result in file://.*does not match"
    ):
        load()
    store.put_bytes(key, bytes(blob[: len(MAGIC) + 5]))  # cut short
    with pytest.raises(IntegrityError, match="not a spotshift step result"):
        load()
    store.delete(key)
    with pytest.raises(Exception, match="steps/r1/plan_move/result"):
        load()


def test_the_step_store_setting_is_checked_and_kept_without_credentials(
    spotshift_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv, message in [
        (
            ["home", "init", "--executor", "celery", "--step-store", "s3://KEY:s3cr3t@bkt/steps"],
            "credentials",
        ),
        (["home", "init", "--executor", "celery", "--step-store", "ftp://host/steps"], "use file:///path"),
        (["home", "init", "--step-store", "s3://bkt/steps"], "--step-store needs --executor"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "s3cr3t" not in err and err.count("\n") == 1
    assert main(["home", "init", "--executor", "celery", "--step-store", "gs://bkt/steps"]) == 0
    assert load_settings().step_store == "gs://bkt/steps"
    monkeypatch.setenv(STEP_STORE_ENV, "file:///shared/steps")  # the variable wins over the file
    assert load_settings().step_store == "file:///shared/steps"
    monkeypatch.setenv(STEP_STORE_ENV, "ftp://x/y")
    with pytest.raises(ConfigError, match=rf"^{STEP_STORE_ENV}: step store"):
        load_settings()
    monkeypatch.delenv(STEP_STORE_ENV)
    monkeypatch.setenv("SPOTSHIFT_EXECUTOR", "in_process")
    assert "step results in gs://bkt/steps" in load_settings().describe()
    assert move_io_manager is defs.resources["io_manager"]
