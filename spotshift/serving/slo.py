"""What one replica can serve, and the share of requests that meet a latency SLO at a given load.

A request's latency is ``network round trip + queueing delay + inference time``:

* the round trip comes from :mod:`spotshift.serving.latency`;
* inference time is :attr:`ServingProfile.inference_ms` (one request on an idle replica, greedy
  decoding of ``tokens_per_request`` tokens: close to deterministic);
* queueing: the replicas of one location form one pool of ``c`` parallel slots (continuous
  batching: a replica holds ``saturation_requests_s x inference_s`` requests in flight at
  saturation, Little's law). The wait is modelled as an M/D/c queue with the Erlang-C tail
  ``P(W > x) = Pw x exp(-c (1 - rho) x / (s (ca^2 + cs^2) / 2))`` where ``Pw`` uses Sakasegawa's
  approximation ``rho ** (sqrt(2 (c + 1)) - 1)`` (Sakasegawa 1977; Hopp & Spearman, *Factory
  Physics*, eq. 8.17) and ``(ca^2 + cs^2) / 2 = 1/2`` for Poisson arrivals and deterministic service
  (Allen-Cunneen). A pool at or past saturation (``rho >= 1``) builds an unbounded queue: every
  request of that interval counts as late (conservative).

**Capacity at the SLO.** Operators measure a replica's capacity the way ``spotshift loadgen``
does: the highest throughput (tokens/s) at which one replica's p99 latency for nearby users stays
within the SLO. :meth:`ServingProfile.saturation_ratio` inverts the queueing model at that point
(one replica, metro round trip, p99), so a profile is consistent with its own definition: loading
one replica to its capacity gives exactly 1 % late requests; pools of several replicas do better
(pooling), distant users worse (less budget left for queueing).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

from spotshift.errors import ConfigError

VARIABILITY = 0.5  # (ca^2 + cs^2) / 2 with Poisson arrivals (ca^2 = 1) and deterministic service (cs^2 = 0)
CAPACITY_PERCENTILE = 0.99  # capacity_tokens_s is measured at the p99
LOCAL_RTT_MS = 2.0  # round trip of the "nearby users" the capacity is measured for


@dataclass(frozen=True)
class ServingProfile:
    """One replica of one model on one instance type, as measured (inputs, not guesses).

    ``capacity_tokens_s``: tokens/s (in + out) one replica serves with p99 within ``slo_ms`` for
    nearby users. ``tokens_per_request``: mean tokens per request. ``inference_ms``: latency of one
    request on an idle replica. ``cold_start_s``: launch to first request served (boot, weights
    download, load). ``notice_s``: spot preemption notice (GCP 30 s, DESIGN §3); a draining
    replica finishes its in-flight requests within it.
    """

    slo_ms: float = 1000.0
    capacity_tokens_s: float = 2400.0
    tokens_per_request: float = 512.0
    inference_ms: float = 800.0
    cold_start_s: float = 240.0
    notice_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("slo_ms", "capacity_tokens_s", "tokens_per_request", "inference_ms"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(f"serving profile: {name} must be a positive number, got {v!r}")
        for name in ("cold_start_s", "notice_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"serving profile: {name} must be >= 0, got {v!r}")
        if self.inference_ms + LOCAL_RTT_MS >= self.slo_ms:
            raise ConfigError(
                f"serving profile: inference_ms {self.inference_ms:g} leaves no room within the "
                f"SLO of {self.slo_ms:g} ms"
            )
        if self.notice_s * 1000.0 < self.inference_ms:
            raise ConfigError("serving profile: notice_s is shorter than one request; drains would fail")

    @property
    def capacity_requests_s(self) -> float:
        """Requests/s one replica serves within the SLO."""
        return self.capacity_tokens_s / self.tokens_per_request

    @property
    def saturation_ratio(self) -> float:
        """Utilisation of saturation at which one replica has exactly p99 = SLO (see module doc)."""
        return _saturation_ratio(
            self.capacity_requests_s, self.inference_ms, self.slo_ms - self.inference_ms - LOCAL_RTT_MS
        )

    @property
    def slots_per_replica(self) -> float:
        """Requests one replica holds in flight at saturation (Little's law)."""
        return self.capacity_requests_s / self.saturation_ratio * self.inference_ms / 1000.0

    def to_dict(self) -> dict[str, float]:
        """Plain dict (recorded with simulations and decisions)."""
        return dict(self.__dict__)


def wait_tail(rho: Any, slots: Any, x_ms: Any, service_ms: float) -> Any:
    """``P(wait > x_ms)`` of an M/D/c pool at utilisation ``rho`` with ``slots`` servers (numpy-friendly).

    ``rho >= 1`` gives 1 (unstable queue). Works on scalars and arrays alike.
    """
    import numpy as np

    rho = np.asarray(rho, dtype=float)
    slots = np.maximum(np.asarray(slots, dtype=float), 1e-9)
    x = np.maximum(np.asarray(x_ms, dtype=float), 0.0)
    stable = rho < 1.0
    r = np.clip(rho, 0.0, 1.0 - 1e-12)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        p_wait = np.where(r > 0, r ** (np.sqrt(2.0 * (slots + 1.0)) - 1.0), 0.0)
        tail = p_wait * np.exp(-slots * (1.0 - r) * x / (service_ms * VARIABILITY))
    return np.where(stable, np.clip(tail, 0.0, 1.0), 1.0)


@functools.cache
def _saturation_ratio(capacity_req_s: float, service_ms: float, budget_ms: float) -> float:
    # bisection on rho: one replica loaded to capacity has p99 wait == budget. Slots depend on rho
    # (saturation = capacity / rho), and the tail grows with rho, so the root is unique.
    target = 1.0 - CAPACITY_PERCENTILE

    def tail(rho: float) -> float:
        slots = capacity_req_s / rho * service_ms / 1000.0
        return float(wait_tail(rho, slots, budget_ms, service_ms))

    lo, hi = 1e-6, 1.0 - 1e-9
    if tail(hi) <= target:
        return hi
    for _ in range(80):
        mid = (lo + hi) / 2
        if tail(mid) > target:
            hi = mid
        else:
            lo = mid
    return lo


def within_slo_share(
    profile: ServingProfile, rtt_ms: Any, load_tokens_s: Any, replicas: Any, slo_ms: float | None = None
) -> Any:
    """Share of requests that meet the SLO for a flow with round trip ``rtt_ms`` into a pool of
    ``replicas`` ready replicas carrying ``load_tokens_s`` in total (numpy-friendly).

    0 where the round trip plus inference alone exceed the SLO, or where the pool is empty or past
    saturation.
    """
    import numpy as np

    slo = profile.slo_ms if slo_ms is None else slo_ms
    n = np.asarray(replicas, dtype=float)
    load = np.asarray(load_tokens_s, dtype=float)
    sat_tokens = n * profile.capacity_tokens_s / profile.saturation_ratio
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(n > 0, load / np.where(sat_tokens > 0, sat_tokens, 1.0), np.inf)
    budget = slo - np.asarray(rtt_ms, dtype=float) - profile.inference_ms
    tail = wait_tail(rho, n * profile.slots_per_replica, budget, profile.inference_ms)
    return np.where((budget >= 0) & (n > 0), 1.0 - tail, 0.0)


def max_utilisation(profile: ServingProfile, rtt_ms: Any, replicas: Any, target: float = 0.999) -> Any:
    """The highest load, as a share of the pool's capacity at the SLO, at which ``target`` of the
    requests of users ``rtt_ms`` away still meet the SLO in a pool of ``replicas`` (numpy-friendly;
    0 where even an idle pool cannot). The router fills a pool for a user region up to this level.
    """
    import numpy as np

    rtt = np.asarray(rtt_ms, dtype=float)
    n = np.asarray(replicas, dtype=float)
    rtt, n = np.broadcast_arrays(rtt, n)
    lo = np.zeros(rtt.shape)
    hi = np.full(rtt.shape, 1.0 / profile.saturation_ratio)  # saturation, as a share of capacity
    cap = profile.capacity_tokens_s

    def ok(util: Any) -> Any:
        return within_slo_share(profile, rtt, util * n * cap, n) >= target

    possible = ok(np.full(rtt.shape, 1e-9)) & (n > 0)
    for _ in range(40):
        mid = (lo + hi) / 2
        good = ok(mid)
        lo = np.where(good, mid, lo)
        hi = np.where(good, hi, mid)
    return np.where(possible, lo, 0.0)


class PoolSizer:
    """Tabulated :func:`max_utilisation` per round trip, for pools of 1..``max_replicas`` (larger
    pools use the largest entry: pooling gains flatten out), and the smallest pool that carries a
    load within the SLO. One per (profile, target), see :func:`pool_sizer`."""

    def __init__(self, profile: ServingProfile, target: float, max_replicas: int = 64) -> None:
        self.profile, self.target, self.max_replicas = profile, target, max_replicas
        self._rows: dict[float, Any] = {}
        self._reachable: dict[float, bool] = {}

    def row(self, rtt_ms: float) -> Any:
        """``umax`` for pools of 0..max_replicas replicas (index = pool size) at this round trip."""
        import numpy as np

        key = round(float(rtt_ms), 1)
        row = self._rows.get(key)
        if row is None:
            n = np.arange(self.max_replicas + 1, dtype=float)
            row = self._rows[key] = max_utilisation(self.profile, np.full(n.shape, key), n, self.target)
        return row

    def reachable(self, rtt_ms: float) -> bool:
        """Some pool (up to ``max_replicas``) keeps ``target`` of these users' requests within the SLO."""
        ok = self._reachable.get(rtt_ms)
        if ok is None:
            ok = self._reachable[rtt_ms] = self.umax(rtt_ms, self.max_replicas) > 0
        return ok

    def umax(self, rtt_ms: float, replicas: int) -> float:
        """Usable share of capacity for users ``rtt_ms`` away in a pool of ``replicas``."""
        return float(self.row(rtt_ms)[min(max(0, replicas), self.max_replicas)])

    def replicas_for(self, rtt_ms: float, tokens_s: float) -> int | None:
        """Smallest pool that serves ``tokens_s`` from users ``rtt_ms`` away within the SLO at
        ``target`` (at least ``tokens_s / capacity``); ``None`` when no pool can."""
        cap = self.profile.capacity_tokens_s
        if tokens_s <= 0:
            return 0
        n = max(1, math.ceil(tokens_s * self.profile.saturation_ratio / cap - 1e-9))
        row = self.row(rtt_ms)
        while n <= self.max_replicas:
            if row[n] * n * cap >= tokens_s - 1e-9:
                return n
            n += 1
        best = float(row[self.max_replicas])
        return math.ceil(tokens_s / (best * cap) - 1e-9) if best > 0 else None


_SIZERS: dict[tuple[ServingProfile, float], PoolSizer] = {}


def pool_sizer(profile: ServingProfile, target: float) -> PoolSizer:
    """The shared :class:`PoolSizer` of a profile and target (tables are built once per process)."""
    key = (profile, target)
    if key not in _SIZERS:
        _SIZERS[key] = PoolSizer(profile, target)
    return _SIZERS[key]
