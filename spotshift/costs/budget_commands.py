"""``spotshift budgets set|list|show`` and ``spotshift reconcile``: team spending caps and the
estimate-vs-invoice check.

Only the standard library is imported at module level (CLI start-up time is measured).
"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the ``budgets`` command group and the ``reconcile`` command."""
    b = sub.add_parser(
        "budgets",
        help="monthly spending caps per team: set, list, show (placement and the autoscaler obey them)",
        description="A team's budget is a monthly limit in USD (hard: placement and the autoscaler never start "
        "spend that would cross it; they pick the cheapest placement that fits, stay, queue or withhold "
        "launches, and say why) and a soft alert level (a raw.budget_alerts fact when spend crosses it). "
        "Jobs and endpoints join a team with --team on `jobs add` / `endpoints add`.",
    )
    actions = b.add_subparsers(dest="budgets_action", metavar="ACTION")
    actions.required = True
    s = actions.add_parser("set", help="declare or change a team's monthly budget")
    s.add_argument("team", help="team name ([a-z0-9-_.])")
    s.add_argument("--monthly-usd", type=float, required=True, metavar="N", help="hard monthly limit, USD")
    s.add_argument(
        "--alert",
        type=float,
        default=0.8,
        metavar="SHARE",
        help="soft alert level as a share of the limit, in (0, 1] (default 0.8)",
    )
    s.add_argument("--json", action="store_true", help="print the declaration as JSON")
    s.set_defaults(handler=_budgets_set)
    ls = actions.add_parser("list", help="every team budget with this month's spend and burn")
    ls.add_argument("--warehouse", metavar="FILE", help="DuckDB warehouse (default as for `report`)")
    ls.add_argument("--json", action="store_true", help="print one JSON object")
    ls.set_defaults(handler=_budgets_list)
    sh = actions.add_parser(
        "show", help="one team: budget, spend this month, commitments of running jobs, members"
    )
    sh.add_argument("team", help="team with a budget")
    sh.add_argument("--warehouse", metavar="FILE", help="DuckDB warehouse (default as for `report`)")
    sh.add_argument("--json", action="store_true", help="print one JSON object")
    sh.set_defaults(handler=_budgets_show)

    r = sub.add_parser(
        "reconcile",
        help="match a provider's FOCUS billing export to spotshift's estimates and report the error",
        description="Read a FOCUS 1.2/1.3 cost and usage export (AWS Data Exports, Azure Cost Management, GCP "
        "billing export in FOCUS form; .csv or .parquet), match its usage rows to spotshift's compute and "
        "transfer rows by resource, region and time window, and report the estimate-vs-billed error per "
        "resource-hour (goal: within 2 % on matched rows) and the rows on either side that did not match. "
        "The result is recorded in raw.reconciliations; `spotshift report` shows the latest.",
    )
    r.add_argument("export", metavar="EXPORT.csv|EXPORT.parquet", help="the provider's FOCUS export")
    r.add_argument("--warehouse", metavar="FILE", help="DuckDB warehouse (default as for `report`)")
    r.add_argument("--no-record", action="store_true", help="do not record the result in the warehouse")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.set_defaults(handler=_reconcile)


def _status_of(budget: Any, warehouse_path: str | None) -> Any:
    from pathlib import Path

    from spotshift import warehouse
    from spotshift.budgets import BudgetStatus, budget_status, hours_left_in_month, month_bounds
    from spotshift.clock import virtual_now
    from spotshift.costs.marts import resolve_warehouse

    now = virtual_now()
    path = resolve_warehouse(warehouse_path)
    if not Path(path).is_file():  # nothing recorded yet: nothing spent
        return BudgetStatus(budget, month_bounds(now)[0], 0.0, 0.0, hours_left_in_month(now))
    with warehouse.connect(path, read_only=True) as con:
        return budget_status(con, budget, now)


def _budgets_set(args: argparse.Namespace) -> int:
    from spotshift.budgets import Budget, set_budget
    from spotshift.cliutil import emit_json

    budget = Budget(name=args.team, monthly_usd=args.monthly_usd, alert=args.alert)
    set_budget(budget)
    if args.json:
        emit_json(budget.to_dict())
    else:
        print(
            f"budget of team {budget.name}: {budget.monthly_usd:,.2f} USD a month, "
            f"alert at {budget.alert:.0%} ({budget.alert_usd:,.2f} USD)"
        )
    return 0


def _budgets_list(args: argparse.Namespace) -> int:
    from spotshift.budgets import load_budgets
    from spotshift.cliutil import emit_json

    statuses = [_status_of(b, args.warehouse) for b in load_budgets()]
    if args.json:
        emit_json({"budgets": [s.to_dict() for s in statuses]})
        return 0
    if not statuses:
        print("no budgets (declare one with `spotshift budgets set TEAM --monthly-usd N`)")
        return 0
    print(f"{'team':20s} {'month':7s} {'limit USD':>12s} {'spent USD':>12s} {'burn':>7s} {'level':6s}")
    for s in statuses:
        d = s.to_dict()
        print(
            f"{d['team']:20s} {d['month']:7s} {d['monthly_usd']:>12,.2f} {d['spent_usd']:>12,.2f} "
            f"{d['burn']:>7.1%} {d['level']:6s}"
        )
    return 0


def _budgets_show(args: argparse.Namespace) -> int:
    from spotshift.budgets import get_budget, team_members
    from spotshift.cliutil import emit_json

    budget = get_budget(args.team)
    status = _status_of(budget, args.warehouse)
    jobs, endpoints = team_members(budget.name)
    out = {**status.to_dict(), "alert_usd": budget.alert_usd, "jobs": jobs, "endpoints": endpoints}
    if args.json:
        emit_json(out)
        return 0
    print(
        f"team {budget.name} ({out['month']}): {status.spent_usd:,.2f} of {budget.monthly_usd:,.2f} USD spent "
        f"({status.burn:.1%}, {status.level}); running jobs commit {status.committed_usd:,.2f} USD more; "
        f"alert at {budget.alert_usd:,.2f} USD"
    )
    print(f"  jobs: {', '.join(jobs) or '-'}")
    print(f"  endpoints: {', '.join(endpoints) or '-'}")
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    from spotshift.cliutil import emit_json
    from spotshift.costs.marts import resolve_warehouse
    from spotshift.costs.reconcile import format_reconciliation, reconcile_export

    result = reconcile_export(
        args.export,
        resolve_warehouse(args.warehouse),
        record=not args.no_record,
    )
    if args.json:
        emit_json(result.to_dict())
    else:
        print(format_reconciliation(result), end="")
    return 0
