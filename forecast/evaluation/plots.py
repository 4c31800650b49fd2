"""The figures runs log: test forecasts against realised returns and the rolling IC (train); the
strategy's growth on a log scale with its drawdown below, the rolling IC, per-fold metrics and a
scatter of the out-of-sample forecasts (evaluate).

One style for every figure of every command (STYLE, applied when this module is imported; `color`
gives each forecaster the same colour in every figure): the model in a strong blue and thicker, the
baselines thinner, buy and hold black and dashed, retrain dates as faint vertical lines.
"""
from __future__ import annotations

import matplotlib
import numpy as np
import polars as pl
from omegaconf import DictConfig

from forecast.evaluation.backtest import daily_returns
from forecast.evaluation.metrics import ic_series, point_metrics, rolling_ic
from forecast.evaluation.scoring import pred_col

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import cycler  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, PercentFormatter  # noqa: E402

COLORS = {"model": "#1f4e9c", "zero": "#8c8c8c", "hist_mean": "#b8860b", "ridge": "#e07b00", "lgbm": "#2e8b57",
          "transformer": "#c0392b", "lstm": "#8e44ad", "linear_attention": "#16a085", "mamba2": "#d35400",
          "mamba": "#2c3e50"}
OTHERS = ["#7f8c8d", "#e84393", "#00a8ff", "#6d4c41", "#9acd32"]
STYLE = {
    "figure.dpi": 110, "savefig.dpi": 110, "savefig.bbox": "tight", "font.size": 9, "axes.titlesize": 10,
    "axes.titleweight": "bold", "axes.titlelocation": "left", "axes.labelsize": 9, "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "grid.color": "0.9", "grid.linewidth": 0.6,
    "legend.frameon": False, "legend.fontsize": 8, "lines.linewidth": 0.9,
    "axes.prop_cycle": cycler(color=OTHERS),
}
plt.rcParams.update(STYLE)


def color(name: str) -> str:
    return COLORS.get(name) or OTHERS[sum(map(ord, name)) % len(OTHERS)]


def width(name: str) -> float:
    return 1.8 if name == "model" else 0.9


def plot_predictions(frame: pl.DataFrame):
    tickers = frame["ticker"].unique().sort().to_list()
    fig, axes = plt.subplots(len(tickers), 2, figsize=(12, 3 * len(tickers)), squeeze=False)
    for (ax_t, ax_s), ticker in zip(axes, tickers):
        f = frame.filter(pl.col("ticker") == ticker)
        ax_t.plot(f["date"], f["realised"], lw=0.5, color="0.6", label="realised")
        ax_t.plot(f["date"], f["pred"], lw=0.8, color=color("model"), label="forecast")
        ax_t.set_title(f"{ticker}: forward log return, test split")
        ax_t.legend(loc="upper right")
        ax_s.scatter(f["pred"], f["realised"], s=2, alpha=0.4, color=color("model"))
        ax_s.set_xlabel("forecast")
        ax_s.set_ylabel("realised")
    fig.tight_layout()
    return fig


def wealth_and_drawdown(net: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Growth of 1 compounded from daily net returns, and its fall from the running peak (<= 0; the
    starting 1 counts as a peak, as backtest.max_drawdown defines it): both (T,)."""
    wealth = np.cumprod(1 + net)
    return wealth, wealth / np.maximum.accumulate(np.maximum(wealth, 1.0)) - 1


def plot_cumulative(frame: pl.DataFrame, names: list[str], ev: DictConfig, horizon: int):
    """Growth of 1 on a log scale (equal heights are equal percentage moves, so decades stay readable),
    with each forecaster's drawdown below it."""
    fig, (top, low) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True, height_ratios=[3, 1.3])
    for name in [*names[1:], names[0]]:  # the model drawn last, on top
        daily = daily_returns(frame, pred_col(name), ev.strategy, ev.top_k, ev.cost_bps, horizon)
        wealth, dd = wealth_and_drawdown(daily["net"].to_numpy())
        top.plot(daily["date"], wealth, color=color(name), lw=width(name), label=f"{name} ({wealth[-1]:.2f}x)")
        low.plot(daily["date"], dd, color=color(name), lw=width(name))
        if name == "model":
            low.fill_between(daily["date"], dd, 0, color=color(name), alpha=0.15, lw=0)
    wealth, dd = wealth_and_drawdown(daily["benchmark"].to_numpy())
    top.plot(daily["date"], wealth, color="k", lw=1, ls="--", label=f"buy and hold ({wealth[-1]:.2f}x)")
    low.plot(daily["date"], dd, color="k", lw=0.8, ls="--")
    _log_growth_axis(top)
    top.axhline(1, color="0.5", lw=0.6)
    top.set_ylabel("growth of 1 (log scale)")
    low.set_ylabel("drawdown")
    low.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    _retrain_lines(frame, top, low)
    top.set_title(f"{ev.strategy} strategy after {ev.cost_bps} bps cost per unit of turnover "
                  "(grey lines: retrain dates)")
    top.legend(loc="upper left", ncol=2)
    fig.tight_layout()
    return fig


def plot_rolling_ic(frame: pl.DataFrame, names: list[str], window: int, val_ic: dict[int, float] | None = None):
    """Rolling IC of each forecaster, the model's mean out-of-sample IC, and its IC on the validation
    split that chose its checkpoint (per fold: drawn over the test block that fold then forecast), so a
    fall from validation to test is seen at once."""
    fig, ax = plt.subplots(figsize=(11, 4.2))
    for name in [*names[1:], names[0]]:
        ics = ic_series(frame, pred_col(name), window)
        if ics.height == 0:  # constant within every group (the zero forecast): no IC
            continue
        ric = rolling_ic(frame, pred_col(name), window)
        mean = float(ics["ic"].mean())
        ax.plot(ric["date"], ric["ic"], color=color(name), lw=width(name), label=f"{name} (mean {mean:.3f})")
        if name == "model":
            ax.axhline(mean, color=color(name), lw=1.2, ls="--", label=f"model mean out-of-sample IC {mean:.3f}")
    spans = _validation_spans(frame, val_ic or {})
    for i, (start, end, ic) in enumerate(spans):
        label = f"model validation IC (mean {np.mean([v for _, _, v in spans]):.3f})" if i == 0 else None
        ax.hlines(ic, start, end, color=color("model"), lw=2.2, ls=":", label=label)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_title(f"rolling IC ({window} sessions): model against baselines, and what validation promised")
    ax.set_ylabel("IC")
    ax.legend(loc="upper left", ncol=3)
    fig.tight_layout()
    return fig


def plot_fold_metrics(frame: pl.DataFrame, names: list[str], ic_window: int):
    """IC, MSE skill against the random walk and direction accuracy of every forecaster in each fold's
    test block: whether a result holds in most folds or rests on a few."""
    folds = frame.group_by("fold").agg(start=pl.col("date").min()).sort("fold")
    labels = [str(d) for d in folds["start"]]
    x = np.arange(folds.height)
    fig, axes = plt.subplots(3, 1, figsize=(11, 7.5), sharex=True)
    for name in [*names[1:], names[0]]:
        rows = [point_metrics(frame.filter(pl.col("fold") == f), pred_col(name), ic_window) for f in folds["fold"]]
        rw = [float((frame.filter(pl.col("fold") == f)["realised"] ** 2).mean()) for f in folds["fold"]]
        skill = [1 - r["mse"] / m if m > 0 else np.nan for r, m in zip(rows, rw)]
        for ax, values in zip(axes, ([r["ic"] for r in rows], skill, [r["dir_acc"] for r in rows])):
            ax.plot(x, values, marker="o", ms=3.5 if name == "model" else 2.5, color=color(name), lw=width(name),
                    label=name)
    for ax, title, ref in zip(axes, ["IC", "MSE skill vs random walk: 1 - mse / mse(zero)", "direction accuracy"],
                              [0, 0, 0.5]):
        ax.axhline(ref, color="k", lw=0.5)
        ax.set_title(title)
    axes[1].yaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
    axes[-1].set_xticks(x, labels, rotation=45, ha="right")
    axes[-1].set_xlabel("fold (first test session)")
    axes[0].legend(loc="best", ncol=len(names))
    fig.tight_layout()
    return fig


def _log_growth_axis(ax) -> None:
    """A log y axis labelled in multiples of the start (0.8x, 1x, 2x): every digit on a narrow range,
    1-2-5 on a wide one."""
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    subs = np.arange(1, 10) if high / low < 10 else (1, 2, 5)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}x"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _validation_spans(frame: pl.DataFrame, val_ic: dict[int, float]) -> list[tuple]:
    """(first, last test session, validation IC) of each fold with a finite validation IC; a frame
    without folds (train's test split) is fold 0."""
    key = pl.col("fold") if "fold" in frame.columns else pl.lit(0).alias("fold")
    folds = frame.group_by(key).agg(start=pl.col("date").min(), end=pl.col("date").max()).sort("fold")
    return [(s, e, val_ic[f]) for f, s, e in folds.iter_rows() if np.isfinite(val_ic.get(f, np.nan))]


def _retrain_lines(frame: pl.DataFrame, *axes) -> None:
    if "fold" in frame.columns:
        for start in frame.group_by("fold").agg(pl.col("date").min())["date"]:
            for ax in axes:
                ax.axvline(start, color="0.85", lw=0.5, zorder=0)


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
