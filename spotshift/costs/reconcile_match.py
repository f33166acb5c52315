"""Matching a FOCUS billing export's rows to spotshift's estimates, and the result
(:class:`Reconciliation`). Rules: :mod:`spotshift.costs.reconcile`, which reads the export.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

#: |estimate - billed| / billed a matched group may have and count as accurate
GOAL_PCT = 2.0
#: matched groups and unmatched rows listed in ``detail`` (the counts are always complete)
DETAIL_LIMIT = 200


@dataclass
class Reconciliation:
    """What :func:`reconcile_export` found."""

    export_file: str
    export_sha256: str
    reconciled_at: datetime
    billed_rows: int = 0
    matched_rows: int = 0
    unmatched_billed_rows: int = 0
    unmatched_estimate_rows: int = 0
    billed_usd: float = 0.0
    estimated_usd: float = 0.0
    matched_hours: float = 0.0
    groups: list[dict[str, Any]] = field(default_factory=list)
    unmatched_billed: list[dict[str, Any]] = field(default_factory=list)
    unmatched_estimates: list[dict[str, Any]] = field(default_factory=list)
    unmatched_reasons: dict[str, int] = field(default_factory=dict)
    estimates_digest: str = ""

    @property
    def reconcile_id(self) -> str:
        """Content hash of the export and of the estimates it was matched to."""
        return hashlib.sha256(f"{self.export_sha256}:{self.estimates_digest}".encode()).hexdigest()[:32]

    @property
    def error_usd_per_hour(self) -> float | None:
        """(estimated - billed) per matched compute resource-hour, USD; None without matched hours."""
        compute = [g for g in self.groups if g["kind"] == "compute"]
        hours = sum(g["hours"] for g in compute)
        if hours <= 0:
            return None
        return (sum(g["estimated_usd"] for g in compute) - sum(g["billed_usd"] for g in compute)) / hours

    @property
    def mean_abs_error_pct(self) -> float | None:
        """Mean |error| of the matched groups, percent; None when nothing matched."""
        errs = [abs(g["error_pct"]) for g in self.groups if g["error_pct"] is not None]
        return sum(errs) / len(errs) if errs else None

    @property
    def within_goal_share(self) -> float | None:
        """Share of matched groups with |error| <= :data:`GOAL_PCT`."""
        errs = [abs(g["error_pct"]) for g in self.groups if g["error_pct"] is not None]
        return sum(e <= GOAL_PCT + 1e-9 for e in errs) / len(errs) if errs else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready result (the ``--json`` output)."""
        return {
            "reconcile_id": self.reconcile_id,
            "export_file": self.export_file,
            "export_sha256": self.export_sha256,
            "reconciled_at": self.reconciled_at.isoformat(),
            "billed_rows": self.billed_rows,
            "matched_rows": self.matched_rows,
            "unmatched_billed_rows": self.unmatched_billed_rows,
            "unmatched_estimate_rows": self.unmatched_estimate_rows,
            "billed_usd": round(self.billed_usd, 6),
            "estimated_usd": round(self.estimated_usd, 6),
            "matched_hours": round(self.matched_hours, 6),
            "error_usd_per_hour": _r(self.error_usd_per_hour),
            "mean_abs_error_pct": _r(self.mean_abs_error_pct),
            "within_goal_share": _r(self.within_goal_share),
            "goal_pct": GOAL_PCT,
            "matched_groups": len(self.groups),
            "unmatched_reasons": self.unmatched_reasons,
            "groups": self.groups[:DETAIL_LIMIT],
            "unmatched_billed": self.unmatched_billed[:DETAIL_LIMIT],
            "unmatched_estimates": self.unmatched_estimates[:DETAIL_LIMIT],
        }

    def to_row(self) -> dict[str, Any]:
        """The ``raw.reconciliations`` row."""
        d = self.to_dict()
        detail = {k: d[k] for k in ("groups", "unmatched_billed", "unmatched_estimates", "unmatched_reasons")}
        return {
            "reconcile_id": self.reconcile_id,
            "reconciled_at": self.reconciled_at.replace(tzinfo=None),
            "export_file": self.export_file,
            "export_sha256": self.export_sha256,
            "billed_rows": self.billed_rows,
            "matched_rows": self.matched_rows,
            "unmatched_billed_rows": self.unmatched_billed_rows,
            "unmatched_estimate_rows": self.unmatched_estimate_rows,
            "billed_usd": self.billed_usd,
            "estimated_usd": self.estimated_usd,
            "matched_hours": self.matched_hours,
            "error_usd_per_hour": self.error_usd_per_hour,
            "mean_abs_error_pct": self.mean_abs_error_pct,
            "within_goal_share": self.within_goal_share,
            "detail": json.dumps(detail, default=str),
        }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def load_estimates(con: Any) -> None:
    """Temp tables ``est_compute`` and ``est_transfer`` from the attached warehouse ``wh``."""
    tables = {
        r[0]
        for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = 'wh' AND schema_name = 'raw'"
        ).fetchall()
    }
    if "compute_usage" in tables:
        con.execute(
            """
            CREATE TEMP TABLE est_compute AS
            SELECT DISTINCT ON (usage_id) usage_id, job, provider, region, instance_type, started_at, ended_at, usd
            FROM wh.raw.compute_usage WHERE usd IS NOT NULL AND ended_at > started_at
            """
        )
    else:
        con.execute(
            "CREATE TEMP TABLE est_compute (usage_id VARCHAR, job VARCHAR, provider VARCHAR, region VARCHAR, "
            "instance_type VARCHAR, started_at TIMESTAMP, ended_at TIMESTAMP, usd DOUBLE)"
        )
    if "transfers" in tables:
        con.execute(
            """
            CREATE TEMP TABLE est_transfer AS
            SELECT DISTINCT ON (transfer_id) transfer_id, entity AS job,
                split_part(src_location, '/', 1) AS provider, split_part(src_location, '/', 2) AS region,
                started_at, egress_usd AS usd
            FROM wh.raw.transfers
            WHERE src_location LIKE '%/%' AND src_location <> dst_location AND egress_usd > 0
            """
        )
    else:
        con.execute(
            "CREATE TEMP TABLE est_transfer (transfer_id VARCHAR, job VARCHAR, provider VARCHAR, region VARCHAR, "
            "started_at TIMESTAMP, usd DOUBLE)"
        )


def _overlaps(con: Any) -> None:
    """Temp tables ``groups`` (billed rows per resource group) and the estimates overlapping each."""
    # one group per (kind, provider, region, instance type, charge period): several instances of
    # one type in one region bill a row each, spotshift's estimate covers them all
    con.execute(
        """
        CREATE TEMP TABLE groups AS
        SELECT kind, provider, region, instance_type, cps, cpe,
               sum(billed_usd) AS billed_usd, sum(quantity) AS quantity, count(*) AS rows,
               list(billed_row) AS billed_rows
        FROM billed WHERE kind IS NOT NULL
        GROUP BY ALL
        """
    )
    con.execute(
        """
        CREATE TEMP TABLE compute_overlaps AS
        SELECT g.provider, g.region, g.instance_type, g.cps, g.cpe, e.usage_id,
               e.usd * epoch(least(e.ended_at, g.cpe) - greatest(e.started_at, g.cps))
                     / epoch(e.ended_at - e.started_at) AS usd
        FROM groups g JOIN est_compute e
          ON g.kind = 'compute' AND e.provider = g.provider AND e.region = g.region
         AND (g.instance_type IS NULL OR e.instance_type = g.instance_type)
         AND e.started_at < g.cpe AND e.ended_at > g.cps
         -- a billed row without an instance type takes only intervals no typed row of its window bills
         AND (g.instance_type IS NOT NULL OR NOT EXISTS (
                SELECT 1 FROM groups t
                WHERE t.kind = 'compute' AND t.instance_type = e.instance_type AND t.provider = g.provider
                  AND t.region = g.region AND t.cps < g.cpe AND t.cpe > g.cps))
        """
    )
    con.execute(
        """
        CREATE TEMP TABLE transfer_overlaps AS
        SELECT g.provider, g.region, g.cps, g.cpe, e.transfer_id, e.usd
        FROM groups g JOIN est_transfer e
          ON g.kind = 'transfer' AND e.provider = g.provider AND e.region = g.region
         AND e.started_at >= g.cps AND e.started_at < g.cpe
        """
    )


def match_estimates(con: Any, result: Reconciliation) -> None:
    """Group the temp table ``billed`` by resource and charge period, match each group to the
    estimates (:func:`load_estimates`) and fill ``result``: matched groups, unmatched billed rows
    with their reasons, unmatched estimates and the digest of the estimates."""
    _overlaps(con)
    rows = con.execute(
        """
        SELECT g.kind, g.provider, g.region, g.instance_type, g.cps, g.cpe, g.billed_usd, g.quantity, g.rows,
               coalesce(c.usd, t.usd) AS estimated_usd
        FROM groups g
        LEFT JOIN (SELECT provider, region, instance_type, cps, cpe, sum(usd) AS usd FROM compute_overlaps
                   GROUP BY ALL) c
          ON g.kind = 'compute' AND c.provider = g.provider AND c.region = g.region
         AND c.instance_type IS NOT DISTINCT FROM g.instance_type AND c.cps = g.cps AND c.cpe = g.cpe
        LEFT JOIN (SELECT provider, region, cps, cpe, sum(usd) AS usd FROM transfer_overlaps GROUP BY ALL) t
          ON g.kind = 'transfer' AND t.provider = g.provider AND t.region = g.region AND t.cps = g.cps AND t.cpe = g.cpe
        ORDER BY g.cps, g.kind, g.provider, g.region, g.instance_type
        """
    ).fetchall()
    result.billed_rows = con.execute("SELECT count(*) FROM billed").fetchall()[0][0]
    reasons: dict[str, int] = {}
    _apply_groups(rows, result, reasons)
    other = con.execute(
        """
        SELECT coalesce(service_category, '?') || ' ' || coalesce(charge_category, '?') AS what, count(*)
        FROM billed WHERE kind IS NULL GROUP BY 1 ORDER BY 2 DESC, 1
        """
    ).fetchall()
    for what, n in other:
        key = f"not compute-hours or data transfer ({what})"
        reasons[key] = reasons.get(key, 0) + n
    result.unmatched_billed_rows = result.billed_rows - result.matched_rows
    result.unmatched_reasons = reasons
    _unmatched_estimates(con, result)
    _digest(con, result)


def _apply_groups(rows: list[tuple[Any, ...]], result: Reconciliation, reasons: dict[str, int]) -> None:
    """Each group either matched (added to ``result``'s totals) or unmatched (with its reason)."""
    for kind, provider, region, itype, cps, cpe, billed, qty, n, est in rows:
        if est is None:
            reasons["no spotshift estimate for the resource and window"] = (
                reasons.get("no spotshift estimate for the resource and window", 0) + n
            )
            result.unmatched_billed.append(
                {
                    "kind": kind,
                    "provider": provider,
                    "region": region,
                    "instance_type": itype,
                    "charge_period_start": cps.isoformat(),
                    "billed_usd": billed,
                    "rows": n,
                    "reason": "no spotshift estimate for the resource and window",
                }
            )
            continue
        err = None if not billed else (est - billed) / billed * 100.0
        hours = float(qty or 0.0) if kind == "compute" else 0.0
        result.groups.append(
            {
                "kind": kind,
                "provider": provider,
                "region": region,
                "instance_type": itype,
                "charge_period_start": cps.isoformat(),
                "charge_period_end": cpe.isoformat(),
                "billed_usd": billed,
                "estimated_usd": est,
                "hours": hours,
                "quantity": qty,
                "rows": n,
                "error_pct": err,
                "error_usd_per_hour": (est - billed) / hours if hours > 0 else None,
            }
        )
        result.matched_rows += n
        result.billed_usd += billed
        result.estimated_usd += est
        result.matched_hours += hours


def _unmatched_estimates(con: Any, result: Reconciliation) -> None:
    """spotshift's intervals and transfers inside the export's time range that no billed row covers."""
    span = con.execute("SELECT min(cps), max(cpe) FROM billed").fetchall()[0]
    if span[0] is not None:
        unmatched = con.execute(
            """
            SELECT 'compute' AS kind, usage_id AS id, job, provider, region, instance_type, started_at, usd
            FROM est_compute
            WHERE started_at < ? AND ended_at > ? AND provider IN (SELECT provider FROM billed)
              AND usage_id NOT IN (SELECT usage_id FROM compute_overlaps)
            UNION ALL
            SELECT 'transfer', transfer_id, job, provider, region, NULL, started_at, usd
            FROM est_transfer
            WHERE started_at >= ? AND started_at < ? AND provider IN (SELECT provider FROM billed)
              AND transfer_id NOT IN (SELECT transfer_id FROM transfer_overlaps)
            ORDER BY started_at, id
            """,
            [span[1], span[0], span[0], span[1]],
        ).fetchall()
        result.unmatched_estimate_rows = len(unmatched)
        result.unmatched_estimates = [
            {
                "kind": k,
                "id": i,
                "job": j,
                "provider": p,
                "region": r,
                "instance_type": t,
                "started_at": s.isoformat(),
                "estimated_usd": u,
            }
            for k, i, j, p, r, t, s, u in unmatched
        ]


def _digest(con: Any, result: Reconciliation) -> None:
    """The content hash of every estimate (part of the reconciliation's id)."""
    digest = con.execute(
        "SELECT coalesce(string_agg(usage_id || ':' || usd, ',' ORDER BY usage_id), '') FROM est_compute"
    ).fetchall()[0][0]
    digest += con.execute(
        "SELECT coalesce(string_agg(transfer_id || ':' || usd, ',' ORDER BY transfer_id), '') FROM est_transfer"
    ).fetchall()[0][0]
    result.estimates_digest = hashlib.sha256(digest.encode()).hexdigest()
