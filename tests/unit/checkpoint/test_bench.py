"""The checkpoint and delta benchmarks run end to end at small sizes and report every figure the README quotes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def run_quick(name: str) -> dict:
    """Run ``bench/bench_<name>.py --quick`` and return its ``bench/results/<name>_quick.json``."""
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / f"bench_{name}.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads((REPO / "bench" / "results" / f"{name}_quick.json").read_text())
    assert doc["machine"]["cores"] and doc["quick"] is True
    return doc


@pytest.mark.slow
def test_bench_checkpoint_quick() -> None:
    doc = run_quick("checkpoint")
    for row in doc["emergency_checkpoint"]:
        assert row["latency_s"] > 0 and set(row["share"]) >= {"serialize", "encrypt", "write", "upload"}
    assert doc["encryption"]["encrypt_gbps"] > 0
    v = doc["verification"]
    assert (
        v["unverified_s"] > 0
        and v["verify_first_vs_unverified"] > 0
        and v["verify_alongside_vs_unverified"] > 0
    )


@pytest.mark.slow
def test_bench_delta_quick() -> None:
    """Both codecs on the same checkpoint pairs; every figure the README's delta table quotes."""
    doc = run_quick("delta")
    for variant in ("full_finetune", "top_block_finetune", "lora_finetune"):
        d = doc[variant]
        assert d["method"] == "tensor_delta" and 0 < d["delta_ratio"] < 1 and d["cdc_reuse_stored"] == 0.0
        c = d["codecs"]
        assert c["v2"]["delta_sent_bytes"] == d["bytes_sent"]  # what migrate shipped is format 2
        for fmt in ("v1", "v2"):
            assert 0 < c[fmt]["ratio"] < 1 and c[fmt]["encode_mb_s"] > 0 and c[fmt]["decode_mb_s"] > 0
    assert doc["lora_finetune"]["delta_ratio"] < doc["full_finetune"]["delta_ratio"]
    fams = doc["full_finetune"]["families"]
    assert {"weights", "exp_avg", "exp_avg_sq"} <= set(fams)
    for fam in ("exp_avg", "exp_avg_sq"):
        assert 0 < fams[fam]["low_planes_h0_ratio"] < 1 and 0 < fams[fam]["mantissa_lzma_ratio"] <= 1.01
    fl = doc["full_finetune"]["floor"]  # the context-model floor the README quotes
    assert 0 < fl["overall_ratio"] < 1
    for fam in ("weights", "exp_avg", "exp_avg_sq"):
        assert 0 < fl[fam]["floor_ratio"] <= fl[fam]["ratio_if_exponent_free"] + 0.2 and fl[fam]["best"]
    big = doc["large_tensors"]
    assert big["v1"]["encode_mb_s"] > 0 and big["v2"]["decode_mb_s"] > 0 and 0 < big["v2"]["ratio"] < 1


@pytest.mark.slow
def test_bench_emergency_quick() -> None:
    doc = run_quick("emergency")
    over = doc["step_done_overhead"]
    assert over["per_call_us_median"] > 0 and over["share_of_100ms_step_pct"] > 0
    for row in doc["sizes"]:
        assert (
            row["streaming"]["p95_s"] > 0
            and row["sequential_baseline"]["p50_s"] > 0
            and row["speedup_p50"] > 0
        )
