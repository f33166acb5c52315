"""``private_pools``: each private GPU pool advanced to now — finished work, queue starts, bursts to the
cheapest feasible cloud, repatriations — and its report: utilisation (seed 000: owning pays above
~70 %), queue waits, burst hours, and what bursting cost against what waiting would have.

The library does the work: :mod:`spotshift.pools.scheduler`.
"""

import dagster as dg

from resources.warehouse import WarehouseResource
from spotshift.clock import virtual_now
from spotshift.pools.lifecycle import record_pool_facts
from spotshift.pools.pool import load_pools
from spotshift.pools.scheduler import pool_report, tick


@dg.asset(deps=[dg.AssetKey("gpu_quotes")], group_name="placement", kinds={"python"}, description=__doc__)
def private_pools(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    now = virtual_now()
    reports = []
    with warehouse.get_connection() as con:
        for pool in load_pools():
            tick(pool.name, now=now, con=con)
            record_pool_facts(pool.name, con=con)  # raw.pool_events (pool_move_sensor moves the jobs)
    for pool in load_pools():
        reports.append(pool_report(pool.name, now=now))
    context.log.info(f"{len(reports)} private pools advanced to {now.isoformat()}")
    return dg.MaterializeResult(
        metadata={
            "pools": dg.MetadataValue.json(reports),
            "burst_hours": float(sum(r["burst_hours"] for r in reports)),
            "burst_cost_usd": float(sum(r["burst_cost_usd"] for r in reports)),
            "waiting_cost_usd": float(sum(r["waiting_cost_usd"] for r in reports)),
        }
    )


defs = dg.Definitions(assets=[private_pools])
