"""``spotshift reconcile``: provider FOCUS exports made by focus-data-toolkit (a maintained generator
of provider-realistic AWS/Azure/GCP FOCUS 1.2/1.3 data) matched against spotshift's estimates."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from spotshift import warehouse
from spotshift.cli import main
from spotshift.costs.reconcile import GOAL_PCT, provider_id, reconcile_export
from spotshift.errors import InputError, NotFoundError

pytest.importorskip("focus_data_toolkit", reason="focus-data-toolkit is in the dev extra")

#: relative error injected into spotshift's estimate of the i-th billed group (cycled)
ERRORS = (0.0, 0.01, -0.015, 0.019, -0.005, 0.05)
SKIP_EVERY = 7  # every 7th billed group gets no spotshift estimate


def generate(tmp_path: Path, provider: str, version: str, rows: int = 400, seed: int = 11) -> Path:
    out = tmp_path / f"gen-{provider}-{version}"
    subprocess.run(
        [sys.executable, "-m", "focus_data_toolkit", "generate", "--provider", provider, "--focus-version", version, "--rows", str(rows), "--seed", str(seed), "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=600,
    )  # fmt: skip
    (path,) = out.glob("*cost_and_usage*.csv")
    return path


def billed_groups(export: Path, unit: str, category: str) -> list[tuple]:
    """The export's billed groups as reconcile keys them (summed per provider, region, type, period)."""
    con = duckdb.connect()
    cols = {
        d[0]
        for d in con.execute(
            f"select * from read_csv('{export}', header = true, all_varchar = true) limit 0"
        ).description
    }
    provider = (
        "coalesce(nullif(ServiceProviderName, ''), ProviderName)"
        if "ServiceProviderName" in cols
        else "ProviderName"
    )
    return con.execute(
        f"""
        select {provider} as p, RegionId,
               json_extract_string(nullif(SkuPriceDetails, '')::JSON, '$.InstanceType') as itype,
               ChargePeriodStart::TIMESTAMPTZ, ChargePeriodEnd::TIMESTAMPTZ,
               sum(EffectiveCost::DOUBLE), sum(PricingQuantity::DOUBLE), count(*)
        from read_csv('{export}', header = true, all_varchar = true)
        where ChargeCategory = 'Usage' and ServiceCategory = '{category}' and PricingUnit = '{unit}'
        group by all order by 4, 1, 2, 3
        """
        if "SkuPriceDetails" in cols
        else "select 1 where false"
    ).fetchall()  # fmt: skip


def estimates_for(export: Path, wh: Path, *, extra: bool = True) -> dict:
    """spotshift's side for the export: one compute interval per billed group over its charge period
    with a known error, every 7th group left out, plus two intervals no bill covers."""
    compute = billed_groups(export, "Hours", "Compute")
    transfer = billed_groups(export, "GB", "Networking")
    usage, transfers, expect = [], [], {"groups": [], "skipped_rows": 0}
    for i, (p, region, itype, cps, cpe, billed, qty, n) in enumerate(compute + transfer):
        if i % SKIP_EVERY == SKIP_EVERY - 1:
            expect["skipped_rows"] += n
            continue
        err = ERRORS[i % len(ERRORS)]
        est = billed * (1 + err)
        start, end = cps.astimezone(UTC).replace(tzinfo=None), cpe.astimezone(UTC).replace(tzinfo=None)
        if i < len(compute):
            usage.append({"usage_id": f"u{i}", "job": "j", "provider": provider_id(p), "region": region, "instance_type": itype, "market": "on_demand", "started_at": start, "ended_at": end, "usd": est})  # fmt: skip
            expect["groups"].append((billed, est, qty))
        else:
            transfers.append({"transfer_id": f"t{i}", "kind": "checkpoint", "entity": "j", "src_location": f"{provider_id(p)}/{region}", "dst_location": "gcp/elsewhere", "started_at": start, "egress_usd": est, "bytes_sent": 1})  # fmt: skip
            expect["groups"].append((billed, est, 0.0))
    if extra and compute:
        p = provider_id(compute[0][0])
        t0 = compute[0][3].astimezone(UTC).replace(tzinfo=None)
        for k in range(2):
            usage.append({"usage_id": f"x{k}", "job": "j", "provider": p, "region": "nowhere-1", "instance_type": "z", "market": "spot", "started_at": t0, "ended_at": t0.replace(minute=30), "usd": 1.0})  # fmt: skip
    with warehouse.connect(wh) as con:
        if usage:
            warehouse.append_rows(con, "raw.compute_usage", usage)
        if transfers:
            warehouse.append_rows(con, "raw.transfers", transfers)
    return expect


@pytest.mark.parametrize(("provider", "version"), [("aws", "1.3"), ("azure", "1.3"), ("gcp", "1.2")])
def test_reconcile_generated_export(
    tmp_path: Path, spotshift_home: Path, provider: str, version: str
) -> None:
    export = generate(tmp_path, provider, version)
    wh = tmp_path / "warehouse.duckdb"
    expect = estimates_for(export, wh)
    r = reconcile_export(export, wh, now=datetime(2026, 6, 1, tzinfo=UTC))
    groups = expect["groups"]
    assert groups, "the generated export has compute rows"
    assert len(r.groups) == len(groups)
    assert r.billed_usd == pytest.approx(sum(b for b, _, _ in groups))
    assert r.estimated_usd == pytest.approx(sum(e for _, e, _ in groups))
    errs = [abs(e - b) / b * 100 for b, e, _ in groups if b]
    assert r.mean_abs_error_pct == pytest.approx(sum(errs) / len(errs))
    assert r.within_goal_share == pytest.approx(sum(x <= GOAL_PCT + 1e-9 for x in errs) / len(errs))
    hours = sum(q for _, _, q in groups)
    compute_err = sum(e - b for b, e, q in groups if q)
    assert r.matched_hours == pytest.approx(hours)
    assert r.error_usd_per_hour == pytest.approx(compute_err / hours)
    # every billed row is matched or reported unmatched with its reason
    assert r.matched_rows + r.unmatched_billed_rows == r.billed_rows
    reasons = r.unmatched_reasons
    assert reasons["no spotshift estimate for the resource and window"] == expect["skipped_rows"]
    assert sum(reasons.values()) == r.unmatched_billed_rows
    assert any(k.startswith("not compute-hours or data transfer") for k in reasons)
    assert r.unmatched_estimate_rows == 2
    assert {e["id"] for e in r.unmatched_estimates} == {"x0", "x1"}
    # recorded once: a second run over the same export and estimates is the same fact
    reconcile_export(export, wh)
    with warehouse.connect(wh, read_only=True) as con:
        n, matched = con.execute("select count(*), max(matched_rows) from raw.reconciliations").fetchall()[0]
    assert (n, matched) == (1, r.matched_rows)


def test_estimates_within_goal_are_reported_as_such(tmp_path: Path, spotshift_home: Path) -> None:
    export = generate(tmp_path, "aws", "1.3", rows=200, seed=3)
    wh = tmp_path / "warehouse.duckdb"
    compute = billed_groups(export, "Hours", "Compute")
    rows = [
        {"usage_id": f"u{i}", "job": "j", "provider": "aws", "region": region, "instance_type": itype, "market": "on_demand", "started_at": cps.astimezone(UTC).replace(tzinfo=None), "ended_at": cpe.astimezone(UTC).replace(tzinfo=None), "usd": billed * 1.01}
        for i, (_, region, itype, cps, cpe, billed, _, _) in enumerate(compute)
    ]  # fmt: skip
    with warehouse.connect(wh) as con:
        warehouse.append_rows(con, "raw.compute_usage", rows)
    r = reconcile_export(export, wh, record=False)
    assert r.within_goal_share == 1.0 and r.mean_abs_error_pct == pytest.approx(1.0)
    assert r.unmatched_estimate_rows == 0


def test_reconcile_cli_json_and_report(tmp_path: Path, spotshift_home: Path, capsys) -> None:
    export = generate(tmp_path, "aws", "1.3", rows=150, seed=5)
    wh = tmp_path / "warehouse.duckdb"
    estimates_for(export, wh, extra=False)
    assert main(["reconcile", str(export), "--warehouse", str(wh), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["matched_rows"] > 0 and doc["goal_pct"] == 2.0 and doc["unmatched_estimate_rows"] == 0
    assert main(["reconcile", str(export), "--warehouse", str(wh), "--no-record"]) == 0
    out = capsys.readouterr().out
    assert "USD per resource-hour" in out and "unmatched billed rows" in out


@pytest.mark.parametrize(
    ("name", "content", "error", "message"),
    [
        ("bill.xlsx", "x", InputError, "unknown extension"),
        ("missing.csv", None, NotFoundError, "no such billing export"),
        ("notfocus.csv", "a,b\n1,2\n", InputError, "not a FOCUS cost and usage export"),
        ("bad.parquet", "not parquet", InputError, "not a readable parquet file"),
    ],
)
def test_bad_exports_are_clear_errors(tmp_path: Path, name: str, content, error, message: str) -> None:
    wh = tmp_path / "w.duckdb"
    with warehouse.connect(wh):
        pass
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(error, match=message):
        reconcile_export(path, wh)


def test_reconcile_cli_exit_2_on_missing_warehouse(tmp_path: Path, spotshift_home: Path, capsys) -> None:
    export = tmp_path / "x.csv"
    export.write_text("BilledCost\n1\n")
    assert main(["reconcile", str(export), "--warehouse", str(tmp_path / "none.duckdb")]) == 2
    assert "does not exist" in capsys.readouterr().err
