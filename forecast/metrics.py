"""Forecast metrics on a predictions frame (ticker, date, pred, realised), in log-return units.

- mse, mae: of the forecast against the realised forward log return.
- dir_acc: share of samples where sign(pred) == sign(realised); a zero forecast (or a zero
  return) counts one half, so a forecast that never commits to a direction scores exactly 0.5.
- ic: Pearson correlation of forecast and realised return over all samples (NaN for a constant forecast).
"""
from __future__ import annotations

import math

import polars as pl
import torch
from torchmetrics.functional import mean_absolute_error, mean_squared_error, pearson_corrcoef


def direction_accuracy(pred: torch.Tensor, realised: torch.Tensor) -> float:
    hit = (torch.sign(pred) * torch.sign(realised)).double()  # +1 hit, -1 miss, 0 undecided
    return float(((hit + 1) / 2).mean())


def information_coefficient(pred: torch.Tensor, realised: torch.Tensor) -> float:
    if len(pred) < 2 or float(pred.std()) == 0.0 or float(realised.std()) == 0.0:
        return math.nan
    return float(pearson_corrcoef(pred, realised))


def point_metrics(frame: pl.DataFrame, pred_col: str = "pred") -> dict[str, float]:
    pred = torch.tensor(frame[pred_col].to_numpy(), dtype=torch.float64)
    realised = torch.tensor(frame["realised"].to_numpy(), dtype=torch.float64)
    return dict(
        mse=float(mean_squared_error(pred, realised)),
        mae=float(mean_absolute_error(pred, realised)),
        dir_acc=direction_accuracy(pred, realised),
        ic=information_coefficient(pred, realised),
    )
