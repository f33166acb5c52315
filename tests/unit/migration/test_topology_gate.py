"""A move's probation checks the target's GPU topology first: a fragmented target (two 4-GPU islands
joined by SYS) is refused like a failed shadow check and the move rolls back; the measured score is
kept and the next decision no longer offers that target."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from spotshift import warehouse
from spotshift.cli import main
from spotshift.clock import load_clock, virtual_now
from spotshift.placement.inputs import decide_for_job
from spotshift.placement.state import load_state
from spotshift.placement.topology import PROBE_ENV, measured_scores
from spotshift.training.backend import open_backend
from tests.migration_support import (
    AWS,
    AWS2,
    AZURE,
    JOB,
    START,
    declare_world,
    live_trainers,
    stop_all,
    wait_for_checkpoint,
    write_quotes,
)

FIXTURES = Path(__file__).parent.parent / "placement" / "fixtures" / "topology"


@pytest.fixture
def world(spotshift_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    # the probe answers per target: Azure's node is two PCIe islands, every other one a DGX A100
    script = spotshift_home / "probe.py"
    script.write_text(
        "import sys\n"
        f"name = 'two_4gpu_islands_sys.txt' if sys.argv[1] == {AZURE!r} else 'dgx_a100_nvswitch.txt'\n"
        f"sys.stdout.write(open({str(FIXTURES)!r} + '/' + name).read())\n"
    )
    monkeypatch.setenv(PROBE_ENV, f"{sys.executable} {script} {{location}} {{instance_type}}")
    declare_world(spotshift_home)
    backend = open_backend("local")
    try:
        yield backend
    finally:
        stop_all(backend)


def _move(*argv: str) -> tuple[int, dict[str, Any]]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["move", JOB, *argv, "--json"])
    return code, (json.loads(out.getvalue()) if out.getvalue().strip() else {})


@pytest.mark.slow
def test_fragmented_target_is_refused_before_the_move(world: Any) -> None:
    code, placed = _move("--to", AWS)
    assert code == 0 and placed["status"] == "cut_over", placed
    wait_for_checkpoint(step=20)
    # Azure becomes the cheapest: the catalog calls its 8x A100 node NVLink (score >= 7)
    load_clock().advance(7 * 24 * 3600).save()
    write_quotes("snap-2", START + timedelta(days=7), {AWS: 10.0, AWS2: 12.0, AZURE: 4.0})
    code, moved = _move("--to", AZURE, "--shadow-steps", "6")
    assert code == 1 and moved["status"] == "rolled_back", moved
    assert "topology check of tiny in azure/eastus failed" in moved["error"]
    assert "measured topology score 4 < min_topology_score 7" in moved["error"]
    assert "validate_shadow" not in moved["steps"]  # refused before any step ran in the target
    (live,) = live_trainers(world)
    assert live.location == AWS and load_state(JOB).location == AWS
    assert measured_scores()[(AZURE, "p4d.24xlarge")] == 4.0
    # the measurement overrides the catalog: the next decision does not offer Azure at all
    with warehouse.connect() as con:
        decision = decide_for_job(con, JOB, now=virtual_now())
    azure = [c for c in decision.candidates if c.location == AZURE]
    assert azure and all(any("topology score 4 < 7" in r for r in c.rejected) for c in azure)
    # a healthy target passes the same check and the move goes through
    code, ok = _move("--to", AWS2, "--shadow-steps", "6")
    assert code == 0 and ok["status"] == "cut_over", ok
    assert measured_scores()[(AWS2, "p4d.24xlarge")] == 9.0
