"""The checkpoint benchmark runs end to end at small sizes and reports every figure the README quotes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_bench_checkpoint_quick() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_checkpoint.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads((REPO / "bench" / "results" / "checkpoint_quick.json").read_text())
    assert doc["machine"]["cores"] and doc["quick"] is True
    for row in doc["emergency_checkpoint"]:
        assert row["latency_s"] > 0 and set(row["share"]) >= {"serialize", "encrypt", "write", "upload"}
    for variant in ("full_finetune", "top_block_finetune", "lora_finetune"):
        d = doc["delta"][variant]
        assert d["method"] == "tensor_delta" and 0 < d["delta_ratio"] < 1 and d["cdc_reuse_stored"] == 0.0
    assert doc["delta"]["lora_finetune"]["delta_ratio"] < doc["delta"]["full_finetune"]["delta_ratio"]
    assert doc["encryption"]["encrypt_gbps"] > 0
    v = doc["verification"]
    assert (
        v["unverified_s"] > 0
        and v["verify_first_vs_unverified"] > 0
        and v["verify_alongside_vs_unverified"] > 0
    )
