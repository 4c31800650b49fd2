"""Score the out-of-sample frames of the real-data benchmark: per series and averaged over series.

Per series and forecaster (the model, the network baselines, zero, hist_mean, ridge, lgbm): IC and
rank IC (per 63-session block, as `evaluate`), MSE relative to the zero forecast, dir_acc, Sharpe
of the sign strategy at `cost_bps`, each with a circular-block-bootstrap 95% interval (IC: over the
blocks; Sharpe, MSE ratio: over the sessions). The mean over series gets an interval from the same
bootstrap draws averaged across series (the series resampled independently). With a quantile head,
the model's 10-90% coverage and pinball loss beside the trailing historical quantiles'.
"""
from __future__ import annotations

import math

import numpy as np
import polars as pl

from forecast.evaluation import quantiles
from forecast.evaluation.backtest import daily_returns
from forecast.evaluation.metrics import ic_series, point_metrics
from forecast.evaluation.scoring import forecasters, pred_col
from forecast.evaluation.stats import block_bootstrap, mean_stat, sharpe_stat

METRICS = ["ic", "rank_ic", "mse_rel", "dir_acc", "sharpe"]
N_BOOT, LEVEL = 1000, 0.95


def _draws(x: np.ndarray, stat, seed: int = 0) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 3:
        return np.full(N_BOOT, np.nan)
    return block_bootstrap(x, stat, N_BOOT, seed=seed)


def _ratio_draws(loss: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """Bootstrap draws of sum(loss) / sum(zero loss), the same blocks for both."""
    pair = np.stack([loss, zero], axis=1)  # (n, 2)
    n = len(pair)
    rng = np.random.default_rng(0)
    block = max(1, round(n ** (1 / 3)))
    starts = rng.integers(0, n, size=(N_BOOT, -(-n // block)))
    idx = (starts[:, :, None] + np.arange(block)).reshape(N_BOOT, -1)[:, :n] % n  # (N_BOOT, n)
    return pair[idx, 0].sum(1) / pair[idx, 1].sum(1)


def score_series(frame: pl.DataFrame, cost_bps: float = 5.0, horizon: int = 1) -> dict[str, dict]:
    """{forecaster: {metric: value, metric_draws: (N_BOOT,) bootstrap draws}} for one series."""
    frame = frame.sort("date")
    zero_loss = (frame["realised"] ** 2).to_numpy()
    out = {}
    for name in forecasters(frame):
        col = pred_col(name)
        m = point_metrics(frame, col)
        ics = ic_series(frame, col)
        net = daily_returns(frame, col, "sign", 1, cost_bps, horizon)["net"].to_numpy()
        loss = ((frame[col] - frame["realised"]) ** 2).to_numpy()
        r = dict(ic=m["ic"], rank_ic=m["rank_ic"], dir_acc=m["dir_acc"], mse_rel=loss.sum() / zero_loss.sum(),
                 sharpe=float(sharpe_stat(net[None, :])[0]) if len(net) > 2 else math.nan)
        r["ic_draws"] = _draws(ics["ic"].to_numpy(), mean_stat)
        r["rank_ic_draws"] = _draws(ics["rank_ic"].to_numpy(), mean_stat)
        r["sharpe_draws"] = _draws(net, sharpe_stat)
        r["mse_rel_draws"] = _ratio_draws(loss, zero_loss)
        r["dir_acc_draws"] = np.full(N_BOOT, np.nan)
        out[name] = r
    taus = quantiles.quantile_levels(frame)
    if taus:
        rows = frame.drop_nulls([quantiles.column(t, p) for t in taus for p in ("q", "hq")])
        out["model"].update({f"q_{k}": v for k, v in quantiles.score(rows, taus, "q").items()})
        out["model"].update({f"hq_{k}": v for k, v in quantiles.score(rows, taus, "hq").items()})
    return out


def interval(draws: np.ndarray) -> tuple[float, float]:
    if np.all(np.isnan(draws)):
        return math.nan, math.nan
    low, high = np.nanquantile(draws, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(low), float(high)


def mean_over_series(scores: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """{forecaster: {metric: mean over series (NaN-skipping), metric_draws: averaged draws}}; also
    `mse_not_worse`: the share of series whose MSE is <= the zero forecast's."""
    names = list(next(iter(scores.values())))
    out = {}
    for name in names:
        rows = [s[name] for s in scores.values() if name in s]
        r = {}
        for k in METRICS:
            values = np.array([x[k] for x in rows], dtype=np.float64)
            r[k] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
            with np.errstate(all="ignore"):
                r[f"{k}_draws"] = np.nanmean(np.stack([x[f"{k}_draws"] for x in rows]), axis=0)
        r["mse_not_worse"] = float(np.mean([x["mse_rel"] <= 1.0 + 1e-12 for x in rows]))
        out[name] = r
    return out


def _cell(r: dict, k: str) -> str:
    v = r.get(k, math.nan)
    if k == "mse_not_worse":
        return f"{v:.0%}"
    low, high = interval(r.get(f"{k}_draws", np.full(1, np.nan)))
    digits = 4 if k == "mse_rel" else 3
    if math.isnan(v):
        return "—"
    return f"{v:.{digits}f}" + ("" if math.isnan(low) else f" [{low:.{digits}f}, {high:.{digits}f}]")


def markdown(scores: dict[str, dict[str, dict]], mean: dict[str, dict]) -> str:
    """A table per metric (rows: series, then the mean; columns: forecasters) and a quantile table."""
    names = list(mean)
    parts = []
    for k in METRICS:
        lines = [f"### {k}", "", "| series | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for series, s in scores.items():
            lines.append(f"| {series} | " + " | ".join(_cell(s[n], k) if n in s else "—" for n in names) + " |")
        lines.append("| **mean** | " + " | ".join(_cell(mean[n], k) for n in names) + " |")
        if k == "mse_rel":
            lines.append("| share of series with MSE <= zero's | "
                         + " | ".join(_cell(mean[n], "mse_not_worse") for n in names) + " |")
        parts.append("\n".join(lines))
    q = [(series, s["model"]) for series, s in scores.items() if "q_coverage" in s["model"]]
    if q:
        lines = ["### quantiles (model vs trailing 252-session historical quantiles)", "",
                 "| series | coverage 10-90 | pinball | trailing coverage | trailing pinball |",
                 "|---|---|---|---|---|"]
        lines += [f"| {series} | {m['q_coverage']:.3f} | {m['q_pinball']:.4g} | {m['hq_coverage']:.3f} | "
                  f"{m['hq_pinball']:.4g} |" for series, m in q]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def plain(scores: dict[str, dict[str, dict]], mean: dict[str, dict]) -> dict:
    """The scores without bootstrap draws but with their intervals (JSON-ready)."""
    def strip(r: dict) -> dict:
        out = {k: v for k, v in r.items() if not k.endswith("_draws")}
        out.update({f"{k}_ci": interval(r[f"{k}_draws"]) for k in METRICS if f"{k}_draws" in r})
        return out
    return dict(series={s: {n: strip(r) for n, r in v.items()} for s, v in scores.items()},
                mean={n: strip(r) for n, r in mean.items()})
