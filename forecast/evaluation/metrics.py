"""Forecast metrics on a predictions frame (ticker, date, realised, <pred column>), in log-return units.

Point metrics, over every (ticker, date) sample:
- mse, mae: of the forecast against the realised forward log return.
- dir_acc: share of samples where sign(pred) == sign(realised); a zero forecast (or a zero return)
  counts one half, so a forecast that never commits to a direction scores exactly 0.5.

Rank metrics (Qlib's definitions) on a series of groups:
- a group is one date's cross-section of tickers when the frame holds two or more tickers, and
  a block of `ic_window` consecutive sessions (non-overlapping) when it holds one ticker.
- ic: mean over groups of the Pearson correlation of forecast and realised return.
- rank_ic: the same with Spearman's rank correlation.
- icir: mean / standard deviation of the per-group IC (not annualised).
  A group where the forecast or the return is constant has no correlation and is skipped, so a
  constant forecast (the zero baseline) has no IC: NaN.

Strategy metrics (sharpe, ann_return, max_drawdown, turnover, info_ratio): forecast/backtest.py.
"""
from __future__ import annotations

import math

import polars as pl
import torch
from torchmetrics.functional import mean_absolute_error, mean_squared_error


def direction_accuracy(pred: torch.Tensor, realised: torch.Tensor) -> float:
    hit = (torch.sign(pred) * torch.sign(realised)).double()  # +1 hit, -1 miss, 0 undecided
    return float(((hit + 1) / 2).mean())


def ic_groups(frame: pl.DataFrame, ic_window: int = 63) -> pl.Expr:
    """The group key: the date across tickers, or the block of `ic_window` sessions for one ticker."""
    if frame["ticker"].n_unique() > 1:
        return pl.col("date")
    return (pl.col("date").rank("dense") - 1) // ic_window


def ic_series(frame: pl.DataFrame, pred_col: str = "pred", ic_window: int = 63) -> pl.DataFrame:
    """(date, ic, rank_ic) per group, dated by the group's first session. Dropped: groups without a
    correlation, and for one ticker a last block shorter than half a window."""
    pred, realised = pl.col(pred_col), pl.col("realised")
    min_n = 2 if frame["ticker"].n_unique() > 1 else max(2, ic_window // 2)
    out = (frame.sort("date").group_by(ic_groups(frame, ic_window).alias("group"), maintain_order=True)
           .agg(pl.col("date").first(), n=pl.len(), ic=pl.corr(pred, realised),
                rank_ic=pl.corr(pred, realised, method="spearman"),
                varies=(pred.n_unique() > 1) & (realised.n_unique() > 1)))  # corr of a constant is rounding noise
    keep = pl.col("varies") & pl.col("ic").is_not_nan() & pl.col("ic").is_not_null() & (pl.col("n") >= min_n)
    return out.filter(keep).select("date", "ic", "rank_ic")


def rolling_ic(frame: pl.DataFrame, pred_col: str = "pred", window: int = 63) -> pl.DataFrame:
    """(date, ic) for plotting: the sliding `window`-session correlation of one ticker, or the
    `window`-date moving average of the daily cross-sectional IC of several."""
    if frame["ticker"].n_unique() > 1:
        daily = ic_series(frame, pred_col)
        return daily.select("date", ic=pl.col("ic").rolling_mean(window, min_samples=window // 2))
    f = frame.sort("date")
    return f.select("date", ic=pl.rolling_corr(pl.col(pred_col), pl.col("realised"), window_size=window))


def rank_metrics(frame: pl.DataFrame, pred_col: str = "pred", ic_window: int = 63) -> dict[str, float]:
    ics = ic_series(frame, pred_col, ic_window)
    if ics.height == 0:
        return dict(ic=math.nan, rank_ic=math.nan, icir=math.nan)
    std = ics["ic"].std() if ics.height > 1 else None
    return dict(ic=float(ics["ic"].mean()), rank_ic=float(ics["rank_ic"].mean()),
                icir=float(ics["ic"].mean() / std) if std else math.nan)


def point_metrics(frame: pl.DataFrame, pred_col: str = "pred", ic_window: int = 63) -> dict[str, float]:
    """mse, mae, dir_acc, ic, rank_ic, icir of one forecast column."""
    pred = torch.tensor(frame[pred_col].to_numpy(), dtype=torch.float64)
    realised = torch.tensor(frame["realised"].to_numpy(), dtype=torch.float64)
    return dict(
        mse=float(mean_squared_error(pred, realised)),
        mae=float(mean_absolute_error(pred, realised)),
        dir_acc=direction_accuracy(pred, realised),
        **rank_metrics(frame, pred_col, ic_window),
    )


def flat_metrics(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """MLflow names: the model's under `test/`, each baseline's under `baseline/<name>/test/`."""
    out = {f"test/{k}": v for k, v in results["model"].items()}
    for name, metrics in results.items():
        if name != "model":
            out.update({f"baseline/{name}/test/{k}": v for k, v in metrics.items()})
    return out
