"""Adaptive quantiles: the calibrated outer quantiles widened or narrowed online by their own misses.

Calibration on one validation year fixes the width of a quantile forecast for the test year; where
that year is calmer or more turbulent, the interval covers too much or too little for all of it.
Adaptive conformal inference (Gibbs and Candes, 2021; here in the multiplicative form of quantile
tracking, Angelopoulos et al., 2023) corrects it as the outcomes arrive: level tau's distance from
the median is multiplied by exp(theta_tau), and

    theta_tau = gamma * sum over earlier anchors whose outcome is known of (miss_tau - alpha_tau)

with miss_tau = [y < q_tau] and alpha_tau = tau below the median, [y > q_tau] and 1 - tau above, the
quantiles being the adapted ones that were served. A level that misses more often than it should
widens, one that misses less narrows; the median is not moved, so the quantiles stay ordered.

The sum starts at zero with each model (a walk-forward fold's test block, a registered version's
first served session). For the anchor at position i of a ticker's consecutive anchors, the outcomes
known are those of positions <= i - horizon. `adapt` is the recursion over a frame (train and
evaluate score it); `theta` is the same sum over served rows (predict, from the predictions table);
they agree (tests/test_adaptive.py). gamma = 0 is the calibrated quantiles unchanged, and is what a
model stored before this existed gets.
"""
from __future__ import annotations

import numpy as np
import polars as pl

GAMMA = 0.1  # the step of theta per miss; chosen on the real benchmark's development half


def alphas(taus: list[float]) -> np.ndarray:
    """(Q,) the miss rate each level should have (0 at the median, which is never moved)."""
    return np.array([0.0 if t == 0.5 else min(t, 1 - t) for t in taus])


def misses(q: np.ndarray, y: np.ndarray, taus: list[float]) -> np.ndarray:
    """(N, Q) 1 where y fell on the far side of level tau (below a lower, above an upper one)."""
    lower = np.array([t < 0.5 for t in taus])[None, :]  # (1, Q)
    upper = np.array([t > 0.5 for t in taus])[None, :]
    y = np.asarray(y, dtype=np.float64)[:, None]  # (N, 1)
    return ((lower & (y < q)) | (upper & (y > q))).astype(np.float64)


def theta(q_served: np.ndarray, y: np.ndarray, taus: list[float], gamma: float) -> np.ndarray:
    """(Q,) theta from served quantiles (M, Q) and their known outcomes (M,)."""
    if len(y) == 0:
        return np.zeros(len(taus))
    return gamma * (misses(q_served, y, taus) - alphas(taus)[None, :]).sum(axis=0)


def widen(q: np.ndarray, th: np.ndarray, taus: list[float]) -> np.ndarray:
    """q (N, Q) with each level's distance from the median times exp(theta) (th (Q,) or (N, Q))."""
    mid = q[:, [taus.index(0.5)]]  # (N, 1)
    return mid + np.exp(th) * (q - mid)


def adapt(q: np.ndarray, y: np.ndarray, taus: list[float], gamma: float, horizon: int) -> np.ndarray:
    """One ticker's consecutive anchors: calibrated q (N, Q) and outcomes y (N,) -> the adapted (N, Q);
    position i uses the outcomes of positions <= i - horizon only (the reference recursion)."""
    out = np.array(q, dtype=np.float64)
    if gamma == 0 or len(y) == 0:
        return out
    th, a = np.zeros(len(taus)), alphas(taus)
    for i in range(len(y)):
        j = i - horizon
        if j >= 0 and np.isfinite(y[j]):
            th += gamma * (misses(out[j:j + 1], y[j:j + 1], taus)[0] - a)
        out[i] = widen(q[i:i + 1], th, taus)[0]
    return out


def adapt_frame(frame: pl.DataFrame, taus: list[float], gamma: float, horizon: int) -> pl.DataFrame:
    """A predictions frame (ticker, date, realised, q<percent>) with its quantile columns adapted per
    ticker in date order; the row order is kept."""
    if gamma == 0 or not taus or frame.height == 0:
        return frame
    cols = [f"q{round(t * 100):d}" for t in taus]
    f = frame.with_row_index("_row").sort("ticker", "date")
    parts = []
    for _, g in f.group_by("ticker", maintain_order=True):
        q = adapt(g.select(cols).to_numpy(), g["realised"].fill_null(np.nan).to_numpy(), taus, gamma, horizon)
        parts.append(g.with_columns(*[pl.Series(c, q[:, k]) for k, c in enumerate(cols)]))
    return pl.concat(parts).sort("_row").drop("_row")
