"""Transfer accounting: egress prices, amplification and raw.transfers rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from spotshift import warehouse
from spotshift.home import location_of_store
from spotshift.sync.transfer import TransferStats, record_transfers
from spotshift.warehouse_schema import RAW_TABLES


@pytest.mark.parametrize(
    "src, dst, usd_per_gb",
    [
        ("gcp/us-central1", "gcp/us-central1", 0.0),
        ("gcp/us-central1", "gcp/us-east1", 0.02),
        ("gcp/us-central1", "gcp/europe-west4", 0.08),
        ("gcp/us-central1", "aws/us-east-1", 0.12),
        ("aws/us-east-1", "gcp/us-central1", 0.09),
        ("aws/us-east-1/us-east-1a", "aws/us-east-1/us-east-1b", 0.01),  # cross-AZ, per the playbook
        ("aws/us-east-1/us-east-1a", "aws/us-east-1/us-east-1a", 0.0),
    ],
)
def test_egress_pricing(src: str, dst: str, usd_per_gb: float) -> None:
    s = TransferStats(
        "d", src_location=src, dst_location=dst, bytes_sent=3_000_000_000, bytes_changed=2_000_000_000
    )
    s.price()
    assert s.egress_usd_per_gb == usd_per_gb
    assert s.egress_usd == pytest.approx(3 * usd_per_gb)
    assert s.transfer_amplification == 1.5


def test_rows_match_the_warehouse_table(spotshift_home: Path) -> None:
    s = TransferStats(
        "corpus", src_location="gcp/us-central1", dst_location="aws/us-east-1", bytes_sent=10, root="ab" * 16
    )
    s.price()
    row = s.to_row("run-7")
    assert set(row) == {c.name for c in RAW_TABLES["transfers"]}
    assert record_transfers([s, TransferStats("other")], run_id="run-7").rows("raw.transfers") == 2
    with warehouse.connect() as con:
        got = con.execute(
            "select entity, src_location, dst_location, egress_usd_per_gb, transfer_amplification, run_id "
            "from raw.transfers order by entity"
        ).fetchall()
    assert got == [
        ("corpus", "gcp/us-central1", "aws/us-east-1", 0.12, None, "run-7"),
        ("other", "local", "local", 0.0, None, "run-7"),
    ]


def test_location_of_region_stores(spotshift_home: Path, tmp_path: Path) -> None:
    from spotshift.home import region_store_url

    assert location_of_store(region_store_url("azure/westeurope")) == "azure/westeurope"
    assert location_of_store((tmp_path / "elsewhere").as_uri()) is None
    assert location_of_store("s3://bucket/x") is None
