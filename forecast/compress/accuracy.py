"""How good a candidate's forecasts are, on the teacher's own data splits.

The validation split decides (every choice of the search reads `val_ic` only); the test split is
reported beside the teacher's: IC (with its block-bootstrap 95% interval, as `evaluate` computes it),
dir_acc, MSE, and the correlation with the teacher's forecasts, which says how faithfully a
candidate copies the teacher when the IC itself is small and noisy (real data).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from forecast.evaluation.metrics import ic_series, point_metrics, rank_metrics
from forecast.evaluation.stats import confidence_interval, mean_stat
from forecast.model.forecaster import NOT_INPUTS


@dataclass
class Split:
    """One split's model inputs, batch by batch, and its (ticker, date, realised) rows."""
    name: str
    batches: list[dict[str, torch.Tensor]]
    rows: pl.DataFrame
    scale: float  # target_std: scores x scale = log-return units


def split(dm, name: str) -> Split:
    from forecast.data.windows import EpochBatchSampler

    ds = dm.dataset(name)
    batches = [{k: v for k, v in ds[idx].items() if k not in NOT_INPUTS}
               for idx in EpochBatchSampler(len(ds), dm.batch_size, shuffle=False, shard=False)]
    rows = dm.predictions_frame(name, torch.zeros(len(ds))).drop("pred")
    return Split(name, batches, rows, dm.target_std)


def torch_scores(model, data: Split) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(**b) for b in data.batches]).double().numpy()  # (N,)


def onnx_scores(path, data: Split, threads: int = 1) -> np.ndarray:
    from forecast.compress.export import run, session

    sess = session(path, threads)
    return np.concatenate([run(sess, b) for b in data.batches]).astype(np.float64)  # (N,)


def val_ic(data: Split, scores: np.ndarray) -> float:
    return rank_metrics(data.rows.with_columns(pred=pl.Series(scores * data.scale)))["ic"]


def test_metrics(data: Split, scores: np.ndarray, teacher: np.ndarray) -> dict[str, float]:
    """ic, ic_low, ic_high, dir_acc, mse, corr_teacher of `scores` on `data` (log-return units)."""
    frame = data.rows.with_columns(pred=pl.Series(scores * data.scale))
    m = point_metrics(frame)
    low, high = confidence_interval(ic_series(frame)["ic"].to_numpy(), mean_stat, n_boot=1000, seed=0)
    corr = float(np.corrcoef(scores, teacher)[0, 1]) if np.std(scores) > 0 and np.std(teacher) > 0 else float("nan")
    return dict(ic=m["ic"], ic_low=low, ic_high=high, dir_acc=m["dir_acc"], mse=m["mse"], corr_teacher=corr)


def cross_section(data: Split, tickers: int) -> dict[str, np.ndarray]:
    """Inputs of one forecast call: `tickers` windows (the first batch's, tiled when it has fewer)."""
    first = data.batches[0]
    n = len(next(iter(first.values())))
    idx = torch.arange(tickers) % n
    return {k: v[idx].numpy() for k, v in first.items()}
