"""Demand ten minutes ahead, per user region, from the request history.

The history is a series of mean tokens/s per step (default 5 minutes), oldest first. With at least
two seasons (days) of history the forecaster fits **Holt-Winters** seasonal exponential smoothing
(additive damped trend, additive daily season) with statsmodels' ``ExponentialSmoothing``
(``initialization_method="heuristic"``: initial states from the first two seasons, only the
smoothing parameters are optimised; a fit on the last four days takes ~0.25 s here). Between
refits (:attr:`ForecastParams.refit_every_s`, weekly by default: the smoothing parameters of a
daily demand curve are stable, the states move every step) new observations go through the same
recursions statsmodels uses (Hyndman & Athanasopoulos, *Forecasting: Principles and Practice*,
§8.3, damped additive form)::

    l_t = a (y_t - s_{t-m}) + (1 - a) (l_{t-1} + phi b_{t-1})
    b_t = b* (l_t - l_{t-1}) + (1 - b*) phi b_{t-1}
    s_t = g (y_t - l_{t-1} - phi b_{t-1}) + (1 - g) s_{t-m}
    y_{t+h} = l_t + (phi + ... + phi^h) b_t + s_{t+h-m}

so the live loop and the simulator pay for a fit once a week, not once a minute.

While the history is shorter than two seasons the cheap fallback is the **recent trend**: the
mean of the last three steps plus their slope, extrapolated, never below the last observation.

The forecast the autoscaler uses is the *peak* of the point forecasts over the horizon (capacity
must be there for the whole window, not only at its end), floored at zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from spotshift.errors import ConfigError

METHOD_HOLT_WINTERS = "holt_winters"
METHOD_RECENT_TREND = "recent_trend"


@dataclass(frozen=True)
class ForecastParams:
    """Resolution and horizon of the forecast (seconds)."""

    step_s: int = 300
    horizon_s: int = 600
    season_s: int = 86_400
    min_seasons: int = 2
    fit_window_seasons: int = 4
    refit_every_s: int = 7 * 86_400

    def __post_init__(self) -> None:
        if min(self.step_s, self.horizon_s, self.season_s, self.refit_every_s) <= 0:
            raise ConfigError("forecast: step, horizon, season and refit interval must be > 0 s")
        if self.season_s % self.step_s:
            raise ConfigError(f"forecast: season {self.season_s} s is not a whole number of steps")
        if self.min_seasons < 2:
            raise ConfigError("forecast: Holt-Winters needs at least two seasons of history")

    @property
    def period(self) -> int:
        """Steps per season."""
        return self.season_s // self.step_s

    @property
    def horizon_steps(self) -> int:
        """Steps ahead the forecast covers (at least one)."""
        return max(1, math.ceil(self.horizon_s / self.step_s))


@dataclass(frozen=True)
class DemandForecast:
    """The forecast for one user region: the peak tokens/s expected within the horizon."""

    user_region: str
    tokens_s: float
    path: tuple[float, ...]
    method: str
    observed_tokens_s: float
    history_steps: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {**self.__dict__, "path": list(self.path)}


@dataclass
class HoltWinters:
    """Fitted smoothing parameters and the current states (mutable: :meth:`update` advances it)."""

    alpha: float
    beta: float
    gamma: float
    phi: float
    level: float
    trend: float
    season: list[float]  # the last m seasonal states, oldest first: season[0] is s_{t+1-m}

    def update(self, y: float) -> None:
        """Take one observation (the recursions of the module docstring)."""
        s_old = self.season[0]
        prev = self.level + self.phi * self.trend
        level = self.alpha * (y - s_old) + (1 - self.alpha) * prev
        self.trend = self.beta * (level - self.level) + (1 - self.beta) * self.phi * self.trend
        s_new = self.gamma * (y - prev) + (1 - self.gamma) * s_old
        self.level = level
        self.season.pop(0)
        self.season.append(s_new)

    def forecast(self, steps: int) -> list[float]:
        """Point forecasts 1..``steps`` steps ahead."""
        out, damp, m = [], 0.0, len(self.season)
        for h in range(1, steps + 1):
            damp += self.phi**h
            out.append(self.level + damp * self.trend + self.season[(h - 1) % m])
        return out


def fit_holt_winters(y: Sequence[float], period: int) -> HoltWinters:
    """Fit on ``y`` with statsmodels and return the states after the last observation."""
    import numpy as np
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    arr = np.asarray(y, dtype=float)
    if len(arr) < 2 * period:
        raise ConfigError(f"forecast: Holt-Winters needs {2 * period} steps of history, got {len(arr)}")
    import warnings

    with warnings.catch_warnings():
        # statsmodels warns about convergence on flat series; the fallback parameters are still usable
        warnings.simplefilter("ignore")
        model = ExponentialSmoothing(
            arr,
            trend="add",
            damped_trend=True,
            seasonal="add",
            seasonal_periods=period,
            initialization_method="heuristic",
        )
        fit = model.fit()
    p = fit.params
    hw = HoltWinters(
        alpha=float(p["smoothing_level"]),
        beta=float(p["smoothing_trend"]),
        gamma=float(p["smoothing_seasonal"]),
        phi=float(p["damping_trend"]),
        level=float(p["initial_level"]),
        trend=float(p["initial_trend"]),
        season=[float(s) for s in np.asarray(p["initial_seasons"], dtype=float)],
    )
    for v in arr:
        hw.update(float(v))
    return hw


def recent_trend(y: Sequence[float], steps: int) -> list[float]:
    """The short-history fallback: mean of the last 3 steps plus their slope, never below the last value."""
    if not y:
        return [0.0] * steps
    last = [float(v) for v in y[-3:]]
    level = sum(last) / len(last)
    before = [float(v) for v in y[-6:-3]]
    slope = (level - sum(before) / len(before)) / 3.0 if before else 0.0
    # the level is the mean of the last three steps, centred one step back
    return [max(float(y[-1]), level + slope * (h + 1)) for h in range(1, steps + 1)]


def _finish(user_region: str, path: list[float], method: str, y: Sequence[float]) -> DemandForecast:
    clean = [max(0.0, v) for v in path]
    return DemandForecast(
        user_region=user_region,
        tokens_s=max(clean) if clean else 0.0,
        path=tuple(clean),
        method=method,
        observed_tokens_s=float(y[-1]) if len(y) else 0.0,
        history_steps=len(y),
    )


def _validate(y: Sequence[float], what: str) -> None:
    for i, v in enumerate(y):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ConfigError(f"forecast: {what} step {i} is {v!r}, not a rate >= 0")


def forecast_demand(
    history_tokens_s: Sequence[float], params: ForecastParams | None = None, user_region: str = ""
) -> DemandForecast:
    """Forecast one user region from its history (mean tokens/s per ``params.step_s``, oldest first)."""
    p = params or ForecastParams()
    y = list(history_tokens_s)
    _validate(y, f"history of {user_region or 'the user region'}")
    window = y[-p.fit_window_seasons * p.period :]
    if len(window) >= p.min_seasons * p.period and max(window) > 0:
        hw = fit_holt_winters(window, p.period)
        return _finish(user_region, hw.forecast(p.horizon_steps), METHOD_HOLT_WINTERS, y)
    return _finish(user_region, recent_trend(y, p.horizon_steps), METHOD_RECENT_TREND, y)


def forecast_regions(
    histories: Mapping[str, Sequence[float]], params: ForecastParams | None = None
) -> dict[str, DemandForecast]:
    """:func:`forecast_demand` for every user region of ``histories``."""
    return {u: forecast_demand(h, params, u) for u, h in sorted(histories.items())}


def rolling_forecasts(series: Sequence[float], params: ForecastParams | None = None) -> Any:
    """The forecast (peak over the horizon) made at the end of every step of ``series``, using only
    the history up to that step: what the live loop would have said at each point in time.

    Refits every ``refit_every_s`` once ``min_seasons`` of history exist (on the last
    ``fit_window_seasons``), advances the fitted states step by step in between, and uses the
    recent-trend fallback before the first fit. Returns a numpy array as long as ``series``.
    """
    import numpy as np

    p = params or ForecastParams()
    y = np.asarray(series, dtype=float)
    _validate(y.tolist(), "series")
    out = np.empty(len(y))
    need = p.min_seasons * p.period
    refit_steps = max(1, p.refit_every_s // p.step_s)
    hw: HoltWinters | None = None
    last_fit = -refit_steps
    for i in range(len(y)):
        n = i + 1
        if n >= need and n - last_fit >= refit_steps:
            window = y[max(0, n - p.fit_window_seasons * p.period) : n]
            hw = fit_holt_winters(window, p.period) if window.max() > 0 else None
            last_fit = n
        elif hw is not None:
            hw.update(float(y[i]))
        if hw is not None:
            path = hw.forecast(p.horizon_steps)
        else:
            path = recent_trend(y[max(0, n - 6) : n].tolist(), p.horizon_steps)
        out[i] = max(0.0, max(path))
    return out
