"""The figures runs log: test forecasts against realised returns (train), cumulative strategy return,
rolling IC and a scatter of the out-of-sample forecasts (evaluate)."""
from __future__ import annotations

import matplotlib
import numpy as np
import polars as pl
from omegaconf import DictConfig

from forecast.evaluation.backtest import daily_returns
from forecast.evaluation.metrics import ic_series, rolling_ic
from forecast.evaluation.scoring import pred_col

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_predictions(frame: pl.DataFrame):
    tickers = frame["ticker"].unique().sort().to_list()
    fig, axes = plt.subplots(len(tickers), 2, figsize=(12, 3 * len(tickers)), squeeze=False)
    for (ax_t, ax_s), ticker in zip(axes, tickers):
        f = frame.filter(pl.col("ticker") == ticker)
        ax_t.plot(f["date"], f["realised"], lw=0.5, color="0.6", label="realised")
        ax_t.plot(f["date"], f["pred"], lw=0.8, color="C0", label="forecast")
        ax_t.set_title(f"{ticker}: forward log return, test split")
        ax_t.legend(loc="upper right")
        ax_s.scatter(f["pred"], f["realised"], s=2, alpha=0.4)
        ax_s.set_xlabel("forecast")
        ax_s.set_ylabel("realised")
    fig.tight_layout()
    return fig


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


def close_all() -> None:
    plt.close("all")
