"""Where each inference request goes: the routing rule, its online latency model, and the policy object.

One rule, two uses. :func:`route` picks the replica for one request inside ``spotshift router``;
:func:`traffic_policy` turns the same rule into per-replica weights with reasons (a
:class:`TrafficPolicy`) that the ``traffic_policy`` asset records and a proxy backend
(:mod:`spotshift.serving.nginx`) renders. Both go through :func:`_groups`, so they cannot disagree.

The rule (seed 000, issue 14), for a request from users in ``user_region`` of ``tokens`` tokens:

1. **Predict** each ready replica's latency: network round trip
   (:func:`spotshift.serving.latency.rtt_ms`) + queueing delay (requests ahead of this one on the
   replica, from the router's live in-flight count, each ``slots``-th of a typical request's
   service time) + inference time predicted from the tokens (:class:`InferenceTimeModel`, learned
   online from the replicas' observed service times).
2. **Filter** to the replicas whose prediction meets the endpoint's SLO.
3. **Split**: a seeded draw sends ``cheap_share`` (80 %) of requests to the cheapest location by
   cost per million tokens and the rest to the location with the lowest predicted latency. Within
   the chosen location, the replica with the fewest outstanding requests (least outstanding
   requests; ties: lower prediction, then id).
4. **None meets the SLO**: the fastest replica, and the decision says ``slo_violation`` so the
   router counts it and signals the autoscaler.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spotshift.errors import ConfigError
from spotshift.serving.latency import region_of_location, rtt_ms

CHEAP_SHARE = 0.8  # seed 000: 80 % of traffic to the cheapest replicas meeting the SLO
DEFAULT_SEED = 0  # seed 000: the split's draws are reproducible
COST_TIE = 1e-9  # relative: replicas this close in cost per million tokens are one tier


@dataclass(frozen=True)
class ReplicaView:
    """One replica as the router sees it (from the endpoint's replica registry).

    ``price_usd_hour``: what the replica costs in its market; ``capacity_tokens_s``: tokens/s it
    serves within the SLO (measured, see :mod:`spotshift.serving.slo`); ``slots``: requests it
    serves in parallel. ``state``: ``ready`` or ``draining`` (draining replicas get no traffic);
    ``checkpoint``: the checkpoint it serves (a cutover's side, empty when not known).
    """

    replica_id: str
    url: str
    location: str
    market: str = "on_demand"
    price_usd_hour: float = 1.0
    capacity_tokens_s: float = 1000.0
    slots: int = 1
    state: str = "ready"
    checkpoint: str = ""

    def __post_init__(self) -> None:
        region_of_location(self.location)  # ConfigError naming an unknown location
        if not (math.isfinite(self.price_usd_hour) and self.price_usd_hour >= 0):
            raise ConfigError(f"replica {self.replica_id}: price_usd_hour must be >= 0")
        if not (math.isfinite(self.capacity_tokens_s) and self.capacity_tokens_s > 0):
            raise ConfigError(f"replica {self.replica_id}: capacity_tokens_s must be > 0")
        if self.slots < 1:
            raise ConfigError(f"replica {self.replica_id}: slots must be >= 1")

    # computed once per view (the router asks for both on every request; the fields are frozen)
    @functools.cached_property
    def cost_per_million_tokens(self) -> float:
        """USD per million tokens at capacity: ``price / (capacity x 3600) x 1e6``."""
        return self.price_usd_hour / (self.capacity_tokens_s * 3600.0) * 1e6

    @functools.cached_property
    def region(self) -> str:
        """``provider/region`` (zones fold into their region)."""
        return region_of_location(self.location)


class InferenceTimeModel:
    """Service time (ms) of a request from its token count, learned online per replica.

    ``ms = base_ms + per_token_ms x tokens``, fitted by exponentially weighted least squares
    (weights decay by ``decay`` per observation, so the model follows a replica that slows down).
    Two pseudo-observations on the prior line (``prior_weight`` each) keep the fit defined before
    data arrives; a replica with fewer than ``min_samples`` observations of its own borrows the
    pooled fit of all replicas. Predictions are never negative.
    """

    def __init__(
        self,
        prior_base_ms: float = 20.0,
        prior_per_token_ms: float = 1.0,
        decay: float = 0.98,
        prior_weight: float = 1.0,
        min_samples: int = 3,
    ) -> None:
        if not 0 < decay <= 1:
            raise ConfigError("inference time model: decay must be within (0, 1]")
        self.prior = (prior_base_ms, prior_per_token_ms)
        self.decay, self.prior_weight, self.min_samples = decay, prior_weight, min_samples
        self._sums: dict[str, list[float]] = {}  # key -> [S0, Sx, Sxx, Sy, Sxy]
        self._counts: dict[str, int] = {}
        self._coefs: dict[str, tuple[float, float]] = {}  # key -> fit, dropped when the key learns
        self.mean_tokens = 64.0

    def _fresh(self) -> list[float]:
        base, slope = self.prior
        s = [0.0] * 5
        for x in (0.0, 100.0):
            y = base + slope * x
            w = self.prior_weight
            s[0] += w
            s[1] += w * x
            s[2] += w * x * x
            s[3] += w * y
            s[4] += w * x * y
        return s

    def observe(self, replica_id: str, tokens: float, service_ms: float) -> None:
        """Learn from one request served in ``service_ms`` (without queueing) on ``replica_id``."""
        if not (math.isfinite(service_ms) and service_ms >= 0 and tokens >= 0):
            return
        self.mean_tokens = 0.98 * self.mean_tokens + 0.02 * tokens
        for key in (replica_id, "*"):
            s = self._sums.get(key)
            if s is None:
                s = self._sums[key] = self._fresh()
            self._coefs.pop(key, None)
            for i in range(5):
                s[i] *= self.decay
            s[0] += 1.0
            s[1] += tokens
            s[2] += tokens * tokens
            s[3] += service_ms
            s[4] += tokens * service_ms
            self._counts[key] = self._counts.get(key, 0) + 1

    def coefficients(self, replica_id: str) -> tuple[float, float]:
        """``(base_ms, per_token_ms)`` for ``replica_id`` (pooled or prior when it has too few samples)."""
        key = replica_id if self._counts.get(replica_id, 0) >= self.min_samples else "*"
        fit = self._coefs.get(key)
        if fit is None:
            fit = self._coefs[key] = self._fit(key)
        return fit

    def _fit(self, key: str) -> tuple[float, float]:
        s = self._sums.get(key)
        if s is None:
            return self.prior
        det = s[0] * s[2] - s[1] * s[1]
        if det <= 1e-9 * max(1.0, s[0] * s[2]):
            return max(0.0, s[3] / s[0]), 0.0
        slope = (s[0] * s[4] - s[1] * s[3]) / det
        if slope < 0:  # more tokens never take less time: the best flat line
            return max(0.0, s[3] / s[0]), 0.0
        base = (s[3] - slope * s[1]) / s[0]
        if base < 0:  # no negative fixed cost: the best line through the origin
            return 0.0, max(0.0, s[4] / s[2])
        return base, slope

    def predict(self, replica_id: str, tokens: float) -> float:
        """Predicted service time in ms of ``tokens`` tokens on ``replica_id``."""
        base, slope = self.coefficients(replica_id)
        return max(0.0, base + slope * tokens)


@dataclass(frozen=True)
class Candidate:
    """One replica's predicted latency for one request; ``meets_slo``: prediction within the SLO."""

    replica: ReplicaView
    rtt_ms: float
    queue_ms: float
    inference_ms: float
    outstanding: int
    meets_slo: bool

    @property
    def predicted_ms(self) -> float:
        """Round trip + queueing + inference."""
        return self.rtt_ms + self.queue_ms + self.inference_ms


def evaluate(
    replicas: Sequence[ReplicaView],
    outstanding: Mapping[str, int],
    user_region: str,
    tokens: float,
    model: InferenceTimeModel,
    slo_ms: float,
    rtt: Callable[[str, str], float] = rtt_ms,
) -> list[Candidate]:
    """Predict every ready replica's latency for a request of ``tokens`` from ``user_region``.

    Queueing: the requests ahead that cannot start at once (``outstanding - slots + 1`` when
    positive), drained ``slots`` at a time, each taking a typical request's service time.
    """
    out = []
    for r in replicas:
        if r.state != "ready":
            continue
        n = int(outstanding.get(r.replica_id, 0))
        ahead = max(0, n - r.slots + 1)
        queue = ahead / r.slots * model.predict(r.replica_id, model.mean_tokens)
        infer = model.predict(r.replica_id, tokens)
        net = float(rtt(user_region, r.location))
        out.append(Candidate(r, net, queue, infer, n, net + queue + infer <= slo_ms))
    return out


@dataclass(frozen=True)
class Groups:
    """The rule's outcome before the draw: the cheapest tier, the fastest location's replicas,
    or (nothing meets the SLO) the single fastest replica."""

    cheapest: tuple[Candidate, ...]
    fastest: tuple[Candidate, ...]
    violation: bool


def _groups(cands: Sequence[Candidate]) -> Groups | None:
    if not cands:
        return None
    meeting = [c for c in cands if c.meets_slo]
    if not meeting:
        best = min(cands, key=lambda c: (c.predicted_ms, c.replica.replica_id))
        return Groups((best,), (best,), True)
    cost = min(c.replica.cost_per_million_tokens for c in meeting)
    cheap_loc = min(
        (c for c in meeting if c.replica.cost_per_million_tokens <= cost * (1 + COST_TIE)),
        key=lambda c: (c.predicted_ms, c.replica.replica_id),
    ).replica.region
    cheapest = tuple(
        c
        for c in meeting
        if c.replica.region == cheap_loc and c.replica.cost_per_million_tokens <= cost * (1 + COST_TIE)
    )
    fast_loc = min(meeting, key=lambda c: (c.predicted_ms, c.replica.replica_id)).replica.region
    fastest = tuple(c for c in meeting if c.replica.region == fast_loc)
    return Groups(cheapest, fastest, False)


def _least_outstanding(group: Sequence[Candidate]) -> Candidate:
    return min(group, key=lambda c: (c.outstanding, c.predicted_ms, c.replica.replica_id))


@dataclass(frozen=True)
class RouteChoice:
    """The replica for one request: ``kind`` is ``cheapest``, ``fastest`` or ``fallback`` (no
    replica meets the SLO: ``slo_violation``)."""

    candidate: Candidate
    kind: str
    slo_violation: bool


def route(cands: Sequence[Candidate], draw: float, cheap_share: float = CHEAP_SHARE) -> RouteChoice | None:
    """Pick the replica for one request; ``draw`` is uniform in [0, 1) from the router's seeded
    generator (below ``cheap_share``: the cheapest tier). ``None`` when there is no candidate."""
    g = _groups(cands)
    if g is None:
        return None
    if g.violation:
        return RouteChoice(g.fastest[0], "fallback", True)
    if draw < cheap_share:
        return RouteChoice(_least_outstanding(g.cheapest), "cheapest", False)
    return RouteChoice(_least_outstanding(g.fastest), "fastest", False)


@dataclass(frozen=True)
class ReplicaWeight:
    """A replica's share of the endpoint's traffic in a :class:`TrafficPolicy`, with why."""

    replica_id: str
    url: str
    location: str
    market: str
    weight: float
    cost_per_million_tokens: float
    predicted_ms: Mapping[str, float]
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class TrafficPolicy:
    """The router's rule as weights: what a proxy backend renders and ``traffic_policy`` records.

    ``weights`` sum to 1 over the replicas that get traffic; replicas with weight 0 stay listed
    (backends keep them as retry targets). ``violations``: user regions no replica serves within
    the SLO.
    """

    endpoint: str
    slo_ms: float
    cheap_share: float
    users: Mapping[str, float]
    weights: tuple[ReplicaWeight, ...]
    violations: tuple[str, ...] = field(default_factory=tuple)

    def integer_weights(self, scale: int = 100) -> dict[str, int]:
        """Weights as integers for proxies (``round(weight x scale)``, at least 1 where positive)."""
        return {w.replica_id: max(1, round(w.weight * scale)) if w.weight > 0 else 0 for w in self.weights}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "endpoint": self.endpoint,
            "slo_ms": self.slo_ms,
            "cheap_share": self.cheap_share,
            "users": dict(self.users),
            "violations": list(self.violations),
            "weights": [
                {**w.__dict__, "predicted_ms": dict(w.predicted_ms), "reasons": list(w.reasons)}
                for w in self.weights
            ],
        }


def traffic_policy(
    endpoint: str,
    replicas: Sequence[ReplicaView],
    users: Mapping[str, float],
    model: InferenceTimeModel,
    slo_ms: float,
    outstanding: Mapping[str, int] | None = None,
    tokens: float | None = None,
    cheap_share: float = CHEAP_SHARE,
    rtt: Callable[[str, str], float] = rtt_ms,
) -> TrafficPolicy:
    """The expected traffic shares of :func:`route` for a user mix ``users`` (region -> share).

    Per user region: ``cheap_share`` spread evenly over the cheapest tier (least outstanding
    requests evens it out), the rest over the fastest location; no replica within the SLO: all
    of it to the fastest replica, and the region is listed in ``violations``. Shares are weighted
    by the user mix. ``tokens``: the request size assumed (default: the model's running mean).
    """
    total = sum(users.values())
    if not users or total <= 0 or any(v < 0 for v in users.values()):
        raise ConfigError(f"traffic policy for {endpoint}: user shares must be >= 0 with a positive sum")
    size = model.mean_tokens if tokens is None else tokens
    weight: dict[str, float] = {r.replica_id: 0.0 for r in replicas}
    reasons: dict[str, list[str]] = {r.replica_id: [] for r in replicas}
    predicted: dict[str, dict[str, float]] = {r.replica_id: {} for r in replicas}
    violations = []
    for region, share in sorted(users.items()):
        cands = evaluate(replicas, outstanding or {}, region, size, model, slo_ms, rtt)
        for c in cands:
            predicted[c.replica.replica_id][region] = round(c.predicted_ms, 1)
        g = _groups(cands)
        if g is None:
            violations.append(region)
            continue
        if g.violation:
            violations.append(region)
            parts = [(g.fastest, 1.0, f"{region}: no replica within {slo_ms:g} ms; fastest")]
        else:
            parts = [
                (g.cheapest, cheap_share, f"{region}: cheapest within the SLO"),
                (g.fastest, 1.0 - cheap_share, f"{region}: fastest within the SLO"),
            ]
        for group, part, why in parts:
            for c in group:
                rid = c.replica.replica_id
                weight[rid] += share / total * part / len(group)
                reasons[rid].append(
                    f"{why} ({c.replica.cost_per_million_tokens:.3f} USD/Mtok, {c.predicted_ms:.0f} ms predicted)"
                )
    rows = tuple(
        ReplicaWeight(
            r.replica_id,
            r.url,
            r.location,
            r.market,
            round(weight[r.replica_id], 6),
            round(r.cost_per_million_tokens, 6),
            predicted[r.replica_id],
            tuple(reasons[r.replica_id])
            or (
                (f"state {r.state}",)
                if r.state != "ready"
                else ("not cheapest or fastest for any user region",)
            ),
        )
        for r in sorted(replicas, key=lambda r: r.replica_id)
    )
    return TrafficPolicy(endpoint, slo_ms, cheap_share, dict(users), rows, tuple(violations))
