"""A private pool's site, ``onprem/<site>``, as a location like any cloud region.

* Its region store is ``<stores base>/onprem/<site>`` (:func:`spotshift.home.region_store_url`),
  so datasets may live there, trainers checkpoint there and moves carry checkpoints in and out.
* Egress out of the site: the pool's ``egress_usd_per_gb``, default
  :data:`DEFAULT_SITE_EGRESS_USD_PER_GB`. Egress into it is what the sending cloud bills for
  internet egress (the cloud tables of :mod:`spotshift.pricing.egress`).
* Its price: the pool's $/GPU-hour times the job's GPUs (:func:`site_usage`), so the trainer's
  compute usage there is priced for the cost models and the report.

Standard library only (location checks call it before anything heavy is imported).
"""

from __future__ import annotations

from typing import Any

from spotshift.errors import ConfigError
from spotshift.pools.pool import DEFAULT_SITE_EGRESS_USD_PER_GB as DEFAULT_SITE_EGRESS_USD_PER_GB
from spotshift.pools.pool import load_pools
from spotshift.pricing.catalog import gpu_model_matches

#: the provider part of a private site's location
PRIVATE_PROVIDER = "onprem"
#: the market a pool's GPUs are "bought" on (owned capacity, no spot)
POOL_MARKET = "owned"


def is_private_site(location: str) -> bool:
    """Whether ``location`` (``provider/region[/zone]``) names a private site."""
    return isinstance(location, str) and location.strip().lower().startswith(PRIVATE_PROVIDER + "/")


def site_pool(location: str) -> Any:
    """The declared pool at ``location`` (``onprem/<site>``); :class:`ConfigError` when none is."""
    site = "/".join(location.strip().split("/")[:2])
    for pool in load_pools():
        if pool.location == site:
            return pool
    raise ConfigError(f"location {location!r}: no private pool is declared there (spotshift pools add)")


def site_egress_usd_per_gb(location: str) -> float:
    """USD per GB sent out of the private site ``location`` (its pool's rate)."""
    return float(site_pool(location).egress_usd_per_gb)


def site_usage(location: str, gpu_count: int) -> dict[str, Any]:
    """What ``gpu_count`` GPUs of the pool at ``location`` cost: the trainer's usage fields
    (``price_usd_hour`` = GPUs x the pool's $/GPU-hour; owned capacity has no list price)."""
    pool = site_pool(location)
    price = float(pool.usd_per_gpu_hour) * int(gpu_count)
    return {
        "market": POOL_MARKET,
        "instance_type": f"pool/{pool.name}",
        "gpu_model": pool.gpu_model,
        "gpu_count": int(gpu_count),
        "price_usd_hour": price,
        "list_price_usd_hour": price,
    }


def site_admits(job: Any, location: str) -> bool:
    """Whether ``job`` (a TrainingJob) may run at ``location`` as a private site: a declared pool is
    there and has the job's GPU model and count. A job's ``allowed_locations`` name the clouds it
    may burst to; the pool it is submitted to is always allowed."""
    if not is_private_site(location):
        return False

    try:
        pool = site_pool(location)
    except ConfigError:
        return False
    return gpu_model_matches(job.gpu_model, pool.gpu_model) and int(job.gpu_count) <= int(pool.gpus)
