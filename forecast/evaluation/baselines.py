"""Baselines, forecasting the same test anchors as the model from information before them.

Naive (`BASELINES`, fn(test_frame, train_rows) -> forecasts; they need only the ticker column):
- zero: the random walk, a zero expected log return.
- hist_mean: each ticker's mean forward return over the training split.
Fitted (`FITTED`, fn(frame) -> forecasts of the frame's test rows), on a MarketData frame (one row
per ticker and session, sorted by ticker and date, with its `split` column): fitted on the train
rows, tuned on the validation rows, never shown a test label.
- ridge: an AR(10) model, ridge regression of the forward return on the last 10 daily log returns;
  the penalty is chosen on the validation split.
- lgbm: gradient-boosted trees (LightGBM) on the last 5 sessions of every price feature; the number
  of trees is chosen by early stopping on the validation split. Needs the optional `lightgbm`.
"""
from __future__ import annotations

import numpy as np
import polars as pl

from forecast.data.market import FEATURES
from forecast.errors import ConfigError


class BaselineUnavailable(RuntimeError):
    """A baseline whose optional dependency is missing; the evaluation goes on without it."""


def zero(frame: pl.DataFrame, train: pl.DataFrame) -> pl.Series:
    """Random walk: tomorrow's expected log return is zero."""
    return pl.Series("pred", [0.0] * frame.height, dtype=pl.Float64)


def hist_mean(frame: pl.DataFrame, train: pl.DataFrame) -> pl.Series:
    """Each ticker's mean forward return over the training split (the pooled mean for unseen tickers)."""
    pooled = float(train["target"].mean())
    means = train.group_by("ticker").agg(pl.col("target").mean().alias("pred"))
    joined = frame.select("ticker").join(means, on="ticker", how="left", maintain_order="left")
    return joined["pred"].fill_null(pooled)


def lagged(frame: pl.DataFrame, columns: list[str], lags: int) -> np.ndarray:
    """(N, len(columns) * lags): each column at sessions t, t-1, ..., t-lags+1 of the same ticker."""
    exprs = [pl.col(c).shift(k).over("ticker").alias(f"{c}_{k}") for c in columns for k in range(lags)]
    x = frame.select(exprs).to_numpy().astype(np.float64)
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def _splits(frame: pl.DataFrame, x: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    y = frame["target"].to_numpy().astype(np.float64)
    masks = {s: (frame["split"] == s).fill_null(False).to_numpy() for s in ("train", "val", "test")}
    return {s: (x[m], y[m]) for s, m in masks.items()}


def ridge(frame: pl.DataFrame, lags: int = 10, alphas=(0.1, 1.0, 10.0, 100.0, 1000.0)) -> pl.Series:
    """AR(lags) by ridge regression on standardised lagged returns; the penalty picked on validation."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = _splits(frame, lagged(frame, ["ret"], lags))
    (x_tr, y_tr), (x_val, y_val), (x_te, _) = data["train"], data["val"], data["test"]
    fits = [make_pipeline(StandardScaler(), Ridge(alpha=a)).fit(x_tr, y_tr) for a in alphas]
    best = min(fits, key=lambda m: float(np.mean((m.predict(x_val) - y_val) ** 2)))
    return pl.Series("pred", best.predict(x_te), dtype=pl.Float64)


def lgbm(frame: pl.DataFrame, lags: int = 5, seed: int = 0) -> pl.Series:
    """LightGBM on lagged price features; trees added until validation loss stalls for 50 rounds."""
    try:
        import lightgbm
    except ImportError:
        raise BaselineUnavailable("LightGBM is not installed (pip install lightgbm, "
                                  "or the project's [gbt] extra)") from None
    data = _splits(frame, lagged(frame, FEATURES, lags))
    (x_tr, y_tr), (x_val, y_val), (x_te, _) = data["train"], data["val"], data["test"]
    params = dict(objective="regression", learning_rate=0.03, num_leaves=15, min_data_in_leaf=50,
                  bagging_fraction=0.8, bagging_freq=1, feature_fraction=0.8, lambda_l2=1.0, seed=seed,
                  deterministic=True, num_threads=1, verbose=-1)
    train = lightgbm.Dataset(x_tr, y_tr)
    val = lightgbm.Dataset(x_val, y_val, reference=train)
    model = lightgbm.train(params, train, num_boost_round=500, valid_sets=[val],
                           callbacks=[lightgbm.early_stopping(50, verbose=False)])
    return pl.Series("pred", model.predict(x_te, num_iteration=model.best_iteration), dtype=pl.Float64)


BASELINES = {"zero": zero, "hist_mean": hist_mean}
FITTED = {"ridge": ridge, "lgbm": lgbm}


def check_names(names, key: str) -> None:
    """A ConfigError naming the config `key` when a baseline in `names` does not exist."""
    unknown = sorted(set(names) - set(BASELINES) - set(FITTED))
    if unknown:
        raise ConfigError(key, f"unknown {unknown}; known: {[*BASELINES, *FITTED]}")


def baseline_predictions(frame: pl.DataFrame, names: list[str]) -> tuple[dict[str, pl.Series], dict[str, str]]:
    """Forecasts of the frame's test rows by each named baseline, and {name: reason} for those skipped."""
    unknown = sorted(set(names) - set(BASELINES) - set(FITTED))
    if unknown:
        raise KeyError(f"unknown baselines {unknown}; known: {[*BASELINES, *FITTED]}")
    test, train = frame.filter(pl.col("split") == "test"), frame.filter(pl.col("split") == "train")
    preds, skipped = {}, {}
    for name in names:
        try:
            preds[name] = BASELINES[name](test, train) if name in BASELINES else FITTED[name](frame)
        except BaselineUnavailable as e:
            skipped[name] = str(e)
    return preds, skipped
