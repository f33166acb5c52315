"""The spotshift code location: one ``Definitions`` assembled from assets/, sensors/, ops/ and resources/.

Each domain module exposes ``defs`` (its assets, checks, jobs, schedules, sensors); the shared
resources are bound here once. Their settings are ``dg.EnvVar`` references (the UI shows the
variable, each process resolves it at run time); variables the user left unset get their
defaults here, at load (the warehouse from ``SPOTSHIFT_HOME``).
"""

from __future__ import annotations

import os

import dagster as dg

import assets.checkpoints
import assets.costs
import assets.cutover
import assets.datasets
import assets.devenvs
import assets.inference
import assets.placement
import assets.pools
import assets.quotes
import assets.training
import ops.checkpoint
import ops.cutover
import ops.devenvs
import ops.inference
import ops.migration
import sensors.cutover
import sensors.datasets
import sensors.devenvs
import sensors.inference
import sensors.jobs
import sensors.pools
import sensors.preemption
import sensors.price_change
import sensors.price_poll
import sensors.run_status
from ops.step_store import move_io_manager
from resources.compute import ComputeBackendResource, ReplicaLauncherResource
from resources.dbt import dbt_resource
from resources.keys import KeyProviderResource
from resources.prices import PriceFeedResource
from resources.stores import stores_resource_from_env
from resources.warehouse import WarehouseResource
from spotshift.home import warehouse_path

os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# dbt and every subprocess read the warehouse through the same variable as the resource
os.environ.setdefault("SPOTSHIFT_WAREHOUSE", str(warehouse_path()))
os.environ.setdefault("SPOTSHIFT_COMPUTE_BACKEND", "local")
os.environ.setdefault("SPOTSHIFT_REPLICA_LAUNCHER", "local")
os.environ.setdefault("SPOTSHIFT_KEY_PROVIDER", "")  # empty: the local key file under SPOTSHIFT_HOME

DOMAIN_MODULES: list = [
    assets.quotes,
    sensors.price_poll,
    assets.placement,
    sensors.jobs,
    assets.checkpoints,
    assets.training,
    ops.checkpoint,
    ops.migration,
    sensors.price_change,
    sensors.preemption,
    sensors.run_status,
    assets.datasets,
    sensors.datasets,
    assets.costs,
    assets.inference,
    ops.inference,
    sensors.inference,
    assets.pools,
    sensors.pools,
    assets.devenvs,
    ops.devenvs,
    sensors.devenvs,
    ops.cutover,
    assets.cutover,
    sensors.cutover,
]


def build_resources() -> dict[str, object]:
    """Resources shared by every asset, sensor and op of the code location."""
    return {
        "warehouse": WarehouseResource(database=dg.EnvVar("SPOTSHIFT_WAREHOUSE")),
        "dbt": dbt_resource(),
        "prices": PriceFeedResource.from_env(),
        "compute": ComputeBackendResource(kind=dg.EnvVar("SPOTSHIFT_COMPUTE_BACKEND")),
        "keys": KeyProviderResource(spec=dg.EnvVar("SPOTSHIFT_KEY_PROVIDER")),
        "stores": stores_resource_from_env(),
        "launcher": ReplicaLauncherResource(kind=dg.EnvVar("SPOTSHIFT_REPLICA_LAUNCHER")),
        # step results (the move chains' MoveState): the step store when configured, else
        # $DAGSTER_HOME/storage as Dagster's default (ops/step_store.py)
        "io_manager": move_io_manager,
    }


defs = dg.Definitions.merge(
    *(m.defs for m in DOMAIN_MODULES),
    # steps run in the run worker's process: the control plane's jobs are short chains, and a
    # process per step costs seconds of start-up each (dg.multiprocess_executor stays available)
    dg.Definitions(resources=build_resources(), executor=dg.in_process_executor),
)
