"""Routing inside the inference simulator: per tick, vectorised over the window, which pools take
each user region's traffic (see :mod:`spotshift.serving.simulate`)."""

from __future__ import annotations

from typing import Any

from spotshift.serving.sim_world import SimInputs
from spotshift.serving.slo import pool_sizer

COST_ROUTING_SHARE = 0.8  # seed 000: 80 % of traffic to the cheapest replicas meeting the SLO
ROUTER_SLO_TARGET = 0.9999  # the router fills a pool for a user region while this share stays within the SLO


def route_flows(sim: SimInputs, ready: Any, price: Any, mode: str) -> tuple[Any, Any]:
    """Flows ``[T, U, L]`` (tokens/s) and unserved ``[T, U]`` for ready counts ``[T, L]``.

    A pool takes a user region's traffic only up to the load at which that region's requests still
    meet the SLO at :data:`ROUTER_SLO_TARGET` (:class:`~spotshift.serving.slo.PoolSizer`: the
    router's "replicas whose predicted latency meets the SLO").
    """
    import numpy as np

    T, L = ready.shape
    U = len(sim.users)
    prof = sim.profile
    cap = prof.capacity_tokens_s
    sizer = pool_sizer(prof, ROUTER_SLO_TARGET)
    n_idx = np.minimum(ready.astype(int), sizer.max_replicas)
    load = np.zeros((T, L))
    cap_of_pool = np.full((T, L), np.inf)  # the strictest limit of the user regions a pool serves
    flows = np.zeros((T, U, L))
    reachable = (sim.rtt + prof.inference_ms) <= prof.slo_ms  # [U, L]: the SLO is reachable at all
    order_users = sorted(range(U), key=lambda j: (int(reachable[j].sum()), j))
    rows = np.arange(T)
    left_all = np.zeros((T, U))
    for j in order_users:
        table = np.stack([sizer.row(float(sim.rtt[j, i])) for i in range(L)])  # [L, n + 1]
        own = table[np.arange(L)[None, :], n_idx] * ready * cap  # [T, L]
        usable = own > 0
        limit = np.minimum(own, cap_of_pool)
        demand = sim.demand[:, j].copy()
        if mode == "cost":
            parts = [
                (demand * COST_ROUTING_SHARE, np.where(usable, price, np.inf)),
                (demand * (1 - COST_ROUTING_SHARE), np.where(usable, sim.rtt[j][None, :], np.inf)),
            ]
            left = np.zeros(T)
            for part, key in parts:
                order = np.argsort(key, axis=1, kind="stable")
                for r in range(L):
                    loc = order[:, r]
                    room = np.maximum(limit[rows, loc] - load[rows, loc], 0.0)
                    take = np.where(np.isfinite(key[rows, loc]), np.minimum(part, room), 0.0)
                    flows[rows, j, loc] += take
                    load[rows, loc] += take
                    part = part - take
                left += part
        else:  # least load: spread by free room among the pools meeting the SLO
            free = np.maximum(limit - load, 0.0)
            total = free.sum(axis=1)
            share = np.where(total[:, None] > 0, free / np.where(total > 0, total, 1.0)[:, None], 0.0)
            take = np.minimum(share * demand[:, None], free)
            flows[:, j, :] += take
            load += take
            left = demand - take.sum(axis=1)
        cap_of_pool = np.where(flows[:, j, :] > 0, np.minimum(cap_of_pool, own), cap_of_pool)
        left_all[:, j] = np.maximum(left, 0.0)
    # overflow: spread over the pools that can reach the SLO at all, in proportion to their spare
    # capacity to saturation (least outstanding requests); none: the fastest pool with replicas;
    # with no ready replica anywhere the traffic fails
    unserved = np.zeros((T, U))
    saturation = ready * cap / prof.saturation_ratio
    any_ready = ready.sum(axis=1) > 0
    for j in range(U):
        left = left_all[:, j]
        if not left.any():
            continue
        spare = np.where(reachable[j][None, :] & (ready > 0), np.maximum(saturation - load, 0.0), 0.0)
        total = spare.sum(axis=1)
        share = np.where(total[:, None] > 0, spare / np.where(total > 0, total, 1.0)[:, None], 0.0)
        fast_key = np.where(ready > 0, sim.rtt[j][None, :], np.inf)
        fastest = fast_key.argmin(axis=1)
        add = share * left[:, None]
        add[rows, fastest] += np.where((total <= 0) & any_ready, left, 0.0)
        flows[:, j, :] += add
        load += add
        unserved[:, j] = np.where(any_ready, 0.0, left)
    return flows, unserved
