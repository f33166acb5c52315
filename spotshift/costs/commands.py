"""``spotshift report`` and ``spotshift focus export|check``: cost analytics from the command line.

``report`` reads the dbt_costs marts of the warehouse. By default it first runs ``dbt build`` when
the marts are missing or stale (a raw table gained rows since the last build, e.g. after
``make demo``); ``--no-build`` reads them as they are, ``--rebuild`` always builds.
``focus export`` never builds unless asked (``--build``): a missing warehouse or view is an
error (exit 2), as is an output name that is not ``.csv`` or ``.parquet``.

Only the standard library is imported at module level (CLI start-up time is measured).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from spotshift.warehouse import first_row


def register(sub: Any) -> None:
    """Add the ``report`` and ``focus`` command groups."""
    p = sub.add_parser(
        "report",
        help="print the cost tables (savings, metrics, migrations, FOCUS totals) from the warehouse",
        description="Print what each job cost against two baselines (always on demand; staying on its first "
        "spot location and paying for its preemptions, simulated on that location's availability trace in "
        "$SPOTSHIFT_HOME/traces) and, apart, the never-preempted first-spot bound; the six cost metrics, "
        "migrations by trigger and FOCUS totals, from the dbt_costs marts. Builds the marts with dbt first "
        "when they are missing or older than the raw facts.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--no-build", action="store_true", help="never run dbt; read the marts as they are")
    mode.add_argument("--rebuild", action="store_true", help="always run dbt build first")
    p.add_argument(
        "--warehouse",
        metavar="FILE",
        help="DuckDB warehouse (default: $SPOTSHIFT_WAREHOUSE or $SPOTSHIFT_HOME/warehouse.duckdb)",
    )
    p.add_argument("--out", metavar="DIR", help="also write cost_report.md and its PNG plots into DIR")
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress display of the dbt build (stderr, at a terminal)",
    )
    p.set_defaults(handler=_report)

    f = sub.add_parser("focus", help="FinOps FOCUS 1.2/1.3 cost and usage data: export and check")
    actions = f.add_subparsers(dest="focus_action", metavar="ACTION")
    actions.required = True
    e = actions.add_parser(
        "export",
        help="write the FOCUS view (1.2 and 1.3 columns side by side) as CSV or Parquet (chosen by the extension)",
        description="Write focus_cost_and_usage (GPU compute, data transfer, inference) to OUT, atomically, with "
        "the FOCUS 1.2 provider columns (ProviderName, PublisherName; deprecated by 1.3) beside the 1.3 ones "
        "(ServiceProviderName, HostProviderName). Numbers are plain decimals with 10 decimal places (money in "
        "USD); Tags carry spotshift/team of each job and endpoint. CSV timestamps are ISO 8601 UTC with Z; "
        "Parquet timestamps are UTC. OUT.metadata.json, written after OUT, states the FocusVersion (1.3) and "
        "each column's type; Parquet files carry FocusVersion in their key-value metadata too.",
    )
    e.add_argument("out", metavar="OUT.csv|OUT.parquet", help="output file; its extension picks the format")
    e.add_argument("--warehouse", metavar="FILE", help="DuckDB warehouse (default as for `report`)")
    e.add_argument("--build", action="store_true", help="build the marts first when missing or stale")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(handler=_focus_export)
    c = actions.add_parser(
        "check",
        help="check a FOCUS CSV/Parquet file against the FOCUS 1.2 and 1.3 rules (exit 1 on problems)",
        description="Check FILE against the rules of each FOCUS version asked for: Mandatory columns, nulls, "
        "allowed values (ServiceCategory, ServiceSubcategory per category), plain decimal notation of numbers, "
        "ISO 4217 currency, charge periods, x_ prefix of custom columns. Exit 1 when a version has problems.",
    )
    c.add_argument("file", metavar="FILE.csv|FILE.parquet", help="FOCUS file to check")
    c.add_argument(
        "--focus-version",
        choices=("1.2", "1.3", "both"),
        default="both",
        help="column set to check against (default both: the file must serve readers of either)",
    )
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(handler=_focus_check)


def _report(args: argparse.Namespace) -> int:
    from spotshift.cliutil import emit_json
    from spotshift.costs.marts import REPORT_MARTS, ensure_marts, open_marts, resolve_warehouse
    from spotshift.costs.report import read_report
    from spotshift.costs.report_markdown import write_cost_report
    from spotshift.costs.report_text import format_text

    path = resolve_warehouse(args.warehouse)
    mode = "never" if args.no_build else ("always" if args.rebuild else "auto")
    from spotshift.progress import progress_for

    warnings: list[str] = []
    with progress_for(args.quiet) as progress:
        built, reason = ensure_marts(path, mode=mode, warnings=warnings, progress=progress)
    if built:
        sys.stderr.write(f"spotshift: dbt build: {reason}\n")
    require = (*REPORT_MARTS, "stg_spotshift__price_quotes", "fct_gpu_usage") if args.out else REPORT_MARTS
    with open_marts(path, require=require) as con:
        report = read_report(con, path)
        report.data_warnings = warnings
        files = write_cost_report(con, args.out, str(path)) if args.out else None
    if args.json:
        out = report.to_dict()
        out["built"] = built
        if files:
            out["files"] = {
                "markdown": str(files.markdown_path),
                **{k: str(v) for k, v in files.plots.items()},
            }
        emit_json(out)
    else:
        sys.stdout.write(format_text(report))
        if files:
            print(f"wrote {files.markdown_path} and {', '.join(str(p) for p in files.plots.values())}")
    return 0


def _focus_export(args: argparse.Namespace) -> int:
    from spotshift.cliutil import emit_json
    from spotshift.costs.focus_export import export_focus, focus_format
    from spotshift.costs.marts import ensure_marts, resolve_warehouse

    focus_format(args.out)  # a bad extension is an error before anything is read or built
    path = resolve_warehouse(args.warehouse)
    if args.build:
        ensure_marts(path, mode="auto", warnings=[])
    result = export_focus(args.out, path)
    if args.json:
        emit_json(
            {
                "path": str(result.path),
                "format": result.format,
                "rows": result.rows,
                "billed_cost": result.billed_cost,
                "currency": result.currency,
                "focus_version": result.focus_version,
                "metadata": str(result.metadata_path),
            }
        )
    else:
        print(
            f"wrote {result.rows} FOCUS 1.2/1.3 rows ({result.currency} {result.billed_cost:,.2f} billed) "
            f"to {result.path} ({result.format}); FocusVersion {result.focus_version} in {result.metadata_path}"
        )
    return 0


def _focus_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    import duckdb

    from spotshift.cliutil import emit_json
    from spotshift.costs.focus import focus_problems
    from spotshift.costs.focus_export import read_relation
    from spotshift.errors import InputError

    relation = read_relation(args.file)
    if not Path(args.file).is_file():
        raise FileNotFoundError(2, "no such file", args.file)
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        try:
            rows = first_row(con, f"SELECT count(*) FROM {relation}")[0]
        except duckdb.Error as exc:
            raise InputError(
                f"{args.file}: not a readable {Path(args.file).suffix[1:]} file ({exc})"
            ) from None
        versions = ("1.2", "1.3") if args.focus_version == "both" else (args.focus_version,)
        by_version = {v: focus_problems(con, relation, v) for v in versions}
    finally:
        con.close()
    problems = [f"FOCUS {v}: {p}" for v, ps in by_version.items() for p in ps]
    label = " and ".join(versions)
    if args.json:
        emit_json(
            {
                "file": args.file,
                "rows": rows,
                "valid": not problems,
                "problems": problems,
                "versions": {v: {"valid": not ps, "problems": ps} for v, ps in by_version.items()},
            }
        )
    else:
        for p in problems:
            print(p)
        print(
            f"{args.file}: {rows} rows, "
            + (f"FOCUS {label} conformant" if not problems else f"{len(problems)} problem(s)")
        )
    return 1 if problems else 0
