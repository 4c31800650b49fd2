"""Probabilistic forecasts: pinball loss, interval coverage, a trailing historical-quantile baseline,
and a validation-fitted rescaling of the quantiles around the median.

Quantile columns of a predictions frame are named `q<percent>` (`q10`, `q50`, `q90`); a baseline's
are `hq<percent>`.

Rescaling (`fit_spread`): the model's quantile q_tau is moved to q50 + s_tau (q_tau - q50), with
s_tau chosen so that exactly a share tau of the validation returns lies below it. A multiplicative
spread keeps the model's own volatility forecast (wide in turbulent weeks, narrow in calm ones) and
only corrects its overall width, which a network trained for a few epochs gets wrong. s_tau >= 0,
so the quantiles stay ordered.
"""
from __future__ import annotations

import numpy as np
import polars as pl


def column(tau: float, prefix: str = "q") -> str:
    return f"{prefix}{round(tau * 100):d}"


def pinball(q: np.ndarray, y: np.ndarray, tau: float) -> float:
    """Mean pinball (quantile) loss of the tau-quantile forecasts q against outcomes y."""
    d = np.asarray(y, dtype=np.float64) - np.asarray(q, dtype=np.float64)
    return float(np.mean(np.maximum(tau * d, (tau - 1) * d)))


def coverage(low: np.ndarray, high: np.ndarray, y: np.ndarray) -> float:
    """Share of outcomes inside [low, high]."""
    y = np.asarray(y, dtype=np.float64)
    return float(np.mean((y >= low) & (y <= high)))


def fit_spread(q: np.ndarray, y: np.ndarray, taus: list[float]) -> np.ndarray:
    """(Q,) factors s_tau on validation quantiles q (N, Q) and outcomes y (N,); 1 at the median."""
    mid = taus.index(0.5)
    out = np.ones(len(taus))
    for j, tau in enumerate(taus):
        w = q[:, j] - q[:, mid]  # (N,) <0 below the median, >0 above
        ok = np.abs(w) > 0
        if j == mid or ok.sum() < 10:
            continue
        z = (y[ok] - q[ok, mid]) / w[ok]  # y <= q50 + s w  <=>  z <= s (w > 0), z >= s (w < 0)
        out[j] = max(0.0, float(np.quantile(z, tau if tau > 0.5 else 1 - tau)))
    return out


def apply_spread(q: np.ndarray, spread: np.ndarray, taus: list[float]) -> np.ndarray:
    """q (N, Q) with every quantile moved to q50 + s (q - q50)."""
    mid = q[:, [taus.index(0.5)]]  # (N, 1)
    return mid + spread[None, :] * (q - mid)


def trailing_quantiles(frame: pl.DataFrame, taus: list[float], horizon: int, window: int = 252) -> pl.DataFrame:
    """Per row of a MarketData frame (sorted by ticker and date): the tau-quantiles of the ticker's
    last `window` forward returns already realised at the anchor (targets of anchors <= t - horizon).
    Columns `hq<percent>`; null until `window // 2` returns are known."""
    past = pl.col("target").shift(horizon).over("ticker")
    return frame.select(*[past.rolling_quantile(tau, window_size=window, min_samples=window // 2)
                          .over("ticker").alias(column(tau, "hq")) for tau in taus])


def score(frame: pl.DataFrame, taus: list[float], prefix: str = "q") -> dict[str, float]:
    """coverage (outer interval), mean pinball over the levels, and per-level pinball and hit rate."""
    y = frame["realised"].to_numpy()
    qs = {tau: frame[column(tau, prefix)].to_numpy() for tau in taus}
    out = {"coverage": coverage(qs[min(taus)], qs[max(taus)], y),
           "pinball": float(np.mean([pinball(q, y, tau) for tau, q in qs.items()]))}
    for tau, q in qs.items():
        out[f"pinball_{column(tau)}"] = pinball(q, y, tau)
        out[f"below_{column(tau)}"] = float(np.mean(y < q))
    return out


def quantile_levels(frame: pl.DataFrame, prefix: str = "q") -> list[float]:
    """The levels of a frame's `q<percent>` columns, in order (empty without a quantile head)."""
    return sorted(int(c[len(prefix):]) / 100 for c in frame.columns
                  if c.startswith(prefix) and c[len(prefix):].isdigit())


def with_trailing_quantiles(frame: pl.DataFrame, dm, horizon: int, window: int = 252) -> pl.DataFrame:
    """A fold's test frame with the trailing historical quantiles (`hq<percent>`) of its anchors,
    at the levels of its `q` columns; unchanged without them."""
    taus = quantile_levels(frame)
    if not taus:
        return frame
    hist = trailing_quantiles(dm.frame, taus, horizon, window)[dm.anchors["test"].numpy()]
    return frame.with_columns(hist)


def with_head_quantiles(frame: pl.DataFrame, raw, head, target_std: float) -> pl.DataFrame:
    """A predictions frame with the `q<percent>` columns of a quantile head's raw output (N, Q) in
    log-return units; unchanged for a point head's (N,)."""
    if raw.dim() != 2:
        return frame
    q = raw.double().numpy() * target_std
    return frame.with_columns(*[pl.Series(column(t), q[:, j]) for j, t in enumerate(head.taus)])


def recalibrate(q_val: np.ndarray, y_val: np.ndarray, sigma_val: np.ndarray, z: np.ndarray,
                taus: list[float]) -> tuple[str, np.ndarray, np.ndarray, dict[str, float]]:
    """Of two recalibrations of validation quantiles q_val (M, Q) against y_val (M,), the one with the
    lower mean pinball loss there:
    - spread: the model's quantiles, their distance from its median rescaled per level (fit_spread);
    - volatility: the model's median plus sigma_t (c_tau - c_0.5), c_tau the tau-quantile of the
      standardised history z = y / sigma (filtered historical simulation): a width that follows
      volatility clustering, with the fat tails of the history.
    Returns (mode, the spread factors (Q,), the levels c - c_0.5 (Q,), {q_volatility, val pinball of
    each}); calibration.Calibration.quantile applies them."""
    mid = taus.index(0.5)
    spread = fit_spread(q_val, y_val, taus)
    c = np.quantile(z[np.isfinite(z)], taus)  # (Q,)
    levels = c - c[mid]
    by_vol = q_val[:, [mid]] + sigma_val[:, None] * levels[None, :]  # (M, Q)
    loss = {name: float(np.mean([pinball(v[:, j], y_val, t) for j, t in enumerate(taus)]))
            for name, v in [("spread", apply_spread(q_val, spread, taus)), ("vol", by_vol)]}
    use_vol = loss["vol"] < loss["spread"]
    info = dict(q_volatility=float(use_vol), val_pinball_spread=loss["spread"], val_pinball_vol=loss["vol"])
    info.update({f"spread_{column(t)}": float(s) for t, s in zip(taus, spread)})
    return ("volatility" if use_vol else "spread"), spread, levels, info
