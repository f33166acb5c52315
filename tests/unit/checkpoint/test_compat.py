"""The compatibility matrix's logic: runtimes per location, the matrix from facts, the pair verdicts."""

from __future__ import annotations

import contextlib
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spotshift import registry, warehouse
from spotshift.checkpoint import compat
from spotshift.cli import main
from spotshift.errors import ConfigError

T0 = datetime(2025, 3, 3, tzinfo=UTC)
CPU = compat.Runtime("2.13.0+cpu", "3.11", declared_by="checkpoint")
CUDA = compat.Runtime("2.13.0", "3.11", "12.4", "2.21.5", declared_by="gcp")
OLD = compat.Runtime("2.9.1", "3.10", "12.1", "2.18.1", declared_by="azure")


def _fact(src: compat.Runtime, tgt: compat.Runtime, verdict: str, run: str, hours: float) -> dict:
    return compat.compat_fact(
        run_id=run,
        job="tiny",
        checkpoint_id="s0000000010-abc",
        source_location="aws/us-east-1",
        target_location="gcp/us-central1",
        source=src,
        target=tgt,
        verdict=verdict,
        reason=f"{verdict} by {run}",
        recorded_at=T0 + timedelta(hours=hours),
    )


def _matrix(*facts: dict) -> dict:
    warehouse.record_facts({compat.TABLE: list(facts)})
    with warehouse.connect() as con:
        return compat.load_matrix(con)


def test_runtime_key_ignores_the_python_patch_and_names_missing_versions() -> None:
    a = compat.Runtime.from_versions({"torch": "2.13.0", "python": "3.11.9"}, declared_by="x")
    b = compat.Runtime.from_versions({"torch": "2.13.0", "python": "3.11.2", "cuda": ""}, declared_by="y")
    assert a.key == b.key == "torch=2.13.0 python=3.11 cuda=none nccl=none"
    assert CUDA.key == "torch=2.13.0 python=3.11 cuda=12.4 nccl=2.21.5"
    with pytest.raises(ConfigError, match="runtime gcp: torch version missing"):
        compat.Runtime.from_versions({"python": "3.11"}, declared_by="gcp")


def test_a_location_runs_its_regions_then_its_providers_declaration_else_the_local_runtime(
    spotshift_home: Path,
) -> None:
    assert compat.runtime_for("gcp/us-central1") == compat.local_runtime()
    registry.upsert(compat.SECTION, {"name": "gcp", "torch": "2.13.0", "python": "3.11", "cuda": "12.4"})
    registry.upsert(
        compat.SECTION, {"name": "gcp/europe-west4", "torch": "2.12.1", "python": "3.12", "image": "img:1"}
    )
    assert compat.runtime_for("gcp/us-central1").key == "torch=2.13.0 python=3.11 cuda=12.4 nccl=none"
    eu = compat.runtime_for("gcp/europe-west4/europe-west4-a")
    assert (eu.torch, eu.declared_by, eu.image) == ("2.12.1", "gcp/europe-west4", "img:1")
    assert compat.runtime_for("aws/us-east-1").declared_by == "local"
    registry.upsert(compat.SECTION, {"name": "azure", "torch": "2.13.0", "python": "3.11", "cudnn": "9"})
    with pytest.raises(ConfigError, match=r"runtime azure: unknown field\(s\) cudnn"):
        compat.declared_runtimes()


def test_a_checkpoint_without_versions_takes_its_source_locations_runtime() -> None:
    assert compat.checkpoint_runtime({"versions": {}}, CUDA) == CUDA
    ck = compat.checkpoint_runtime({"versions": {"torch": "2.13.0+cpu", "python": "3.11.4"}}, CUDA)
    assert ck.key == CPU.key and ck.declared_by == "checkpoint"


def test_pair_verdicts_same_unproven_proven_known_bad(spotshift_home: Path) -> None:
    empty = _matrix()
    assert compat.verdict(empty, CPU, CPU).verdict == compat.SAME
    unproven = compat.verdict(empty, CPU, CUDA)
    assert unproven.verdict == compat.UNPROVEN and unproven.allowed
    m = _matrix(
        _fact(CPU, CUDA, compat.PROBING, "r1", 0),
        _fact(CPU, CUDA, compat.PROVEN, "r1", 1),
        _fact(CUDA, OLD, compat.PROBING, "r2", 2),
        _fact(CUDA, OLD, compat.KNOWN_BAD, "r2", 3),
    )
    assert set(m) == {(CPU.key, CUDA.key), (CUDA.key, OLD.key)}  # a probe alone decides nothing
    proven = compat.verdict(m, CPU, CUDA)
    assert proven.verdict == compat.PROVEN and proven.allowed and "r1" in proven.reason
    bad = compat.verdict(m, CUDA, OLD)
    assert bad.verdict == compat.KNOWN_BAD and not bad.allowed
    assert "failed to resume" in bad.reason and "known_bad by r2" in bad.reason
    # pairs are directed: the reverse direction is still unproven
    assert compat.verdict(m, OLD, CUDA).verdict == compat.UNPROVEN


def test_the_newest_verdict_of_a_pair_wins_and_a_tie_goes_to_known_bad(spotshift_home: Path) -> None:
    m = _matrix(_fact(CPU, CUDA, compat.KNOWN_BAD, "r1", 0), _fact(CPU, CUDA, compat.PROVEN, "r2", 5))
    entry = m[(CPU.key, CUDA.key)]
    assert (entry.verdict, entry.run_id, entry.evidence) == (compat.PROVEN, "r2", 2)
    m = _matrix(_fact(CPU, CUDA, compat.KNOWN_BAD, "r3", 5))
    assert m[(CPU.key, CUDA.key)].verdict == compat.KNOWN_BAD


def test_a_fact_verdict_must_be_one_of_the_three(spotshift_home: Path) -> None:
    with pytest.raises(ConfigError, match="compatibility verdict 'maybe'"):
        _fact(CPU, CUDA, "maybe", "r", 0)


def test_ckpt_compat_shows_the_matrix_and_the_runtimes(spotshift_home: Path) -> None:
    registry.upsert(compat.SECTION, {"name": "gcp", "torch": "2.13.0", "python": "3.11", "cuda": "12.4"})
    _matrix(_fact(CPU, CUDA, compat.PROVEN, "r1", 1), _fact(CUDA, OLD, compat.KNOWN_BAD, "r2", 3))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["ckpt", "compat", "--json"]) == 0
    view = json.loads(out.getvalue())
    assert (view["proven"], view["known_bad"]) == (1, 1)
    assert view["declared"]["gcp"]["cuda"] == "12.4" and view["local"]["declared_by"] == "local"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["ckpt", "compat"]) == 0
    text = out.getvalue()
    assert "runtime of gcp: torch=2.13.0 python=3.11 cuda=12.4 nccl=none" in text
    assert f"known_bad {CUDA.key}  ->  {OLD.key}" in text
