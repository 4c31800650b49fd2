"""Shrink a point forecast towards zero by a factor fitted on the validation split.

Daily returns are mostly noise: a network's forecast that carries little signal is still spread
around zero, and that spread costs MSE. Regressing the realised return on the forecast (through the
origin) on validation gives the scale b that makes the forecast calibrated there, E[y | f] = b f:

- `slope`: b = clip(<f, y> / <f, f>, 0, 1). The validation MSE of b f is a parabola in b with its
  minimum at the unclipped slope, so on validation b f is never worse than the raw forecast (b = 1)
  nor than the zero forecast (b = 0).
- `shrink`: the clipped slope s times the positive-part James-Stein factor max(0, 1 - 1/t^2), t the
  slope's t-statistic: a slope within one standard error of zero gives b = 0. On 252 validation
  sessions a slope is mostly noise, and an overfitted b hurts out of sample; this keeps b = 0 unless
  the validation evidence is clear. b stays in [max(0, 2s - 1), s] (and is 1 when s >= 1), where
  the parabola is no higher than at b = 1 or b = 0: never worse on validation than either.
- `shrink_mean`: `shrink` around the training period's mean return m instead of zero:
  m + b (f - m), b fitted on the validation f - m against y - m. b = 0 gives the `hist_mean`
  forecast (for an equity series, long in its long-run drift) instead of the random walk.
- `none`: b = 1.

A positive b leaves IC, rank IC and the sign strategy unchanged; b = 0 makes the forecast the random
walk for that fold (no IC, a flat book).
"""
from __future__ import annotations

import math

import numpy as np
import polars as pl

from forecast.evaluation.quantiles import column

METHODS = ("none", "slope", "shrink", "shrink_mean")


def fit_scale(pred: np.ndarray, realised: np.ndarray, method: str) -> float:
    """The factor b in [0, 1] for `pred` (validation forecasts) against `realised`, both (N,)."""
    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {METHODS}, got {method!r}")
    if method == "none":
        return 1.0
    method = "shrink" if method == "shrink_mean" else method  # the caller centres f and y on m
    f, y = np.asarray(pred, dtype=np.float64), np.asarray(realised, dtype=np.float64)
    ff = float(f @ f)
    if len(f) < 3 or ff <= 0:
        return 0.0
    slope = float(f @ y) / ff
    if method == "slope" or slope <= 0 or slope >= 1:
        return min(max(slope, 0.0), 1.0)
    resid = y - slope * f
    se = math.sqrt(float(resid @ resid) / (len(f) - 1) / ff)
    t2 = (slope / se) ** 2 if se > 0 else math.inf
    return max(slope * max(0.0, 1.0 - 1.0 / t2), 2 * slope - 1)  # >= 2 slope - 1: not worse than b = 1


def calibrated_forecasts(model, dm, method: str) -> tuple[pl.DataFrame, dict[str, float]]:
    """The test split's forecasts of a fitted model, calibrated on its validation split: (ticker,
    date, realised, pred) in log-return units, `pred_uncalibrated` unless `method` is none, and
    `q<percent>` columns from a quantile head (recalibrated on validation unless `method` is none,
    forecast/evaluation/quantiles.py). Also {scale, val_ic, val_mse_rel, val_mse_rel_calibrated, ...}:
    the factor b, the raw validation forecast's IC and MSE relative to the zero forecast, and the
    calibrated one's (what a configuration is chosen on; the test split chooses nothing)."""
    from forecast.evaluation.metrics import rank_metrics
    from forecast.training.fit import forecast

    head = model.head
    val_raw, raw = forecast(model, dm.val_dataloader()), forecast(model, dm.test_dataloader())  # (N,) | (N, Q)
    val = dm.predictions_frame("val", head.point(val_raw))
    f, y = val["pred"].to_numpy(), val["realised"].to_numpy()
    anchor = dm.target_mean if method == "shrink_mean" else 0.0  # what the forecast is shrunk towards
    b = fit_scale(f - anchor, y - anchor, "shrink" if method == "shrink_mean" else method)
    zero = float(np.mean(y ** 2))
    info = dict(scale=b, val_ic=rank_metrics(val)["ic"], val_mse_rel=float(np.mean((f - y) ** 2)) / zero,
                val_mse_rel_calibrated=float(np.mean((anchor + b * (f - anchor) - y) ** 2)) / zero)
    for other in ("shrink", "shrink_mean"):  # both anchors' validation MSE, whichever is in use
        m = dm.target_mean if other == "shrink_mean" else 0.0
        info[f"val_mse_rel_{other}"] = float(np.mean((m + fit_scale(f - m, y - m, other) * (f - m) - y) ** 2)) / zero
    frame = dm.predictions_frame("test", head.point(raw))
    if method != "none":  # the raw forecast beside it, scored as the baseline 'uncalibrated'
        frame = frame.with_columns(pred_uncalibrated=pl.col("pred"), pred=anchor + b * (pl.col("pred") - anchor))
    if raw.dim() == 2:  # a quantile head: (N, Q)
        q, q_info = _quantiles(dm, head.taus, val_raw, raw, y, method != "none")
        frame = frame.with_columns(*[pl.Series(column(t), q[:, j]) for j, t in enumerate(head.taus)])
        info.update(q_info)
    return frame, info


def _quantiles(dm, taus: list[float], val_raw, raw, y_val: np.ndarray, recalibrate: bool):
    """The test quantiles (N, Q) in log-return units, recalibrated on validation when asked."""
    from forecast.evaluation.quantiles import recalibrated, volatility

    q_val, q = (r.double().numpy() * dm.target_std for r in (val_raw, raw))  # (N, Q)
    if not recalibrate:
        return q, {}
    sigma = volatility(dm.frame, dm.horizon)  # (rows,) causal EWMA volatility at each anchor
    history = np.concatenate([dm.anchors["train"].numpy(), dm.anchors["val"].numpy()])
    z = dm.frame["target"].to_numpy()[history] / sigma[history]  # standardised realised returns
    return recalibrated(q_val, y_val, q, sigma[dm.anchors["val"].numpy()], sigma[dm.anchors["test"].numpy()],
                        z, list(taus))
