"""Statistical checks of a forecast: block-bootstrap confidence intervals and the Diebold-Mariano test.

- Circular block bootstrap (Politis and Romano 1992): resample blocks of `block` consecutive values
  (default n^(1/3)), wrapping at the end, so short-range dependence such as volatility clustering
  survives the resampling; the interval is the percentile interval of the statistic.
- Diebold-Mariano (1995) with the Harvey-Leybourne-Newbold (1997) small-sample correction: d_t is the
  loss of forecast a minus the loss of forecast b; its variance sums autocovariances up to lag h-1 for
  an h-step forecast; the statistic is compared with Student's t (n-1 degrees of freedom). The p-value
  is one-sided: small when a has the lower expected loss.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import stats as st

PERIODS = 252


def block_bootstrap(x: np.ndarray, stat: Callable[[np.ndarray], np.ndarray], n_boot: int = 1000,
                    block: int | None = None, seed: int = 0) -> np.ndarray:
    """`stat` of n_boot circular-block resamples of x; stat maps (n_boot, n) -> (n_boot,)."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    block = block or max(1, round(n ** (1 / 3)))
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n, size=(n_boot, -(-n // block)))  # (n_boot, blocks)
    idx = (starts[:, :, None] + np.arange(block)).reshape(n_boot, -1)[:, :n] % n  # (n_boot, n)
    return stat(x[idx])


def mean_stat(m: np.ndarray) -> np.ndarray:
    return m.mean(axis=1)


def sharpe_stat(m: np.ndarray) -> np.ndarray:
    std = m.std(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(std > 0, m.mean(axis=1) / std * math.sqrt(PERIODS), np.nan)


def confidence_interval(x: np.ndarray, stat: Callable[[np.ndarray], np.ndarray], level: float = 0.95,
                        n_boot: int = 1000, block: int | None = None, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of `stat` under the circular block bootstrap; NaNs for fewer than 3 values."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 3:
        return math.nan, math.nan
    draws = block_bootstrap(x, stat, n_boot, block, seed)
    if np.all(np.isnan(draws)):
        return math.nan, math.nan
    low, high = np.nanquantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def diebold_mariano(loss_a: np.ndarray, loss_b: np.ndarray, horizon: int = 1) -> tuple[float, float]:
    """(statistic, one-sided p-value of H1: a has the lower expected loss); NaNs when d is constant."""
    d = np.asarray(loss_a, dtype=np.float64) - np.asarray(loss_b, dtype=np.float64)
    n, h = len(d), horizon
    if n < 3:
        return math.nan, math.nan
    dc = d - d.mean()
    gamma = [dc[k:] @ dc[: n - k] / n for k in range(h)]  # autocovariances at lags 0..h-1
    var = (gamma[0] + 2 * sum(gamma[1:])) / n
    if var <= 0:
        var = gamma[0] / n  # the truncated sum can turn negative for h > 1
    if var <= 0:
        return math.nan, math.nan
    stat = d.mean() / math.sqrt(var) * math.sqrt((n + 1 - 2 * h + h * (h - 1) / n) / n)
    return float(stat), float(st.t.cdf(stat, df=n - 1))
