"""``raw.cutovers``: one row per stage of a cutover, recorded from the rows the cutover state keeps.

The state file (:mod:`spotshift.serving.cutover`) is the source of the rows; whoever sees new ones
(the router after a window, ``cutover status``/``rollback``/``failback``, ``cutover_job``) records
them. :func:`spotshift.warehouse.record_facts` skips rows already present (keyed by cutover id,
stage and status), so recording twice writes nothing twice.
"""

from __future__ import annotations

from typing import Any

from spotshift import warehouse


def record_stage_rows(rows: list[dict[str, Any]], *, database: Any = None, con: Any = None) -> int:
    """Record stage rows in ``raw.cutovers``; returns rows written now (0: already there or queued)."""
    if not rows:
        return 0
    out = warehouse.record_facts({"raw.cutovers": rows}, database=database, con=con)
    return out.rows("raw.cutovers")
