"""Normalization throughput: 1M price-history rows -> NormalizedGPUQuote rows, vs a plain polars read.

Builds a 1,000,000-row history CSV by tiling the real GCP history (../shared/data) when present,
else the synthetic market, shifting each tile in time so rows stay distinct. Then, in the same
process, best of 3 runs each:

* baseline: ``polars.read_csv(file)`` (no validation, no types beyond inference);
* spotshift: ``read_price_history`` (validated read) + ``history_to_raw`` + ``normalize_frame``
  (catalog join, effective GPU-hour, rejection reasons) -> quotes/s (2 quotes per row with spot);
* objects: ``quotes_from_frame`` on 200k quotes (the per-row NormalizedGPUQuote path).

Writes bench/results/quotes.json. ``--quick`` uses 50k rows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _common import Timer, peak_rss_mib, write_result  # noqa: E402


def build_history(rows: int, out: Path) -> tuple[str, int]:
    """Tile a history to ``rows`` rows at ``out``; returns (origin, rows written)."""
    import polars as pl

    from spotshift.home import shared_data_file
    from spotshift.pricing.feeds.replay import REAL_HISTORY
    from spotshift.pricing.history import read_price_history
    from spotshift.pricing.synthetic import synthetic_history, write_history_csv

    real = shared_data_file(REAL_HISTORY)
    base = read_price_history(real) if real else synthetic_history()
    origin = str(real) if real else "synthetic(seed=0)"
    span = base["observed_at"].max() - base["observed_at"].min() + timedelta(days=7)
    tiles = -(-rows // base.height)
    tiled = pl.concat([base.with_columns(pl.col("observed_at") + span * k) for k in range(tiles)]).head(rows)
    write_history_csv(tiled, out)
    return origin, tiled.height


def best_of(n: int, fn):  # noqa: ANN001, ANN201 - tiny local helper
    times, value = [], None
    for _ in range(n):
        with Timer() as t:
            value = fn()
        times.append(t.seconds)
    return min(times), value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=None)
    args = parser.parse_args()
    rows = args.rows or (50_000 if args.quick else 1_000_000)

    import polars as pl

    from spotshift.pricing.feeds.replay import history_to_raw
    from spotshift.pricing.history import read_price_history
    from spotshift.pricing.normalize import normalize_frame, quotes_from_frame

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "history.csv"
        with Timer() as build:
            origin, n_rows = build_history(rows, path)
        size_mib = path.stat().st_size / 2**20

        baseline_s, frame = best_of(3, lambda: pl.read_csv(path))
        assert frame.height == n_rows

        def pipeline():  # noqa: ANN202
            history = read_price_history(path)
            return normalize_frame(history_to_raw(history), latest_only=False)

        read_s, _ = best_of(3, lambda: read_price_history(path))
        total_s, (quotes, report) = best_of(3, pipeline)
        sample = quotes.head(200_000)
        objects_s, objects = best_of(3, lambda: quotes_from_frame(sample))

    result = {
        "rows": n_rows,
        "history_origin": origin,
        "csv_mib": round(size_mib, 1),
        "build_s": round(build.seconds, 2),
        "polars_read_csv_s": round(baseline_s, 3),
        "validated_read_s": round(read_s, 3),
        "normalize_total_s": round(total_s, 3),
        "quotes": quotes.height,
        "rejected": report.rejected_total,
        "quotes_per_s": round(quotes.height / total_s),
        "rows_per_s": round(n_rows / total_s),
        "polars_read_rows_per_s": round(n_rows / baseline_s),
        "slowdown_vs_polars_read": round(total_s / baseline_s, 2),
        "objects": len(objects),
        "objects_per_s": round(len(objects) / objects_s),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }
    for k, v in result.items():
        print(f"{k:26s} {v}")
    write_result("quotes", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
