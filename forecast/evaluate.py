"""evaluate(cfg): walk-forward evaluation of the configured model against baselines on the same folds.

Each fold (forecast/walk_forward.py) trains the model and each network baseline (the model config
with another backbone) afresh, fits the other baselines (forecast/baselines.py) on the same train
rows, and forecasts its test block; the blocks join into one out-of-sample series per ticker. The
series is scored (forecast/metrics.py, forecast/backtest.py), checked for significance
(forecast/stats.py) and logged to one MLflow run: metrics `test/...` for the model and
`baseline/<name>/test/...` for each baseline, a nested run per fold and network with its training
curves, plots and the predictions as Parquet. Returns the model's out-of-sample MSE.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from multiprocessing import get_context
from pathlib import Path

import matplotlib
import mlflow
import numpy as np
import polars as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from forecast.backtest import STRATEGIES, daily_returns, summary
from forecast.baselines import baseline_predictions, check_names
from forecast.errors import ConfigError
from forecast.metrics import flat_metrics, ic_series, point_metrics, rolling_ic
from forecast.stats import confidence_interval, diebold_mariano, mean_stat, sharpe_stat
from forecast.walk_forward import Fold, fit_predict, fold_data, make_folds

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CONF = Path(__file__).resolve().parent.parent / "conf"
COLUMNS = ["mse", "mae", "dir_acc", "ic", "rank_ic", "icir", "sharpe", "ann_return", "max_drawdown", "turnover",
           "info_ratio"]
COMPARED = ("mse", "ic", "sharpe")  # the model is better than a baseline only if it wins on all three


def evaluate(cfg: DictConfig) -> float:
    ev = cfg.evaluate
    check_settings(ev)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    folds = make_folds_for(cfg)
    networks = network_configs(cfg)
    mlflow.set_tracking_uri(cfg.logger.tracking_uri)
    experiment = mlflow.set_experiment(cfg.logger.experiment_name)
    with mlflow.start_run(run_name=cfg.get("run_name")) as run:
        log_config(cfg, folds)
        parts, rows, skipped = [], [], {}
        for frame, row, skip, fold_metrics in run_folds(cfg, folds, networks, run.info.run_id):
            parts.append(frame)
            rows.append(row)
            skipped.update(skip)
            mlflow.log_metrics(fold_metrics, step=row["fold"])
        frame = pl.concat(parts).sort("ticker", "date")
        names = forecasters(frame)
        results = score(frame, names, ev, cfg.data.horizon)
        mlflow.log_metrics({k: v for k, v in flat_metrics(results).items() if math.isfinite(v)})
        text = report(results, skipped)
        log_artifacts(frame, pl.DataFrame(rows), names, ev, cfg.data.horizon, text)
    uri = cfg.logger.tracking_uri
    print(text)
    print(f"view: mlflow ui --backend-store-uri {uri}  ->  "
          f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}")
    print(f"run_id={run.info.run_id} tracking_uri={uri}")
    return results["model"]["mse"]


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
        path = CONF / "model" / "backbone" / f"{name}.yaml"
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
    cfg = job[0]
    mlflow.set_tracking_uri(cfg.logger.tracking_uri)
    mlflow.set_experiment(cfg.logger.experiment_name)
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
        pred, row[f"val_loss_{name}"] = fit_predict(net, dm, name, fold, parent_id)
        frame = frame.with_columns(pred.alias("pred" if name == "model" else f"pred_{name}"))
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


def pred_col(name: str) -> str:
    return "pred" if name == "model" else f"pred_{name}"


def forecasters(frame: pl.DataFrame) -> list[str]:
    """'model', then the baselines with a `pred_<name>` column."""
    return ["model", *[c.removeprefix("pred_") for c in frame.columns if c.startswith("pred_")]]


def daily_losses(frame: pl.DataFrame, col: str) -> np.ndarray:
    """Mean squared error per session (across tickers), in date order: the series the DM test compares."""
    f = frame.group_by("date").agg(((pl.col(col) - pl.col("realised")) ** 2).mean().alias("loss"))
    return f.sort("date")["loss"].to_numpy()


def score(frame: pl.DataFrame, names: list[str], ev: DictConfig, horizon: int) -> dict[str, dict[str, float]]:
    """{name: metrics} with confidence intervals and Diebold-Mariano tests; 'model' first."""
    out = {}
    rw = daily_losses(frame.with_columns(pl.lit(0.0).alias("pred_rw")), "pred_rw")
    model_loss = daily_losses(frame, "pred")
    for name in names:
        col = pred_col(name)
        daily = daily_returns(frame, col, ev.strategy, ev.top_k, ev.cost_bps, horizon)
        m = dict(point_metrics(frame, col, ev.ic_window), **summary(daily))
        boot = dict(level=ev.ci, n_boot=ev.n_boot, seed=0)
        m["ic_low"], m["ic_high"] = confidence_interval(ic_series(frame, col, ev.ic_window)["ic"], mean_stat, **boot)
        m["sharpe_low"], m["sharpe_high"] = confidence_interval(daily["net"].to_numpy(), sharpe_stat, **boot)
        loss = daily_losses(frame, col)
        m["dm_rw"], m["dm_rw_p"] = diebold_mariano(loss, rw, horizon)
        if name != "model":
            m["dm_model_p"] = diebold_mariano(model_loss, loss, horizon)[1]
        out[name] = m
    return out


def verdict(results: dict[str, dict[str, float]]) -> list[str]:
    """Plain sentences: where the model is not better than a baseline, and what is not significant."""
    m, lines, beaten = results["model"], [], []
    score_of = {"mse": lambda r: -r["mse"], "ic": lambda r: _nz(r["ic"]), "sharpe": lambda r: _nz(r["sharpe"])}
    for name, b in results.items():
        if name == "model":
            continue
        lost = [k for k in COMPARED if not score_of[k](m) > score_of[k](b)]
        if lost:
            lines.append(f"the model is NOT better than '{name}': not ahead on {', '.join(lost)}")
        else:
            beaten.append(name)
    if beaten and len(beaten) == len(results) - 1:
        lines.append(f"the model beats every baseline on {', '.join(COMPARED)}")
    p = m["dm_rw_p"]
    lines.append(f"Diebold-Mariano vs the random walk: p = {p:.3g}: " + (
        "the model's MSE is significantly lower (5% level)" if p < 0.05
        else "no evidence that the model's MSE is lower"))
    for key, what in [("ic", "ranks returns better than chance"), ("sharpe", "trades profitably after costs")]:
        low, high = m[f"{key}_low"], m[f"{key}_high"]
        if not low > 0:
            lines.append(f"the model's {key} interval [{low:.3g}, {high:.3g}] does not lie above 0: "
                         f"no evidence that it {what}")
    return lines


def _nz(x: float) -> float:
    """NaN (no IC of a constant forecast, no Sharpe of an empty book) counts as zero skill."""
    return 0.0 if math.isnan(x) else x


def report(results: dict[str, dict[str, float]], skipped: dict[str, str], level: float = 0.95) -> str:
    head = {"ann_return": "ann_ret", "max_drawdown": "max_dd", "info_ratio": "info_r"}
    lines = ["walk-forward " + "".join(f"{head.get(k, k):>10}" for k in COLUMNS)]
    lines += [f"{n:<13}" + "".join(f"{r[k]:>10.4g}" for k in COLUMNS) for n, r in results.items()]
    pct = f"{level:.0%}"
    lines.append(f"\n{'significance':<13}{'ic ' + pct + ' CI':>22}{'sharpe ' + pct + ' CI':>22}"
                 f"{'p(<rw mse)':>12}{'p(model<)':>12}")
    for n, r in results.items():
        lines.append(f"{n:<13}{_interval(r['ic_low'], r['ic_high']):>22}"
                     f"{_interval(r['sharpe_low'], r['sharpe_high']):>22}{r['dm_rw_p']:>12.3g}"
                     f"{r.get('dm_model_p', math.nan):>12.3g}")
    lines.append("p(<rw mse): Diebold-Mariano p-value that this forecast's MSE is below the random walk's; "
                 "p(model<): that the model's MSE is below this baseline's")
    lines += [f"note: baseline '{n}' skipped: {why}" for n, why in skipped.items()]
    return "\n".join(lines + [f"verdict: {line}" for line in verdict(results)])


def _interval(low: float, high: float) -> str:
    return f"[{low:.3g}, {high:.3g}]"


def log_config(cfg: DictConfig, folds: list[Fold]) -> None:
    from forecast.tracking import flatten

    resolved = OmegaConf.to_container(cfg, resolve=True)
    mlflow.log_text(OmegaConf.to_yaml(resolved), "config.yaml")
    mlflow.log_params(dict(flatten(resolved), **{"evaluate.n_folds": len(folds)}))


def log_artifacts(frame: pl.DataFrame, folds: pl.DataFrame, names: list[str], ev: DictConfig, horizon: int,
                  text: str) -> None:
    mlflow.log_text(text, "report.txt")
    mlflow.log_figure(plot_cumulative(frame, names, ev, horizon), "plots/cumulative_return.png")
    mlflow.log_figure(plot_rolling_ic(frame, names, ev.ic_window), "plots/rolling_ic.png")
    mlflow.log_figure(plot_scatter(frame), "plots/pred_vs_realised.png")
    with tempfile.TemporaryDirectory() as tmp:
        frame.write_parquet(Path(tmp) / "oos_predictions.parquet")
        folds.write_csv(Path(tmp) / "folds.csv")
        mlflow.log_artifact(str(Path(tmp) / "oos_predictions.parquet"), "predictions")
        mlflow.log_artifact(str(Path(tmp) / "folds.csv"))
    plt.close("all")


def plot_cumulative(frame: pl.DataFrame, names: list[str], ev: DictConfig, horizon: int):
    fig, ax = plt.subplots(figsize=(11, 5))
    for name in names:
        daily = daily_returns(frame, pred_col(name), ev.strategy, ev.top_k, ev.cost_bps, horizon)
        ax.plot(daily["date"], np.cumprod(1 + daily["net"].to_numpy()) - 1, lw=1.6 if name == "model" else 0.8,
                label=name)
    ax.plot(daily["date"], np.cumprod(1 + daily["benchmark"].to_numpy()) - 1, color="k", lw=1, ls="--",
            label="buy and hold")
    for start in frame.group_by("fold").agg(pl.col("date").min())["date"]:
        ax.axvline(start, color="0.85", lw=0.5)
    ax.set_title(f"cumulative return, {ev.strategy} strategy, {ev.cost_bps} bps cost (grey: retrain dates)")
    ax.legend(loc="upper left")
    return fig


def plot_rolling_ic(frame: pl.DataFrame, names: list[str], window: int):
    fig, ax = plt.subplots(figsize=(11, 4))
    for name in names:
        if ic_series(frame, pred_col(name), window).height == 0:  # constant within every group: no IC
            continue
        ric = rolling_ic(frame, pred_col(name), window)
        ax.plot(ric["date"], ric["ic"], lw=1.6 if name == "model" else 0.8, label=name)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_title(f"rolling IC ({window} sessions)")
    ax.legend(loc="upper left")
    return fig


def plot_scatter(frame: pl.DataFrame):
    fig, ax = plt.subplots(figsize=(5, 5))
    for ticker, f in frame.group_by("ticker"):
        ax.scatter(f["pred"], f["realised"], s=3, alpha=0.4, label=ticker[0])
    ax.set_xlabel("forecast (model)")
    ax.set_ylabel("realised")
    ax.set_title("out-of-sample forecast vs realised")
    ax.tick_params(axis="x", labelrotation=45)
    ax.legend(loc="upper left", markerscale=4)
    fig.tight_layout()
    return fig
