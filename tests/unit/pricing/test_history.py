"""read_price_history accepts every ISO-8601 spelling, mixed within one file, and names bad lines."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from spotshift.errors import InputError
from spotshift.pricing.history import read_price_history

HEADER = "observed_at,instance_type,gpu_model,gpu_count,region,ondemand_hour,spot_hour\n"


def write(tmp_path: Path, stamps: list[str]) -> Path:
    p = tmp_path / "h.csv"
    p.write_text(HEADER + "".join(f"{s},a2-highgpu-1g,a100,1,us-central1,3.6,1.4\n" for s in stamps))
    return p


def test_mixed_iso_forms(tmp_path: Path) -> None:
    stamps = [
        "2025-01-01",
        "2025-01-02T10:00:00+02:00",
        "2025-01-03 10:00:00",
        "2025-01-04T10:00:00Z",
        "2025-01-05T10:00:00.250000+00:00",
    ]
    got = read_price_history(write(tmp_path, stamps))["observed_at"].to_list()
    assert got == [
        datetime(2025, 1, 1, tzinfo=UTC),
        datetime(2025, 1, 2, 8, tzinfo=UTC),
        datetime(2025, 1, 3, 10, tzinfo=UTC),
        datetime(2025, 1, 4, 10, tzinfo=UTC),
        datetime(2025, 1, 5, 10, 0, 0, 250000, tzinfo=UTC),
    ]


def test_bad_timestamp_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="line 3: observed_at 'last tuesday' is not an ISO-8601"):
        read_price_history(write(tmp_path, ["2025-01-01T00:00:00+00:00", "last tuesday"]))
