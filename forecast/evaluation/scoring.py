"""What train and evaluate score, written once: the forecasters of a frame (the model's `pred` and a
`pred_<name>` column per baseline), point metrics for all of them (train's test split), and the
walk-forward score with bootstrap intervals and Diebold-Mariano tests, and its verdict."""
from __future__ import annotations

import math

import numpy as np
import polars as pl
from omegaconf import DictConfig

from forecast.evaluation import quantiles
from forecast.evaluation.backtest import daily_returns, summary
from forecast.evaluation.baselines import baseline_predictions
from forecast.evaluation.metrics import ic_series, point_metrics
from forecast.evaluation.quantiles import column, quantile_levels
from forecast.evaluation.stats import confidence_interval, diebold_mariano, mean_stat, sharpe_stat

COMPARED = ("mse", "ic", "sharpe")  # the model is better than a baseline only if it wins on all three


def pred_col(name: str) -> str:
    return "pred" if name == "model" else f"pred_{name}"


def forecasters(frame: pl.DataFrame) -> list[str]:
    """'model', then the baselines with a `pred_<name>` column."""
    return ["model", *[c.removeprefix("pred_") for c in frame.columns if c.startswith("pred_")]]


def with_baselines(frame: pl.DataFrame, data: pl.DataFrame, names: list[str]) -> pl.DataFrame:
    """The test frame with a `pred_<name>` column per baseline (forecasts of the same anchors) fitted
    on `data` (a MarketData frame); a skipped baseline is named with its reason."""
    preds, skipped = baseline_predictions(data, names)
    for name, reason in skipped.items():
        print(f"note: baseline {name!r} skipped: {reason}")
    return frame.with_columns(**{f"pred_{n}": p for n, p in preds.items()})


def score_points(frame: pl.DataFrame, ic_window: int = 63) -> dict[str, dict[str, float]]:
    """{'model': metrics, '<baseline>': metrics} on the same anchors."""
    return {name: point_metrics(frame, pred_col(name), ic_window) for name in forecasters(frame)}


def daily_losses(frame: pl.DataFrame, col: str) -> np.ndarray:
    """Mean squared error per session (across tickers), in date order: the series the DM test compares."""
    f = frame.group_by("date").agg(((pl.col(col) - pl.col("realised")) ** 2).mean().alias("loss"))
    return f.sort("date")["loss"].to_numpy()


def score_walk_forward(frame: pl.DataFrame, names: list[str], ev: DictConfig,
                       horizon: int) -> dict[str, dict[str, float]]:
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
    out["model"].update(quantile_scores(frame))
    return out


def quantile_scores(frame: pl.DataFrame) -> dict[str, float]:
    """The model's quantiles (`q_coverage`, `q_pinball`, ...) beside the trailing historical ones
    (`hq_...`), on the rows where both exist; empty without a quantile head."""
    taus = quantile_levels(frame)
    if not taus:
        return {}
    rows = frame.drop_nulls([column(t, p) for t in taus for p in ("q", "hq")])
    model, hist = quantiles.score(rows, taus, "q"), quantiles.score(rows, taus, "hq")
    return {**{f"q_{k}": v for k, v in model.items()}, **{f"hq_{k}": v for k, v in hist.items()}}


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
