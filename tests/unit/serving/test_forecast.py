"""Demand forecast: Holt-Winters beats the naive last value on a seasonal series; the recursion is
statsmodels'; the short-history fallback; bad histories refused."""

from __future__ import annotations

import numpy as np
import pytest

from spotshift.errors import ConfigError
from spotshift.serving.forecast import (
    METHOD_HOLT_WINTERS,
    METHOD_RECENT_TREND,
    ForecastParams,
    fit_holt_winters,
    forecast_demand,
    rolling_forecasts,
)

PERIOD = 288  # 5-minute steps per day


def _daily(days: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(days * PERIOD)
    curve = 1000 + 700 * np.sin(2 * np.pi * t / PERIOD) + 200 * np.sin(4 * np.pi * t / PERIOD)
    return np.maximum(curve + rng.normal(0, 40, len(t)), 0.0)


def test_seasonal_forecast_beats_the_naive_last_value() -> None:
    y = _daily(6)
    p = ForecastParams()
    f = rolling_forecasts(y, p)
    i = np.arange(2 * PERIOD, len(y) - p.horizon_steps)
    ahead = np.max([y[i + h] for h in range(1, p.horizon_steps + 1)], axis=0)  # the peak it forecasts
    hw_error = np.mean(np.abs(f[i] - ahead))
    naive_error = np.mean(np.abs(y[i] - ahead))
    assert hw_error < 0.85 * naive_error


def test_recursion_reproduces_statsmodels() -> None:
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    y = _daily(3, seed=1)
    ours = fit_holt_winters(y, PERIOD).forecast(3)
    ref = (
        ExponentialSmoothing(
            y,
            trend="add",
            damped_trend=True,
            seasonal="add",
            seasonal_periods=PERIOD,
            initialization_method="heuristic",
        )
        .fit()
        .forecast(3)
    )
    assert ours == pytest.approx(list(ref), rel=1e-9)


def test_methods_by_history_length() -> None:
    short = forecast_demand([100.0, 110.0, 120.0, 130.0, 140.0, 150.0], user_region="us-east")
    assert short.method == METHOD_RECENT_TREND
    assert short.tokens_s >= 150.0  # the trend goes up, never below the last value
    long = forecast_demand(_daily(3).tolist(), user_region="us-east")
    assert long.method == METHOD_HOLT_WINTERS and long.history_steps == 3 * PERIOD
    assert long.tokens_s == max(long.path) and len(long.path) == 2


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_history_refused(bad: float) -> None:
    with pytest.raises(ConfigError, match="not a rate"):
        forecast_demand([1.0, bad, 2.0], user_region="eu-west")


def test_params_validated() -> None:
    with pytest.raises(ConfigError, match="whole number of steps"):
        ForecastParams(step_s=7 * 60)
