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
- `shrink_drift`: `shrink_mean` around m' = m max(0, 1 - 1/t_m^2), the training mean itself James-Stein
  shrunk towards zero by its t-statistic (t_m over the training sessions' mean returns, one per
  date: a date's tickers move together). A constant forecast c costs MSE against the zero forecast
  wherever the test period's mean falls below c / 2; ten years of equity drift has t_m near 1.5-2.5,
  so m' keeps the sign of m (and the sign strategy's book) at 0.56-0.84 of its size.
- `none`: b = 1.

A positive b leaves IC, rank IC and the sign strategy unchanged; b = 0 makes the forecast the random
walk for that fold (no IC, a flat book).

A quantile head's levels are recalibrated on the same validation split (forecast/evaluation/quantiles.py),
then adapted online through the test period by their own misses (forecast/evaluation/adaptive.py).

What is fitted is one `Calibration`, applied the same way wherever a forecast is made: by evaluate on
each fold's test block, by train on its test split, and with the registered model by `predict` and the
served pyfunc (train stores it in the run's predict state, key `calibration`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import polars as pl

from forecast.evaluation import adaptive
from forecast.evaluation.quantiles import column

METHODS = ("none", "slope", "shrink", "shrink_mean", "shrink_drift")
CENTRED = ("shrink_mean", "shrink_drift")  # fitted as `shrink` on f - m, y - m
HALF_LIFE = 10.0  # sessions: the EWMA volatility that sets quantiles in the `volatility` mode


@dataclass
class Calibration:
    """A model's raw forecasts (log-return units) to calibrated ones: the point m + b (f - m), and
    quantile levels rescaled around the median (`spread`: q50 + s (q - q50)) or set from volatility
    (`volatility`: q50 + sigma_t d, d the levels of the standardised history about its median; sigma_t
    the EWMA volatility of the returns in the sample's own input window, window_volatility, so that a
    served window, predict and evaluate all give the same quantiles)."""
    method: str = "none"
    anchor: float = 0.0  # m: the training mean for shrink_mean, shrunk for shrink_drift, else 0
    scale: float = 1.0  # b in [0, 1]
    quantiles: str = "none"  # none | spread | volatility
    taus: list[float] = field(default_factory=list)
    spread: list[float] = field(default_factory=list)  # (Q,) s_tau, 1 at the median
    levels: list[float] = field(default_factory=list)  # (Q,) d_tau = c_tau - c_0.5
    sigma_default: float = 0.0  # for a window without a nonzero return: the history's median sigma
    horizon: int = 1
    adaptive: float = 0.0  # gamma of the online widening by the served quantiles' misses (adaptive.py)

    @property
    def needs_volatility(self) -> bool:
        """Whether `quantile` takes each window's volatility (`volatility` mode); else sigma may be None."""
        return self.quantiles == "volatility"

    def point(self, f: np.ndarray) -> np.ndarray:
        return self.anchor + self.scale * (np.asarray(f, dtype=np.float64) - self.anchor)

    def quantile(self, q: np.ndarray, sigma: np.ndarray | None = None) -> np.ndarray:
        """q (N, Q) of the head, recalibrated; `sigma` (N,) each window's volatility (`volatility` mode)."""
        from forecast.evaluation.quantiles import apply_spread

        if self.quantiles == "spread":
            return apply_spread(q, np.asarray(self.spread), self.taus)
        if self.needs_volatility:
            mid = q[:, [self.taus.index(0.5)]]  # (N, 1)
            sigma = np.where(np.asarray(sigma) > 0, sigma, self.sigma_default)  # (N,)
            return mid + sigma[:, None] * np.asarray(self.levels)[None, :]
        return q

    def describe(self) -> str:
        """One line: what the forecast is, and what b = 0 means when it is 0."""
        line = f"calibrate={self.method}: forecast = {self.anchor:+.3e} + {self.scale:.3f} x (raw - {self.anchor:+.3e})"
        if self.scale == 0.0:
            line += (" (no evidence on validation that the raw forecast predicts returns: the forecast is the"
                     f" {_ANCHORS.get(self.method, 'zero forecast')}; the raw one is"
                     " scored as 'uncalibrated'; calibrate=none keeps it)")
        return line

    def state(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict | None) -> Calibration:
        """The stored calibration; none stored (a model from before it existed) is the identity."""
        return cls(**state) if state else cls()


_ANCHORS = dict(shrink_mean="training mean", shrink_drift="training mean shrunk by its t-statistic")


def window_volatility(ret: np.ndarray, horizon: int = 1, half_life: float = HALF_LIFE) -> np.ndarray:
    """(N,) the EWMA volatility (half-life 10 sessions, RiskMetrics-like) of each window's daily log
    returns `ret` (N, L), oldest first, times sqrt(horizon): the window is all the history a sample
    carries, in evaluate, predict and a served request alike."""
    r2 = np.nan_to_num(np.asarray(ret, dtype=np.float64)) ** 2  # (N, L)
    w = (0.5 ** (1.0 / half_life)) ** np.arange(r2.shape[1])[::-1]  # (L,) the newest session weighs 1
    return np.sqrt(r2 @ w / w.sum()) * horizon ** 0.5


def anchor_volatility(ret: np.ndarray, anchors: np.ndarray, window: int, horizon: int) -> np.ndarray:
    """(N,) window_volatility of the windows ending at rows `anchors` of a per-row return column (rows,)."""
    rows = np.asarray(anchors)[:, None] + np.arange(-window + 1, 1)[None, :]  # (N, L)
    return window_volatility(np.asarray(ret)[rows], horizon)


def fit_scale(pred: np.ndarray, realised: np.ndarray, method: str) -> float:
    """The factor b in [0, 1] for `pred` (validation forecasts) against `realised`, both (N,)."""
    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {METHODS}, got {method!r}")
    if method == "none":
        return 1.0
    method = "shrink" if method in CENTRED else method  # the caller centres f and y on m
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


def calibrated_forecasts(model, dm, method: str, gamma: float = adaptive.GAMMA
                         ) -> tuple[pl.DataFrame, dict[str, float], Calibration]:
    """The test split's forecasts of a fitted model, calibrated on its validation split: (ticker,
    date, realised, pred) in log-return units, `pred_uncalibrated` unless `method` is none, and
    `q<percent>` columns from a quantile head (recalibrated on validation unless `method` is none,
    forecast/evaluation/quantiles.py; then adapted by their misses with step `gamma`, adaptive.py).
    Also {scale, val_ic, val_mse_rel, val_mse_rel_calibrated, ...}:
    the factor b, the raw validation forecast's IC and MSE relative to the zero forecast, and the
    calibrated one's (what a configuration is chosen on; the test split chooses nothing), and the
    fitted Calibration."""
    from forecast.training.fit import forecast

    head = model.head
    val_raw, raw = forecast(model, dm.val_dataloader()), forecast(model, dm.test_dataloader())  # (N,) | (N, Q)
    cal, info = fit(dm, head, val_raw, method)
    cal.adaptive = gamma if cal.quantiles != "none" else 0.0
    frame = dm.predictions_frame("test", head.point(raw))
    if method != "none":  # the raw forecast beside it, scored as the baseline 'uncalibrated'
        frame = frame.with_columns(pred_uncalibrated=pl.col("pred"), pred=cal.point(frame["pred"].to_numpy()))
    if raw.dim() == 2:  # a quantile head: (N, Q)
        sigma = anchor_volatility(dm.frame["ret"].to_numpy(), dm.anchors["test"].numpy(), dm.window, dm.horizon) \
            if cal.needs_volatility else None  # (N,)
        q = cal.quantile(raw.double().numpy() * dm.target_std, sigma)
        frame = frame.with_columns(*[pl.Series(column(t), q[:, j]) for j, t in enumerate(head.taus)])
        frame = adaptive.adapt_frame(frame, list(head.taus), cal.adaptive, dm.horizon)  # as predict serves them
    return frame, info, cal


def fit(dm, head, val_raw, method: str) -> tuple[Calibration, dict[str, float]]:
    """The Calibration of `method` fitted on the validation forecasts `val_raw` (N,) | (N, Q) of a
    model with `head`, and what it was chosen on (see calibrated_forecasts)."""
    from forecast.evaluation.metrics import rank_metrics

    val = dm.predictions_frame("val", head.point(val_raw))
    f, y = val["pred"].to_numpy(), val["realised"].to_numpy()
    anchors = {m: anchor_of(dm, m) for m in ("shrink", *CENTRED)}  # each computed once
    anchor = anchors.get(method, 0.0)  # what the forecast is shrunk towards
    b = fit_scale(f - anchor, y - anchor, method)
    zero = float(np.mean(y ** 2))
    info = dict(scale=b, anchor=anchor, val_ic=rank_metrics(val)["ic"], val_mse_rel=float(np.mean((f - y) ** 2)) / zero,
                val_mse_rel_calibrated=float(np.mean((anchor + b * (f - anchor) - y) ** 2)) / zero)
    for other, m in anchors.items():  # every anchor's validation MSE, whichever is in use
        info[f"val_mse_rel_{other}"] = float(np.mean((m + fit_scale(f - m, y - m, other) * (f - m) - y) ** 2)) / zero
    cal = Calibration(method, float(anchor), float(b), horizon=int(dm.horizon))
    if val_raw.dim() == 2 and method != "none":
        info.update(_fit_quantiles(cal, dm, list(head.taus), val_raw.double().numpy() * dm.target_std, y))
    return cal, info


def anchor_of(dm, method: str) -> float:
    """m of `method`: the training mean (shrink_mean), that mean James-Stein shrunk (shrink_drift), or 0."""
    if method == "shrink_mean":
        return float(dm.target_mean)
    if method != "shrink_drift":
        return 0.0
    train = dm.frame.filter(pl.col("split") == "train")
    daily = train.group_by("date").agg(pl.col("target").mean())["target"].drop_nulls().drop_nans().to_numpy()  # (D,)
    return float(dm.target_mean) * drift_factor(daily)


def drift_factor(daily: np.ndarray) -> float:
    """max(0, 1 - 1/t^2), t the mean's t-statistic over the per-date mean returns `daily` (D,)."""
    if len(daily) < 3:
        return 0.0
    se = float(np.std(daily, ddof=1)) / math.sqrt(len(daily))
    t2 = (float(np.mean(daily)) / se) ** 2 if se > 0 else math.inf
    return max(0.0, 1.0 - 1.0 / t2) if t2 > 0 else 0.0


def _fit_quantiles(cal: Calibration, dm, taus: list[float], q_val: np.ndarray, y_val: np.ndarray) -> dict:
    """Choose and set `cal`'s quantile mode on validation (quantiles.recalibrate); returns what it
    was chosen on."""
    from forecast.evaluation.quantiles import recalibrate

    history = np.concatenate([dm.anchors["train"].numpy(), dm.anchors["val"].numpy()])
    sigma = anchor_volatility(dm.frame["ret"].to_numpy(), history, dm.window, dm.horizon)  # (H,)
    cal.sigma_default = float(np.median(sigma[sigma > 0])) if (sigma > 0).any() else 1.0
    sigma = np.where(sigma > 0, sigma, cal.sigma_default)
    z = dm.frame["target"].to_numpy()[history] / sigma  # standardised realised returns
    mode, spread, levels, info = recalibrate(q_val, y_val, sigma[len(dm.anchors["train"]):], z, taus)
    cal.quantiles, cal.taus, cal.spread, cal.levels = mode, taus, spread.tolist(), levels.tolist()
    return info
