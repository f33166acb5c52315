"""The GPU catalog: coverage of the families users rent, canonical models, topology rules."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from spotshift.errors import InputError
from spotshift.pricing.catalog import (
    CATALOG_COLUMNS,
    GPU_MODELS,
    canonical_gpu_model,
    load_catalog,
    read_catalog,
    topology_score,
)
from spotshift.pricing.quote import effective_gpu_hour_usd

EXPECTED = {
    "aws": [
        "p4d.24xlarge",
        "p4de.24xlarge",
        "p5.48xlarge",
        "p5e.48xlarge",
        *(
            f"{f}.{s}"
            for f in ("g5", "g6", "g6e")
            for s in (
                "xlarge",
                "2xlarge",
                "4xlarge",
                "8xlarge",
                "12xlarge",
                "16xlarge",
                "24xlarge",
                "48xlarge",
            )
        ),
    ],
    "gcp": [
        *(f"a2-highgpu-{n}g" for n in (1, 2, 4, 8)),
        "a2-megagpu-16g",
        *(f"a2-ultragpu-{n}g" for n in (1, 2, 4, 8)),
        *(f"a3-highgpu-{n}g" for n in (1, 2, 4, 8)),
        "a3-megagpu-8g",
        "a3-edgegpu-8g",
        *(f"g2-standard-{n}" for n in (4, 8, 12, 16, 24, 32, 48, 96)),
    ],
    "azure": [
        "Standard_ND96asr_v4",
        "Standard_ND96amsr_A100_v4",
        "Standard_ND96isr_H100_v5",
        "Standard_NC24ads_A100_v4",
        "Standard_NC48ads_A100_v4",
        "Standard_NC96ads_A100_v4",
        "Standard_NC4as_T4_v3",
        "Standard_NC64as_T4_v3",
    ],
}


def test_catalog_covers_the_families_of_the_issue() -> None:
    catalog = load_catalog()
    for provider, types in EXPECTED.items():
        missing = [t for t in types if catalog.get(provider, t) is None]
        assert not missing, f"{provider}: {missing}"


def test_every_row_is_sourced_and_canonical() -> None:
    domains = {"aws": "docs.aws.amazon.com", "gcp": "cloud.google.com", "azure": "learn.microsoft.com"}
    for e in load_catalog():
        assert e.gpu_model in GPU_MODELS
        assert e.source.startswith("https://") and domains[e.provider] in e.source, e
        assert f"{e.gpu_memory_gib:g}" in e.gpu_model, e  # A100-80GB has 80 GiB per GPU
        assert e.gpu_count >= 1 and e.net_gbps > 0 and e.storage_gbps > 0


@pytest.mark.parametrize(
    ("provider", "instance_type", "model", "count", "nvlink"),
    [
        ("aws", "p4d.24xlarge", "A100-40GB", 8, True),
        ("aws", "p5.48xlarge", "H100-80GB", 8, True),
        ("aws", "g5.12xlarge", "A10G-24GB", 4, False),
        ("aws", "g6e.48xlarge", "L40S-48GB", 8, False),
        ("gcp", "a2-megagpu-16g", "A100-40GB", 16, True),
        ("gcp", "a2-ultragpu-1g", "A100-80GB", 1, False),
        ("gcp", "a3-megagpu-8g", "H100-80GB", 8, True),
        ("gcp", "g2-standard-96", "L4-24GB", 8, False),
        ("azure", "Standard_ND96amsr_A100_v4", "A100-80GB", 8, True),
        ("azure", "Standard_NC64as_T4_v3", "T4-16GB", 4, False),
    ],
)
def test_documented_facts(provider: str, instance_type: str, model: str, count: int, nvlink: bool) -> None:
    e = load_catalog().get(provider, instance_type)
    assert e is not None
    assert (e.gpu_model, e.gpu_count, e.nvlink) == (model, count, nvlink)


def test_topology_score_rules() -> None:
    for e in load_catalog():
        if e.nvlink and e.gpu_count > 1:
            assert e.topology_score >= 7, e
        else:
            assert e.topology_score < 7, e
        assert 0 <= e.topology_score <= 10
    assert topology_score(8, True, 3200) == 10
    assert topology_score(8, True, 100) == 9
    assert topology_score(1, False, 400) == 3
    assert topology_score(8, False, 400) == 5


def test_effective_factor_is_the_design_formula() -> None:
    e = load_catalog().get("aws", "g5.xlarge")
    assert e is not None
    assert e.effective_factor == pytest.approx(effective_gpu_hour_usd(1.0, 1, e.net_gbps, e.storage_gbps))
    # 10 Gbps and 3.5 Gbps: 1 + 190*0.05 + 6.5*0.08 = 11.02
    assert e.effective_factor == pytest.approx(11.02)


def test_gpu_spellings() -> None:
    assert canonical_gpu_model("a100") == "A100-40GB"
    assert canonical_gpu_model("A100-80GB") == "A100-80GB"
    assert canonical_gpu_model("h100-80gb-mega") == "H100-80GB"
    assert canonical_gpu_model(" L4 ") == "L4-24GB"
    assert canonical_gpu_model("v100") is None


def test_real_history_instance_types_and_spellings_are_known(gcp_history: Path) -> None:
    catalog = load_catalog()
    with gcp_history.open() as f:
        pairs = {(r["instance_type"], r["gpu_model"]) for r in csv.DictReader(f)}
    for instance_type, spelling in pairs:
        assert catalog.get("gcp", instance_type) is not None, instance_type
        assert canonical_gpu_model(spelling) is not None, spelling


def test_bad_catalog_file_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "catalog.csv"
    row = "aws,x.large,x,Z999-1GB,Z,1,1,false,4,16,10,5,https://example.com"
    p.write_text(",".join(CATALOG_COLUMNS) + "\n" + row + "\n")
    with pytest.raises(InputError, match="line 2: gpu_model 'Z999-1GB'"):
        read_catalog(p)
    p.write_text("provider,instance_type\naws,x\n")
    with pytest.raises(InputError, match="missing column"):
        read_catalog(p)
