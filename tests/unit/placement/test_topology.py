"""GPU topology verification: recorded ``nvidia-smi topo -m`` outputs of real machines scored, measured
scores kept and preferred over the catalog's, the CLI, and a gloo all-reduce on CPU."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from spotshift.cli import main
from spotshift.errors import InputError
from spotshift.placement import topology as topo
from spotshift.pricing.catalog import load_catalog
from tests.unit.placement.builders import make_quote

FIXTURES = Path(__file__).parent / "fixtures" / "topology"


def _fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    ("name", "gpus", "score", "worst", "islands"),
    [
        ("dgx_a100_nvswitch.txt", 8, 9.0, "NV12", 1),
        ("dgx_h100_nvswitch.txt", 8, 9.0, "NV18", 1),
        ("hgx_h100_4gpu_nv6.txt", 4, 8.0, "NV6", 1),
        ("two_4gpu_islands_sys.txt", 8, 4.0, "SYS", 8),
    ],
)
def test_recorded_machines_score_as_documented(
    name: str, gpus: int, score: float, worst: str, islands: int
) -> None:
    m = topo.parse_topo_matrix(_fixture(name))
    s = topo.score_topology(m)
    assert (s.gpus, s.score, s.worst_link, len(s.nvlink_islands)) == (gpus, score, worst, islands)
    # a fully connected NVSwitch node scores what the catalog documents for an 8-GPU NVLink node
    if name.startswith("dgx_a100"):
        assert s.fully_connected and s.min_nvlinks == 12
        p4d = load_catalog().get("aws", "p4d.24xlarge")
        assert p4d is not None and s.score == p4d.topology_score - 1  # catalog adds +1 for 400 Gbit/s EFA


def test_islands_named_and_training_refused() -> None:
    s = topo.score_topology(topo.parse_topo_matrix(_fixture("two_4gpu_islands_sys.txt")))
    assert "4+4" in s.reason and "SYS" in s.reason
    assert s.score < 7  # DESIGN §3: training needs >= 7


def _matrix(n: int, link: Any) -> str:
    head = "\t" + "\t".join(f"GPU{i}" for i in range(n)) + "\tCPU Affinity"
    rows = [
        f"GPU{i}\t" + "\t".join(" X " if i == j else link(i, j) for j in range(n)) + "\t0-7" for i in range(n)
    ]
    return "\n".join([head, *rows]) + "\n"


def test_nvlink_islands_and_cube_mesh() -> None:
    # two 4-GPU NVLink boards bridged by the socket interconnect: fragmented
    islands = topo.score_topology(
        topo.parse_topo_matrix(_matrix(8, lambda i, j: "NV6" if i // 4 == j // 4 else "SYS"))
    )
    assert islands.score == 5.0 and [len(i) for i in islands.nvlink_islands] == [4, 4]
    assert "fragmented" in islands.reason
    bridged = topo.score_topology(
        topo.parse_topo_matrix(_matrix(8, lambda i, j: "NV6" if i // 4 == j // 4 else "NODE"))
    )
    assert bridged.score == 6.0
    # DGX-1 style hybrid cube mesh: one NVLink domain, some pairs only through other GPUs
    mesh = topo.score_topology(
        topo.parse_topo_matrix(
            _matrix(8, lambda i, j: "NV1" if (i // 4 == j // 4 or i % 4 == j % 4) else "SYS")
        )
    )
    assert mesh.score == 8.0 and not mesh.fully_connected and len(mesh.nvlink_islands) == 1
    single = topo.score_topology(topo.parse_topo_matrix(_matrix(1, lambda i, j: "")))
    assert single.score == 3.0


def test_space_separated_paste_and_old_soc_spelling() -> None:
    tabbed = _fixture("two_4gpu_islands_sys.txt")
    spaced = tabbed.replace("\t", "    ").replace("SYS", "SOC")
    assert topo.parse_topo_matrix(spaced) == topo.parse_topo_matrix(tabbed)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("hello\n", "no header line"),
        ("\tGPU0\tGPU1\nGPU0\t X \tNV4\n", "no row for GPU1"),
        ("\tGPU0\tGPU1\nGPU0\t X \tNV4\nGPU1\tPIX\t X \n", "not symmetric"),
        ("\tGPU0\tGPU1\nGPU0\t X \tQPI\nGPU1\tQPI\t X \n", "unknown link 'QPI'"),
        ("\tGPU0\tGPU1\nGPU0\t X\nGPU1\tNV4\t X \n", "has 1 cells"),
    ],
)
def test_bad_matrices_are_refused_with_one_line(text: str, problem: str) -> None:
    with pytest.raises(InputError, match=problem) as exc:
        topo.parse_topo_matrix(text, what="t.txt")
    assert str(exc.value).startswith("t.txt") and "\n" not in str(exc.value)


def test_measured_scores_override_the_catalog(spotshift_home: Path) -> None:
    q = make_quote("azure/eastus", 10.0, instance_type="p4d.24xlarge")
    other = make_quote("aws/us-east-1", 10.0, instance_type="p4d.24xlarge")
    assert q.topology_score >= 7
    scored = topo.score_topology(topo.parse_topo_matrix(_fixture("two_4gpu_islands_sys.txt")))
    topo.record_measurement("azure/eastus", "p4d.24xlarge", scored, source="test")
    after = topo.apply_measured([q, other])
    assert after[0].topology_score == 4.0 and after[1].topology_score == other.topology_score
    # placement reads quotes through it: the fragmented target is rejected, the other is not
    from spotshift.jobs import TrainingJob
    from spotshift.placement.inputs import load_quotes
    from spotshift.placement.scoring import DataFootprint, score_candidates
    from tests.migration_support import write_quotes

    write_quotes("snap-t", datetime(2025, 3, 3, tzinfo=UTC), {"azure/eastus": 10.0, "aws/us-east-1": 10.0})
    from spotshift import warehouse

    with warehouse.connect() as con:
        quotes = load_quotes(con, "snap-t")
    job = TrainingJob(
        name="t", dataset="d", total_steps=10, work_hours=1.0, gpu_count=8, min_topology_score=7.0
    )
    cands = score_candidates(job, quotes, DataFootprint(0, 0, {}, {}))
    why = {c.location: c.rejected for c in cands}
    assert "topology score 4 < 7" in why["azure/eastus"] and not why["aws/us-east-1"]
    # a newer measurement replaces the older one, atomically, in one file
    good = topo.score_topology(topo.parse_topo_matrix(_fixture("dgx_a100_nvswitch.txt")))
    topo.record_measurement("azure/eastus", "p4d.24xlarge", good)
    assert topo.measured_scores() == {("azure/eastus", "p4d.24xlarge"): 9.0}


def test_probe_target_runs_the_probe_command_and_keeps_the_score(
    spotshift_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fixture = FIXTURES / "two_4gpu_islands_sys.txt"
    monkeypatch.setenv(
        topo.PROBE_ENV,
        f'{sys.executable} -c "import sys; sys.stdout.write(open(sys.argv[1]).read())" {fixture}',
    )
    check = topo.probe_target("gcp/us-central1", "a2-highgpu-8g", 7.0)
    assert not check.passed and "measured topology score 4 < min_topology_score 7" in check.description
    assert topo.measured_scores()[("gcp/us-central1", "a2-highgpu-8g")] == 4.0
    # a failing probe is one line naming the command and its status, never its output
    monkeypatch.setenv(topo.PROBE_ENV, f"{sys.executable} -c \"import sys; print('SECRET'); sys.exit(3)\"")
    with pytest.raises(InputError) as exc:
        topo.probe_target("gcp/us-central1", "a2-highgpu-8g", 7.0)
    assert "exit status 3" in str(exc.value) and "SECRET" not in str(exc.value)
    # nothing to probe (no template, no nvidia-smi): the catalog's score stands
    monkeypatch.delenv(topo.PROBE_ENV)
    monkeypatch.setenv("PATH", str(spotshift_home))
    assert topo.probe_target("gcp/us-central1", "a2-highgpu-8g", 7.0).measured is None


def test_cli_score_record_list_check(spotshift_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = str(FIXTURES / "dgx_h100_nvswitch.txt")
    code, out, _ = _cli("topology", "score", f, "--json")
    assert code == 0 and json.loads(out)["score"] == 9.0
    code, out, _ = _cli(
        "topology", "score", f, "--record", "--location", "aws/us-east-1", "--instance-type", "p5.48xlarge"
    )
    assert code == 0 and "kept for aws/us-east-1 p5.48xlarge (catalog: 10.0)" in out
    code, out, _ = _cli("topology", "list", "--json")
    (row,) = json.loads(out)["measurements"]
    assert row["measured_score"] == 9.0 and row["catalog_score"] == 10.0
    # bad input: one line, exit 2
    code, _, err = _cli("topology", "score", f, "--record")
    assert code == 2 and "--location and --instance-type" in err
    code, _, err = _cli("topology", "score", str(spotshift_home / "missing.txt"))
    assert code == 2 and "no such file" in err and len(err.strip().splitlines()) == 1
    code, _, err = _cli("topology", "check", "--location", "mars/olympus", "--instance-type", "x")
    assert code == 2 and "unknown provider" in err
    # check: exit 1 when the probed target is below the minimum
    islands = FIXTURES / "two_4gpu_islands_sys.txt"
    monkeypatch.setenv(
        topo.PROBE_ENV,
        f'{sys.executable} -c "import sys; sys.stdout.write(open(sys.argv[1]).read())" {islands}',
    )
    code, out, _ = _cli(
        "topology", "check", "--location", "azure/eastus", "--instance-type", "Standard_ND96asr_v4"
    )
    assert code == 1 and out.startswith("refused:")


def test_bus_bandwidth_formula() -> None:
    from spotshift.placement.allreduce import bus_bandwidth_gbps

    # 1 GB all-reduced in 100 ms: algbw 80 Gbit/s; seed 000's (2 * 1e9 * 8) / 0.1 s = 160 Gbit/s is 2 x algbw
    alg, bus = bus_bandwidth_gbps(1_000_000_000, 0.1, 2)
    assert alg == pytest.approx(80.0) and bus == pytest.approx(80.0)
    alg8, bus8 = bus_bandwidth_gbps(1_000_000_000, 0.1, 8)
    assert bus8 == pytest.approx(80.0 * 2 * 7 / 8)


@pytest.mark.slow
def test_gloo_allreduce_on_cpu_measures_and_checks_the_sum() -> None:
    from spotshift.placement.allreduce import measure_allreduce

    res = measure_allreduce(2, 1 << 20, iterations=3, warmup=1, backend="gloo")
    assert res.backend == "gloo" and res.world_size == 2 and res.size_bytes == 1 << 20
    assert res.median_s > 0 and res.busbw_gbps == pytest.approx(res.algbw_gbps)  # n = 2: busbw = algbw
    assert (
        res.expected_gbps is None and res.meets_expectation is None
    )  # the seed's 150 Gbps is for NCCL on 8 GPUs
