"""``pool_move_sensor``: every 60 s, the moves the private pools' ledgers ask for become ``migration_job``
runs — a queue start placed on the pool's site (trigger ``place``), a burst to the cloud the pool chose
(trigger ``burst``), a repatriation back to the site (trigger ``return``), each with the whole lifecycle
(dataset delta-synced, checkpoint encrypted and carried, probation + shadow validation when a running
source is left, go-live, or ``rollback_job`` on failure).

The pools decide (asset ``private_pools``: hysteresis, cooldown, deadlines); this sensor only carries
the decisions out. Run keys are ``<job>:<from>-><to>:pool-<pool>@<event time>``
(:func:`spotshift.pools.lifecycle.plan_for_event`), so a re-evaluated tick never starts a second run
for the same event, and a move whose run key has a ``raw.migrations`` row is done. ``spotshift pools
tick --move`` runs the same plans without Dagster.
"""

import dagster as dg

from assets.partitions import regions_partitions
from ops.migration import migration_job
from resources.compute import ComputeBackendResource
from resources.warehouse import WarehouseResource
from sensors.price_change import _busy_jobs
from spotshift.migration import contract
from spotshift.pools.lifecycle import pending_moves, record_pool_facts
from spotshift.pools.pool import load_pools


@dg.sensor(job=migration_job, minimum_interval_seconds=60, description=__doc__)
def pool_move_sensor(
    context: dg.SensorEvaluationContext, warehouse: WarehouseResource, compute: ComputeBackendResource
) -> dg.SensorResult | dg.SkipReason:
    pools = load_pools()
    if not pools:
        return dg.SkipReason("no private pools declared")
    busy = _busy_jobs(context.instance)
    requests, sites = [], []
    with warehouse.get_connection() as con:
        for pool in pools:
            record_pool_facts(pool.name, con=con)
            sites.append(pool.location)
            for plan in pending_moves(pool.name, con, backend=compute.backend()):
                if plan.job in busy:
                    continue
                requests.append(
                    dg.RunRequest(
                        run_key=plan.run_key,
                        run_config=contract.move_run_config(plan.to_dict()),
                        tags=plan.tags(),
                    )
                )
    known = set(context.instance.get_dynamic_partitions(regions_partitions.name))
    new_sites = sorted(set(sites) - known)
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[regions_partitions.build_add_request(new_sites)] if new_sites else [],
    )


defs = dg.Definitions(sensors=[pool_move_sensor])
