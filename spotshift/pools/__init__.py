"""Private GPU pools: owned or colocated capacity that jobs default to, with bursting to the clouds.

Seed 001 ("Hybrid Bursting from Private AI Clusters"), seed 000 (pattern C2H, data gravity):

* :mod:`~spotshift.pools.pool` — the declaration (``spotshift pools add``): GPU model, GPU count,
  price per GPU-hour (default from seed 000: an owned 8x A100 node costs $14.20 an hour including
  power, cooling and amortised hardware, i.e. $1.775 per GPU-hour, and is worth owning only above
  ~70 % utilisation), the site, the site's egress price.
* :mod:`~spotshift.pools.economics` — wait or burst, stay or come back: both choices costed.
* :mod:`~spotshift.pools.scheduler` — finite capacity, a FIFO queue, bursts and repatriations as
  the virtual clock advances (``spotshift pools submit|tick``, asset ``private_pools``); every
  event kept in the pool's ledger (:mod:`~spotshift.pools.state`), summarised by
  :func:`~spotshift.pools.scheduler.pool_report`; where a job would burst and what the trip costs:
  :mod:`~spotshift.pools.offers`.
"""
