"""Champion/challenger retrain after a performance alert.

The challenger is the champion's own training config, fine-tuned from the champion's weights
(`init_from`) on the most recent data only: training on the `train_sessions` sessions before its
validation window (the `val_sessions` before the last `test_sessions`), checkpoint chosen on that
validation window, then scored on the last `test_sessions` sessions, which neither model was fitted
or selected on. The champion is scored on the same as-of sessions from its stored, realised
predictions. `@alias` moves to the challenger only when its mean IC there is positive, beats the
champion's by `min_gain`, and a paired t-test of the per-session ICs (challenger - champion, scipy)
gives a one-sided p-value below `p_value`: 20 sessions of IC are noisy, and a challenger that wins by
chance must not replace a champion that still works, nor two models that both lost the relation. A
`retrain` alert row records each decision; no retrain starts within `cooldown` sessions of the last.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import polars as pl
from omegaconf import OmegaConf


@dataclass
class Decision:
    run_id: str
    challenger_ic: float
    champion_ic: float
    promoted: bool
    version: str | None
    p_value: float


def windows(days: list[dt.date], train: int, val: int, test: int) -> dict[str, str] | None:
    """The challenger's train_start, val_start and test_start among the sessions `days` (None: too few)."""
    if len(days) < train + val + test:
        return None
    return dict(train_start=str(days[-(train + val + test)]), val_start=str(days[-(val + test)]),
                test_start=str(days[-test]), test_end=str(days[-1] + dt.timedelta(days=1)))  # exclusive


def challenger_config(champion_run: str, store: str, bounds: dict[str, str], cfg) -> OmegaConf:
    """The champion's logged config, retargeted: recent windows, init_from the champion, no registering."""
    from forecast.tracking import runs

    conf = runs.stored_config(champion_run)
    for key in ("resume", "experiment", "hparams_search"):
        conf.pop(key, None)
    conf.data.store = store
    for k, v in bounds.items():  # test_end: the last session with a known target, never a later one
        conf.data[k] = v
    conf.init_from, conf.register, conf.freeze = champion_run, False, []
    conf.trainer.max_epochs = int(cfg.max_epochs)
    conf.model.optimizer.lr = float(cfg.lr) if cfg.lr else conf.model.optimizer.lr
    conf.baselines = []
    conf.run_name = f"challenger of {champion_run[:8]} {bounds['test_start']}"
    conf.logger.tracking_uri = cfg.tracking_uri
    return conf


def paired(challenger: pl.DataFrame, champion: pl.DataFrame) -> tuple[float, float, float]:
    """(challenger mean IC, champion mean IC, one-sided p-value of a paired t-test that the challenger's
    per-session IC is higher) over the as-of sessions both have."""
    from scipy.stats import ttest_rel

    both = challenger.select("date", a="ic").join(champion.select("date", b="ic"), on="date").drop_nulls().drop_nans()
    if both.height < 3:
        return float("nan"), float("nan"), 1.0
    p = float(ttest_rel(both["a"].to_numpy(), both["b"].to_numpy(), alternative="greater").pvalue)
    return float(both["a"].mean()), float(both["b"].mean()), p


def run(job, scores: pl.DataFrame, days: list[dt.date], cfg) -> Decision | None:
    """Train the challenger, score both, move the alias when the challenger is better; None when there
    are too few sessions for the windows."""
    from forecast.evaluation.metrics import ic_series
    from forecast.tracking import monitoring, runs
    from forecast.training.train import train

    bounds = windows(days, int(cfg.train_sessions), int(cfg.val_sessions), int(cfg.test_sessions))
    if bounds is None:
        return None
    settings = OmegaConf.merge(OmegaConf.to_container(cfg), {"tracking_uri": job.tracking_uri})
    conf = challenger_config(job.run_id, job.store, bounds, settings)
    train(conf)
    run_id = monitoring.challenger_run(job.tracking_uri, conf.run_name)
    tested = runs.load_table(job.tracking_uri, run_id, "predictions/test_predictions.parquet")
    ours, theirs, p = paired(ic_series(tested, "pred"), scores.filter(pl.col("date") >= dt.date.fromisoformat(
        bounds["test_start"])))
    better = bool(np.isfinite(ours) and ours > 0 and ours > theirs + float(cfg.min_gain) and p < float(cfg.p_value))
    version = monitoring.decide(job.tracking_uri, job.name, job.alias, run_id, ours, theirs, better)
    return Decision(run_id, ours, theirs, better, version, p)
