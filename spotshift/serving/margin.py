"""How far the router's latency predictions run short: the margin it keeps under the SLO.

The router sends a request to a replica whose *predicted* latency (round trip + queueing from the
live in-flight count + inference time, :func:`spotshift.serving.policy.evaluate`) meets the SLO.
Cost-first routing fills the cheapest replica until that prediction reaches the SLO, so every
prediction error lands on the tail: a replica whose service time jitters (a shared CPU, a
neighbour's burst) or a survivor taking a drained replica's share would serve its tail past the
SLO. :class:`PredictionMargin` tracks the ``quantile`` (p99) of ``observed - predicted`` over the
last ``window`` answered requests, and the router requires ``predicted + margin <= SLO``: the
prediction at the p99, not at the mean. The margin never goes below 0 and never above
``max_share`` of the SLO (past that, the rule would only send traffic to the fastest replica).
"""

from __future__ import annotations

from collections import deque

from spotshift.errors import ConfigError


class PredictionMargin:
    """The p99 of the router's prediction error (ms), recomputed every ``every`` observations."""

    def __init__(
        self, quantile: float = 0.99, window: int = 512, every: int = 32, max_share: float = 0.5
    ) -> None:
        if not (0 < quantile < 1 and window > 0 and every > 0 and 0 <= max_share <= 1):
            raise ConfigError(
                "prediction margin: quantile in (0, 1), window and every > 0, max_share in [0, 1]"
            )
        self.quantile, self.every, self.max_share = quantile, every, max_share
        self.errors: deque[float] = deque(maxlen=window)
        self._seen = 0
        self._ms = 0.0

    def observe(self, predicted_ms: float, observed_ms: float) -> None:
        """One answered request: what the rule predicted for it and what the router measured."""
        self.errors.append(observed_ms - predicted_ms)
        self._seen += 1
        if self._seen % self.every == 0 or self._seen < self.every:
            ordered = sorted(self.errors)
            self._ms = max(0.0, ordered[int(self.quantile * (len(ordered) - 1))])

    def effective_slo(self, slo_ms: float) -> float:
        """The SLO predictions must meet: ``slo - margin``, the margin capped at ``max_share x slo``."""
        return slo_ms - min(self._ms, self.max_share * slo_ms)

    @property
    def ms(self) -> float:
        """The current margin in ms (before the cap)."""
        return self._ms
