"""Rolling-origin folds over exchange sessions, and one fold's training and out-of-sample forecast.

The evaluation period [start, end) is cut into test blocks of `retrain_every` sessions (a remainder
shorter than half a block joins the last block). Before each block the model is trained afresh:
- validation: the `val_sessions` sessions before the test block (checkpoint choice, early stopping);
- train: every earlier session (expanding window), or the last `train_sessions` before validation
  (sliding window).
MarketData's purge (>= horizon, plus `embargo` sessions) keeps every train label realised before
validation starts and every validation label before the test block starts, so a fold never trains
on information from its test block. The test blocks tile the period: each (ticker, session) is
forecast exactly once, by the last model trained before it.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from datetime import date

import lightning as L
import polars as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from forecast.errors import ConfigError
from forecast.evaluation import adaptive
from forecast.evaluation.calibration import calibrated_forecasts
from forecast.model import ensemble
from forecast.tracking import runs
from forecast.training.fit import fit


@dataclass(frozen=True)
class Fold:
    index: int
    train_start: date | None  # None: from the first session (expanding window)
    val_start: date
    test_start: date
    test_end: date | None  # exclusive; None: to the last session

    def bounds(self) -> dict[str, str | None]:
        return {k: None if v is None else str(v) for k, v in
                dict(train_start=self.train_start, val_start=self.val_start, test_start=self.test_start,
                     test_end=self.test_end).items()}


def make_folds(sessions: list[date], start: date, end: date | None, retrain_every: int, val_sessions: int,
               train_sessions: int | None = None) -> list[Fold]:
    """Folds whose test blocks tile [start, end) of the sorted `sessions`."""
    for key, value in [("retrain_every", retrain_every), ("val_sessions", val_sessions)]:
        if not (isinstance(value, int) and value >= 1):
            raise ConfigError(key, f"must be an integer >= 1, got {value!r}")
    n = len(sessions)
    first = bisect.bisect_left(sessions, start)
    last = n if end is None else bisect.bisect_left(sessions, end)
    if first - val_sessions < 1 or first >= last:
        raise ConfigError("start", f"{start} leaves no room for {val_sessions} validation sessions and a train "
                                   "split before it, or no test session after it "
                                   f"(sessions {sessions[0]}..{sessions[-1]})")
    starts = list(range(first, last, retrain_every))
    if len(starts) > 1 and last - starts[-1] < retrain_every // 2:
        starts.pop()
    folds = []
    for i, s in enumerate(starts):
        e = starts[i + 1] if i + 1 < len(starts) else last
        v = s - val_sessions
        t = None if train_sessions is None else sessions[max(0, v - train_sessions)]
        folds.append(Fold(i, t, sessions[v], sessions[s], sessions[e] if e < n else None))
    return folds


def fold_data(cfg: DictConfig, fold: Fold, purge: int):
    """The MarketData of one fold, set up; a split left empty names the fold."""
    dm = instantiate(cfg.data, purge=purge, **fold.bounds())
    try:
        dm.setup()
    except ConfigError as e:
        raise ConfigError("evaluate", f"fold {fold.index} {fold.bounds()}: {e.message}") from None
    return dm


def fit_predict(cfg: DictConfig, dm, name: str, fold: Fold, parent_id: str) -> tuple[pl.DataFrame, dict]:
    """Train `cfg.model` on the fold's train split in a nested MLflow run through the one fit path
    (forecast/training/fit.py: best validation checkpoint, the test split chooses nothing), and
    forecast the test split, calibrated on validation as `calibrate` says
    (forecast/evaluation/calibration.py). The nested run is a child of `parent_id`, also in a worker
    process. Returns the forecasts in log-return units (`pred`, and `q<percent>` from a quantile
    head), in the order of the test anchors, and {val_loss, scale, val_ic, val_mse_rel, ...}."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model = ensemble.build(cfg.model, dm.dims)
    with runs.open_run(f"fold {fold.index} {name}", parent=parent_id) as run_id:
        runs.set_tags({"fold": fold.index, "network": name})
        runs.log_params({f"fold.{k}": v for k, v in fold.bounds().items()})
        fitted = fit(cfg, dm, model, instantiate(cfg.logger, run_id=run_id))
        frame, info, _ = calibrated_forecasts(model, dm, str(cfg.get("calibrate") or "none"),
                                              float(cfg.get("quantile_adapt", adaptive.GAMMA)))
        runs.log_metrics({f"calibration/{k}": v for k, v in info.items() if math.isfinite(v)})
    return frame.drop("ticker", "date", "realised"), dict(val_loss=fitted.val_loss, **info)
