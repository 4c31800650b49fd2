"""evaluate(cfg): walk-forward evaluation of the configured model against baselines on the same folds.

Each fold (walk_forward.py) trains the model and each network baseline (the model config with
another backbone) afresh through the one fit path, fits the other baselines (baselines.py) on the
same train rows, and forecasts its test block; the blocks join into one out-of-sample series per
ticker. The series is scored and checked for significance (scoring.py) and logged to one MLflow
run: metrics `test/...` for the model and `baseline/<name>/test/...` for each baseline, a nested
run per fold and network with its training curves, plots and the predictions as Parquet. Returns
the model's out-of-sample MSE.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from multiprocessing import get_context

import polars as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from forecast.errors import ConfigError
from forecast.evaluation import plots
from forecast.evaluation.backtest import STRATEGIES
from forecast.evaluation.baselines import baseline_predictions, check_names
from forecast.evaluation.description import evaluate_description
from forecast.evaluation.metrics import flat_metrics, point_metrics
from forecast.evaluation.quantiles import with_trailing_quantiles
from forecast.evaluation.report import walk_forward_report
from forecast.evaluation.scoring import forecasters, pred_col, score_walk_forward
from forecast.evaluation.walk_forward import Fold, fit_predict, fold_data, make_folds
from forecast.resources import conf_dir
from forecast.tracking import review, runs


def evaluate(cfg: DictConfig) -> float:
    ev = cfg.evaluate
    check_settings(ev)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    folds = make_folds_for(cfg)
    networks = network_configs(cfg)
    experiment_id = runs.connect(cfg.logger)
    with runs.open_run(cfg.get("run_name")) as run_id:
        runs.log_config(cfg, {"evaluate.n_folds": len(folds)})
        review.tag_run(review.run_tags(cfg, "evaluate"))
        parts, rows, skipped = [], [], {}
        for frame, row, skip, fold_metrics in run_folds(cfg, folds, networks, run_id):
            parts.append(frame)
            rows.append(row)
            skipped.update(skip)
            runs.log_metrics(fold_metrics, step=row["fold"])
        frame = pl.concat(parts).sort("ticker", "date")
        names = forecasters(frame)
        results = score_walk_forward(frame, names, ev, cfg.data.horizon)
        runs.log_metrics(flat_metrics(results))
        text = walk_forward_report(results, skipped)
        review.describe(evaluate_description(results, skipped, pl.DataFrame(rows), ev, frame["date"].max()))
        log_outputs(frame, pl.DataFrame(rows), names, ev, cfg.data.horizon, text)
    print(text)
    print(runs.footer(cfg.logger.tracking_uri, experiment_id, run_id))
    return results["model"]["mse"]


def log_outputs(frame: pl.DataFrame, folds: pl.DataFrame, names: list[str], ev: DictConfig, horizon: int,
                text: str) -> None:
    runs.log_text(text, "report.txt")
    runs.log_figure(plots.plot_cumulative(frame, names, ev, horizon), "plots/cumulative_return.png")
    val_ic = dict(zip(folds["fold"], folds["val_ic_model"])) if "val_ic_model" in folds.columns else {}
    runs.log_figure(plots.plot_rolling_ic(frame, names, ev.ic_window, val_ic), "plots/rolling_ic.png")
    runs.log_figure(plots.plot_fold_metrics(frame, names, ev.ic_window), "plots/fold_metrics.png")
    runs.log_figure(plots.plot_scatter(frame), "plots/pred_vs_realised.png")
    runs.log_tables({"predictions/oos_predictions.parquet": frame, "folds.csv": folds})
    plots.close_all()


def check_settings(ev: DictConfig) -> None:
    if ev.strategy not in STRATEGIES:
        raise ConfigError("evaluate.strategy", f"must be one of {list(STRATEGIES)}, got {ev.strategy!r}")
    for key, low in [("cost_bps", 0), ("top_k", 1), ("ic_window", 3), ("n_boot", 10)]:
        if not (isinstance(ev[key], (int, float)) and ev[key] >= low):
            raise ConfigError(f"evaluate.{key}", f"must be a number >= {low}, got {ev[key]!r}")
    workers = ev.get("workers")
    if workers is not None and not (isinstance(workers, int) and workers >= 1):
        raise ConfigError("evaluate.workers", f"must be null or an integer >= 1, got {workers!r}")
    check_names(ev.baselines, "evaluate.baselines")


def make_folds_for(cfg: DictConfig) -> list[Fold]:
    """Folds over the sessions of the configured tickers (the data module validates store and tickers)."""
    ev = cfg.evaluate
    dm = instantiate(cfg.data, val_start=None, test_start=None)
    try:
        dm.setup()
    except ConfigError as e:
        raise e.within("data") from None
    sessions = dm.frame["date"].unique().sort().to_list()
    start = date.fromisoformat(str(ev.start)) if ev.start else sessions[int(len(sessions) * (1 - cfg.data.test_frac))]
    end = date.fromisoformat(str(ev.end)) if ev.end else None
    if ev.strategy == "topk" and dm.frame["ticker"].n_unique() < 2:
        raise ConfigError("evaluate.strategy", "topk needs at least 2 tickers; use sign for one ticker")
    try:
        return make_folds(sessions, start, end, ev.retrain_every, ev.val_sessions, ev.train_sessions)
    except ConfigError as e:
        raise e.within("evaluate") from None


def network_configs(cfg: DictConfig) -> dict[str, DictConfig]:
    """{'model': cfg, <backbone>: cfg with that backbone}; a backbone equal to the model's is skipped."""
    nets = {"model": cfg}
    for name in cfg.evaluate.backbones:
        path = conf_dir() / "model" / "backbone" / f"{name}.yaml"
        if not path.exists():
            options = sorted(p.stem for p in path.parent.glob("*.yaml"))
            raise ConfigError("evaluate.backbones", f"no backbone {name!r}; options: {options}")
        backbone = OmegaConf.load(path)
        if backbone._target_ == cfg.model.backbone._target_:
            print(f"note: baseline '{name}' skipped: the model already uses that backbone")
            continue
        net = copy.deepcopy(cfg)
        with open_dict(net):
            net.model.backbone = backbone
        nets[name] = net
    return nets


def run_folds(cfg: DictConfig, folds: list[Fold], networks: dict[str, DictConfig], parent_id: str) -> list:
    """run_fold for every fold, in order; `evaluate.workers` folds at a time in separate processes,
    the cores shared between them (each fold seeds itself, so the results do not depend on it)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(int(cfg.evaluate.get("workers") or cores), len(folds))
    jobs = [(cfg, fold, networks, len(folds), parent_id) for fold in folds]
    if workers <= 1:
        return [run_fold(*job) for job in jobs]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker,
                             initargs=(max(1, cores // workers),)) as pool:
        return list(pool.map(_run_fold_job, jobs))


def _worker(threads: int) -> None:
    from forecast.allocator import retain_freed_memory

    retain_freed_memory()  # as the CLI does in the parent process
    torch.set_num_threads(threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)


def _run_fold_job(job: tuple):
    runs.connect(job[0].logger)
    return run_fold(*job)


def run_fold(cfg: DictConfig, fold: Fold, networks: dict[str, DictConfig], n_folds: int, parent_id: str):
    """One fold's test-block forecasts by every network and baseline, a row for the fold table, the
    baselines skipped with their reason, and the fold's metrics (logged at step = fold index)."""
    t0 = time.perf_counter()
    purge = int(cfg.data.purge) + int(cfg.evaluate.embargo)
    dm = fold_data(cfg, fold, purge)
    frame = dm.frame[dm.anchors["test"].numpy()].select("ticker", "date", fold=pl.lit(fold.index),
                                                        realised=pl.col("target"))
    row = dict(fold=fold.index, **fold.bounds(), **{f"n_{s}": len(a) for s, a in dm.anchors.items()})
    for name, net in networks.items():
        pred, info = fit_predict(net, dm, name, fold, parent_id)
        row.update({f"{k}_{name}": v for k, v in info.items()})
        if name == "model":
            frame = frame.with_columns(pred)  # pred, pred_uncalibrated, and q<percent> from a quantile head
        else:
            frame = frame.with_columns(pred["pred"].alias(f"pred_{name}"))
    frame = with_trailing_quantiles(frame, dm, cfg.data.horizon)
    preds, skipped = baseline_predictions(dm.frame, list(cfg.evaluate.baselines))
    frame = frame.with_columns(*[s.alias(f"pred_{n}") for n, s in preds.items()])
    fold_metrics = {}
    for name in forecasters(frame):
        m = point_metrics(frame, pred_col(name), cfg.evaluate.ic_window)
        prefix = "fold/test" if name == "model" else f"fold/baseline/{name}/test"
        fold_metrics.update({f"{prefix}/{k}": v for k, v in m.items() if math.isfinite(v)})
    losses = ", ".join(f"{n} {row[f'val_loss_{n}']:.4f}" for n in networks)
    print(f"fold {fold.index + 1}/{n_folds}: test {frame['date'].min()}..{frame['date'].max()} "
          f"({row['n_test']} forecasts, {row['n_train']} train, {row['n_val']} val); best val/loss: {losses}; "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    return frame, row, skipped, fold_metrics


